//! The authority's allowlist: which node identities its operator approved,
//! and for which role. Kept in a small TOML file (`admitted.toml` in the data
//! directory by default) that `umbra directory admit` and `revoke` edit and
//! the running authority re-reads when it changes, so approving a node needs
//! no restart.

use crate::Error;
use protocol::NodeId;
use protocol::topology::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    identity: String,
    role: Role,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
}

/// The allowlist as last read from its file.
#[derive(Debug)]
pub struct Admission {
    path: PathBuf,
    /// Role and the operator's note, by identity.
    nodes: BTreeMap<NodeId, (Role, String)>,
    stamp: Option<(SystemTime, u64)>,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("admission file {}: {reason}", path.display()))
}

fn parse_id(path: &Path, hex_id: &str) -> Result<NodeId, Error> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id.trim(), &mut id).map_err(|e| {
        err(
            path,
            format!("identity {hex_id:?} is not 64 hex digits ({e})"),
        )
    })?;
    Ok(id)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<BTreeMap<NodeId, (Role, String)>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(err(path, e)),
    };
    parse(path, &text)
}

/// Parses the text of the admission file at `path` (named in errors):
/// admitted identities with their role and note.
#[doc(hidden)]
pub fn parse(path: &Path, text: &str) -> Result<BTreeMap<NodeId, (Role, String)>, Error> {
    let f: File = toml::from_str(text).map_err(|e| err(path, e.to_string().trim_end()))?;
    let mut nodes = BTreeMap::new();
    for e in f.node {
        nodes.insert(parse_id(path, &e.identity)?, (e.role, e.note));
    }
    Ok(nodes)
}

fn write(path: &Path, nodes: &BTreeMap<NodeId, (Role, String)>) -> Result<(), Error> {
    let f = File {
        node: nodes
            .iter()
            .map(|(id, (role, note))| Entry {
                identity: hex::encode(id),
                role: *role,
                note: note.clone(),
            })
            .collect(),
    };
    let body = toml::to_string(&f).map_err(|e| err(path, e))?;
    let text = format!(
        "# Nodes this directory authority admits, by identity key and role.\n\
         # Edited by `umbra directory admit` and `umbra directory revoke`; the\n\
         # running authority re-reads it when it changes.\n\n{body}"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))
}

impl Admission {
    /// Reads the allowlist at `path` (a missing file admits nobody).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            path: path.to_owned(),
            stamp: stamp(path),
            nodes: read(path)?,
        })
    }

    /// Re-reads the file if it changed since the last read. A file that no
    /// longer parses keeps the last good list (and says so).
    pub fn refresh(&mut self) {
        let now = stamp(&self.path);
        if now == self.stamp {
            return;
        }
        match read(&self.path) {
            Ok(nodes) => {
                if nodes != self.nodes {
                    tracing::info!(nodes = nodes.len(), "admission list reloaded");
                }
                self.nodes = nodes;
                self.stamp = now;
            }
            Err(e) => tracing::warn!(error = %e, "admission list unchanged"),
        }
    }

    /// The role `id` is admitted for, if any.
    pub fn role(&self, id: &NodeId) -> Option<Role> {
        self.nodes.get(id).map(|(r, _)| *r)
    }

    /// Admitted nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if nobody is admitted.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Admits `id` for `role` (replacing an earlier role, keeping its note)
    /// and saves the file.
    pub fn admit(&mut self, id: NodeId, role: Role) -> Result<(), Error> {
        self.refresh();
        let mut nodes = self.nodes.clone();
        let note = nodes.remove(&id).map(|(_, n)| n).unwrap_or_default();
        nodes.insert(id, (role, note));
        write(&self.path, &nodes)?;
        self.nodes = nodes;
        self.stamp = stamp(&self.path);
        Ok(())
    }

    /// Revokes `id`; false if it was not admitted.
    pub fn revoke(&mut self, id: &NodeId) -> Result<bool, Error> {
        self.refresh();
        let mut nodes = self.nodes.clone();
        if nodes.remove(id).is_none() {
            return Ok(false);
        }
        write(&self.path, &nodes)?;
        self.nodes = nodes;
        self.stamp = stamp(&self.path);
        Ok(true)
    }

    /// Every admitted node: identity, role and the operator's note.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, Role, &str)> {
        self.nodes.iter().map(|(id, (r, n))| (id, *r, n.as_str()))
    }
}

/// Parses a 64-hex-digit node identity as given on the command line.
pub fn parse_identity(hex_id: &str) -> Result<NodeId, Error> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id.trim(), &mut id).map_err(|e| {
        Error::Config(format!(
            "node identity {hex_id:?} is not 64 hex digits ({e})"
        ))
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_revoke_and_reload_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admitted.toml");
        let mut a = Admission::load(&path).unwrap();
        assert!(a.is_empty());
        a.admit([1; 32], Role::Mix).unwrap();
        a.admit([2; 32], Role::Gateway).unwrap();
        // Another process (the CLI) edits the file: the holder sees it.
        let mut other = Admission::load(&path).unwrap();
        assert_eq!(other.role(&[2; 32]), Some(Role::Gateway));
        assert!(other.revoke(&[1; 32]).unwrap());
        assert!(!other.revoke(&[9; 32]).unwrap());
        // Make sure the stamp differs even on coarse-mtime filesystems.
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        a.refresh();
        assert_eq!(a.role(&[1; 32]), None);
        assert_eq!(a.role(&[2; 32]), Some(Role::Gateway));
        // An operator's note survives the tools' rewrites.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("role = \"gateway\"", "role = \"gateway\"\nnote = \"eu-1\""),
        )
        .unwrap();
        let mut b = Admission::load(&path).unwrap();
        b.admit([3; 32], Role::Mix).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("eu-1"));
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        // A broken file keeps the last good list.
        std::fs::write(&path, "node = 3").unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(10))
            .unwrap();
        a.refresh();
        assert_eq!(a.role(&[2; 32]), Some(Role::Gateway));
        assert!(Admission::load(&path).is_err());
    }
}
