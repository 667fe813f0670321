//! Where a construct is in the SQL the user wrote, so a refusal names its line and column. The
//! logical plan has no positions; the parsed query does (absolute in its script).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, Query, SetExpr, Spanned, TableFactor, Visit, Visitor};

use crate::error::Error;

/// A construct of a query, to locate.
#[derive(Debug, Clone)]
pub enum Site {
    /// The n-th JOIN (0-based, in the order written).
    Join(usize),
    /// A call of this function (case-insensitive), e.g. `row_number`, `median`.
    Function(String),
    /// A window function call (`… OVER (…)`).
    Over,
    GroupBy,
    Distinct,
    OrderBy,
    Limit,
    SetOperation,
    Subquery,
    /// Where a relation of this name is read (`FROM name`).
    Relation(String),
    /// The query itself.
    Query,
}

pub struct Locator {
    query: Query,
}

fn at(span: ast::helpers::attached_token::AttachedToken) -> Option<(u64, u64)> {
    let s = span.0.span.start;
    (s.line > 0).then_some((s.line, s.column))
}

fn pos(s: datafusion::sql::sqlparser::tokenizer::Span) -> Option<(u64, u64)> {
    (s.start.line > 0).then_some((s.start.line, s.start.column))
}

impl Locator {
    pub fn new(query: &Query) -> Locator {
        Locator { query: query.clone() }
    }

    /// Line and column of `site`, if the query shows it.
    pub fn find(&self, site: &Site) -> Option<(u64, u64)> {
        match site {
            Site::Query => pos(self.query.span()),
            Site::OrderBy | Site::Limit => {
                let mut v = Clauses {
                    limit: matches!(site, Site::Limit),
                    found: None,
                };
                let _ = self.query.visit(&mut v);
                v.found
            }
            Site::Function(name) => {
                let mut found = None;
                let _ = ast::visit_expressions(&self.query, |e| {
                    if let Expr::Function(f) = e
                        && f.name.to_string().eq_ignore_ascii_case(name)
                    {
                        found = pos(f.span());
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                found
            }
            Site::Over => {
                let mut found = None;
                let _ = ast::visit_expressions(&self.query, |e| {
                    if let Expr::Function(f) = e
                        && f.over.is_some()
                    {
                        found = pos(f.span());
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                found
            }
            Site::Subquery => {
                let mut found = None;
                let _ = ast::visit_expressions(&self.query, |e| {
                    if matches!(e, Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }) {
                        found = pos(e.span());
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                found
            }
            Site::Join(n) => {
                let mut v = Joins {
                    n: *n,
                    seen: 0,
                    found: None,
                };
                let _ = self.query.visit(&mut v);
                v.found
            }
            Site::Relation(name) => {
                let mut found = None;
                let _ = ast::visit_relations(&self.query, |r| {
                    if r.0
                        .last()
                        .and_then(|p| p.as_ident())
                        .is_some_and(|i| crate::sql::parser::normalize(i) == *name)
                    {
                        found = pos(r.span());
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                found
            }
            Site::GroupBy | Site::Distinct | Site::SetOperation => {
                let mut v = Selects {
                    site: site.clone(),
                    found: None,
                };
                let _ = self.query.visit(&mut v);
                v.found
            }
        }
    }

    /// A refusal at `site` (or without a position when the query does not show it, e.g. inside a view).
    pub fn refuse(&self, site: Site, message: impl Into<String>) -> Error {
        let message = message.into();
        match self.find(&site) {
            Some((line, col)) => Error::Sql { line, col, message },
            None => Error::Plan(message),
        }
    }
}

/// The first ORDER BY (or LIMIT) in the query or its subqueries.
struct Clauses {
    limit: bool,
    found: Option<(u64, u64)>,
}

impl Visitor for Clauses {
    type Break = ();
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.found = if self.limit {
            q.limit_clause.as_ref().and_then(|l| pos(l.span()))
        } else {
            q.order_by.as_ref().and_then(|o| pos(o.span()))
        };
        if self.found.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

struct Joins {
    n: usize,
    seen: usize,
    found: Option<(u64, u64)>,
}

impl Visitor for Joins {
    type Break = ();
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let SetExpr::Select(s) = q.body.as_ref() {
            for twj in &s.from {
                for j in &twj.joins {
                    if self.seen == self.n {
                        self.found = pos(j.relation.span());
                        return ControlFlow::Break(());
                    }
                    self.seen += 1;
                }
            }
            // `FROM a, b` is a join too.
            if s.from.len() > 1 && self.found.is_none() && self.seen == self.n {
                self.found = pos(s.from[1].relation.span());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

struct Selects {
    site: Site,
    found: Option<(u64, u64)>,
}

impl Visitor for Selects {
    type Break = ();
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        match (&self.site, q.body.as_ref()) {
            (Site::SetOperation, SetExpr::SetOperation { right, .. }) => {
                self.found = pos(right.span());
            }
            (Site::GroupBy, SetExpr::Select(s)) => {
                if let ast::GroupByExpr::Expressions(e, _) = &s.group_by
                    && let Some(first) = e.first()
                {
                    self.found = pos(first.span());
                }
            }
            (Site::Distinct, SetExpr::Select(s)) if s.distinct.is_some() => {
                self.found = at(s.select_token.clone());
            }
            _ => {}
        }
        if self.found.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pre_visit_table_factor(&mut self, _t: &TableFactor) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::{Statement, parse_one};

    #[test]
    fn finds_constructs() {
        let Statement::Query(q) =
            parse_one("SELECT a, count(*)\nFROM t JOIN u ON t.a = u.a\nGROUP BY a\nORDER BY a LIMIT 3").expect("parse")
        else {
            panic!()
        };
        let l = Locator::new(&q);
        assert_eq!(l.find(&Site::Join(0)), Some((2, 13)));
        assert_eq!(l.find(&Site::Function("COUNT".into())), Some((1, 11)));
        assert_eq!(l.find(&Site::GroupBy), Some((3, 10)));
        assert_eq!(l.find(&Site::Relation("u".into())), Some((2, 13)));
        assert!(l.find(&Site::Over).is_none());
        let e = l.refuse(Site::Join(0), "no");
        assert_eq!(e.to_string(), "2:13: no");
    }
}
