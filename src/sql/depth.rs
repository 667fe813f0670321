//! A bound on how deep a statement's syntax tree can be, checked on its tokens before anything is
//! built from them.
//!
//! sqlparser limits its own recursion (nested parentheses, subqueries, `CASE`, `NOT`), but it reads
//! a chain of infix operators (`1+1+…`, `a OR b OR …`, `x::T::T…`, `… UNION …`) in a loop, building
//! one tree level per operator without recursing. Everything after it recurses once per level:
//! DataFusion's table-reference visitor, planner and optimizer, and dropping the tree. A debug build
//! needs about 30 KB of stack per level there, so a few hundred operators overflow an 8 MiB stack
//! and abort the process. Checking the tree after parsing is too late (walking or dropping it is
//! what overflows), hence this conservative estimate from the tokens: it may count a level that the
//! tree does not have (every operator counts, whatever its precedence), never the other way round.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

/// The deepest statement accepted, in estimated tree levels. Generous for hand-written SQL (a
/// `WHERE` of 100 `AND`ed comparisons counts about 200) and within what the threads that plan have:
/// Freshet runs them with [`PLANNING_STACK_BYTES`], 256 levels use about a quarter of it in a debug
/// build.
pub const MAX_DEPTH: usize = 256;

/// The stack size of every thread Freshet plans queries on (the command's thread, the async
/// runtime's workers, query threads): see the module documentation.
pub const PLANNING_STACK_BYTES: usize = 32 << 20;

/// One open parenthesis, bracket or `CASE`.
#[derive(Default)]
struct Frame {
    /// Operators since the last separator (comma, clause keyword) in this frame.
    chain: usize,
    /// Set operations and joins in this frame (clause keywords do not end these chains).
    sets: usize,
    /// Opened by `CASE` (closed by `END`), not by a parenthesis.
    case: bool,
}

impl Frame {
    fn depth(&self) -> usize {
        1 + self.chain + self.sets
    }
}

/// `Err((where, estimate))` at the first token where a statement's estimated depth passes `limit`.
pub fn check(tokens: &[TokenWithSpan], limit: usize) -> Result<(), (Location, usize)> {
    let mut frames: Vec<Frame> = vec![Frame::default()];
    // The sum of the open frames' depths, kept up to date so each token costs O(1).
    let mut depth = 1;
    for t in tokens {
        let top = frames.len() - 1;
        let before = frames[top].depth();
        match &t.token {
            Token::SemiColon => {
                frames = vec![Frame::default()];
                depth = 1;
                continue;
            }
            Token::LParen | Token::LBracket | Token::LBrace => frames.push(Frame::default()),
            Token::Word(w) if w.keyword == Keyword::CASE => frames.push(Frame {
                case: true,
                ..Frame::default()
            }),
            Token::RParen | Token::RBracket | Token::RBrace => {
                // An unbalanced closer is the parser's to report.
                if frames.len() > 1 && !frames[top].case {
                    depth -= before;
                    frames.pop();
                }
                continue;
            }
            Token::Word(w) if w.keyword == Keyword::END && frames[top].case => {
                depth -= before;
                frames.pop();
                continue;
            }
            Token::Comma => frames[top].chain = 0,
            Token::Word(w) if separates(w.keyword) => frames[top].chain = 0,
            Token::Word(w) if chains_sets(w.keyword) => frames[top].sets += 1,
            Token::Word(w) if is_operator(w.keyword) => frames[top].chain += 1,
            // Names, literals and the dot of a qualified name add no level.
            Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::Whitespace(_)
            | Token::Period
            | Token::EOF => {}
            // Any other symbol may be an infix operator (`+`, `||`, `::`, `->`, …): count it.
            _ => frames[top].chain += 1,
        }
        // A new frame adds its own level; a change in place replaces the top frame's share.
        depth = if frames.len() > top + 1 {
            depth + 1
        } else {
            depth - before + frames[top].depth()
        };
        if depth > limit {
            return Err((t.span.start, depth));
        }
    }
    Ok(())
}

/// Keywords that start a new expression in the same frame.
fn separates(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::SELECT
            | Keyword::FROM
            | Keyword::WHERE
            | Keyword::GROUP
            | Keyword::HAVING
            | Keyword::ORDER
            | Keyword::BY
            | Keyword::LIMIT
            | Keyword::OFFSET
            | Keyword::ON
            | Keyword::USING
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::AS
            | Keyword::WINDOW
            | Keyword::QUALIFY
            | Keyword::VALUES
            | Keyword::SET
            | Keyword::WITH
    )
}

/// Keywords that sqlparser chains in a loop at the query level, one tree level each.
fn chains_sets(k: Keyword) -> bool {
    matches!(k, Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::JOIN)
}

/// Keyword operators that sqlparser chains in its infix loop.
fn is_operator(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::AND
            | Keyword::OR
            | Keyword::XOR
            | Keyword::NOT
            | Keyword::IS
            | Keyword::IN
            | Keyword::LIKE
            | Keyword::ILIKE
            | Keyword::SIMILAR
            | Keyword::RLIKE
            | Keyword::REGEXP
            | Keyword::BETWEEN
            | Keyword::COLLATE
            | Keyword::AT
            | Keyword::DIV
            | Keyword::OVERLAPS
            | Keyword::MEMBER
    )
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    use super::*;

    fn depth_of(sql: &str) -> Result<(), usize> {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .expect("tokens");
        check(&tokens, 10).map_err(|(_, d)| d)
    }

    #[test]
    fn operator_chains_count_and_separators_end_them() {
        assert_eq!(depth_of("SELECT 1+1+1+1+1+1+1+1+1+1+1"), Err(11));
        assert_eq!(
            depth_of("SELECT a OR b OR c OR d OR e OR f OR g OR h OR i OR j OR k"),
            Err(11)
        );
        assert_eq!(
            depth_of("SELECT x::INT::INT::INT::INT::INT::INT::INT::INT::INT::INT"),
            Err(11)
        );
        // Many short expressions are not one deep one.
        assert_eq!(
            depth_of("SELECT 1+1+1, 1+1+1, 1+1+1, 1+1+1 FROM t WHERE a+1+1+1 > 2"),
            Ok(())
        );
        // Statements are counted apiece.
        assert_eq!(depth_of("SELECT 1+1+1+1+1; SELECT 1+1+1+1+1; SELECT 1+1+1+1+1"), Ok(()));
    }

    #[test]
    fn nesting_adds_up_across_parentheses_case_and_set_operations() {
        assert_eq!(depth_of("SELECT 1+1+(1+1+(1+1+(1+1)))"), Err(11));
        assert_eq!(
            depth_of("SELECT 1+1+CASE WHEN x THEN 1+1+1+1 ELSE 1+1+1+1+1+1+1+1 END"),
            Err(11)
        );
        assert_eq!(depth_of(&["SELECT 1"; 11].join(" UNION ")), Err(11));
        assert_eq!(depth_of("SELECT (((((((((((1)))))))))))"), Err(11));
        // Closed frames no longer count.
        assert_eq!(depth_of("SELECT (((1))), (((1))), (((1))), (((1)))"), Ok(()));
        // Unbalanced closers are ignored (the parser reports them).
        assert_eq!(depth_of("SELECT 1)))) + 1 END"), Ok(()));
    }
}
