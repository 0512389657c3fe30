//! Descriptors in an embedded redb database: identity → signed descriptor JSON.

use crate::Error;
use protocol::topology::Signed;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const DESCRIPTORS: TableDefinition<&[u8; 32], &str> = TableDefinition::new("descriptors");

pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let err = |e: &dyn std::fmt::Display| Error::Store {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        net::identity::create_private_file(path).map_err(|e| err(&e))?;
        let db = Database::create(path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(DESCRIPTORS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn put(&self, id: &[u8; 32], signed: &Signed) -> Result<(), Error> {
        let json = serde_json::to_string(signed).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(DESCRIPTORS).map_err(|e| self.err(e))?;
            t.insert(id, json.as_str()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub(crate) fn delete(&self, id: &[u8; 32]) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(DESCRIPTORS).map_err(|e| self.err(e))?;
            t.remove(id).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub(crate) fn all(&self) -> Result<Vec<Signed>, Error> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(DESCRIPTORS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            // A row we cannot parse is skipped, not fatal: the node re-registers.
            if let Ok(s) = serde_json::from_str(v.value()) {
                out.push(s);
            }
        }
        Ok(out)
    }
}
