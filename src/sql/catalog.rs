//! The catalog: every source, table, view, sink and materialized view a session knows, in creation order.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::Query;

use super::parser::{ObjectKind, Options, SourceDef, SourceKind};
use crate::connector::memory::MemoryTable;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct ViewDef {
    pub name: String,
    pub query: Box<Query>,
    pub sql: String,
}

#[derive(Debug, Clone)]
pub struct SinkDef {
    pub name: String,
    pub options: Options,
    pub query: Box<Query>,
    pub sql: String,
}

#[derive(Debug, Clone)]
pub struct MaterializedViewDef {
    pub name: String,
    pub query: Box<Query>,
    pub sql: String,
    pub table: MemoryTable,
}

#[derive(Debug, Clone)]
pub enum Object {
    Source(SourceDef),
    View(ViewDef),
    Sink(SinkDef),
    MaterializedView(MaterializedViewDef),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Source(s) if s.kind == SourceKind::Table => ObjectKind::Table,
            Object::Source(_) => ObjectKind::Source,
            Object::View(_) => ObjectKind::View,
            Object::Sink(_) => ObjectKind::Sink,
            Object::MaterializedView(_) => ObjectKind::MaterializedView,
        }
    }

    pub fn sql(&self) -> &str {
        match self {
            Object::Source(s) => &s.sql,
            Object::View(v) => &v.sql,
            Object::Sink(s) => &s.sql,
            Object::MaterializedView(m) => &m.sql,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    objects: BTreeMap<String, (u64, Object)>,
    seq: u64,
}

/// Names Freshet reserves for its own streams.
pub const SYSTEM_TABLES: &[&str] = &["_errors", "_late"];

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Object> {
        self.objects.get(name).map(|(_, o)| o)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Object> {
        self.objects.get_mut(name).map(|(_, o)| o)
    }

    pub fn add(&mut self, name: &str, object: Object) -> Result<()> {
        if SYSTEM_TABLES.contains(&name) || name.starts_with("__") {
            return Err(Error::plan(format!("'{name}' is a reserved name")));
        }
        if let Some(existing) = self.get(name) {
            return Err(Error::plan(format!("{} '{name}' already exists", existing.kind())));
        }
        self.seq += 1;
        self.objects.insert(name.to_string(), (self.seq, object));
        Ok(())
    }

    pub fn remove(&mut self, kind: ObjectKind, name: &str, if_exists: bool) -> Result<Option<Object>> {
        match self.get(name) {
            None if if_exists => Ok(None),
            None => Err(Error::plan(format!("{kind} '{name}' does not exist"))),
            Some(o) if o.kind() != kind => Err(Error::plan(format!("'{name}' is a {}, not a {kind}", o.kind()))),
            Some(_) => Ok(self.objects.remove(name).map(|(_, o)| o)),
        }
    }

    /// All objects in creation order.
    pub fn ordered(&self) -> impl Iterator<Item = (&str, &Object)> {
        let mut v: Vec<(&u64, &str, &Object)> = self.objects.iter().map(|(n, (s, o))| (s, n.as_str(), o)).collect();
        v.sort_by_key(|(s, _, _)| **s);
        v.into_iter().map(|(_, n, o)| (n, o))
    }

    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = (&str, &Object)> {
        self.ordered().filter(move |(_, o)| o.kind() == kind)
    }

    pub fn source(&self, name: &str) -> Option<&SourceDef> {
        match self.get(name) {
            Some(Object::Source(s)) => Some(s),
            _ => None,
        }
    }
}
