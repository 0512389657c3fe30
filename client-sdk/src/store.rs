//! The client's encrypted, crash-safe store: one redb file in which every
//! record is encrypted under a key derived from the user's passphrase.
//!
//! - **Key derivation**: Argon2id (version 0x13) over the passphrase and a
//!   random 16-byte salt, `m` = 64 MiB, `t` = 3 passes, `p` = 1 lane
//!   ([`KdfParams::default`]), gives a 32-byte master key; HKDF-SHA256 of it
//!   gives the record key (`info = "umbra-store-records-v1"`) and the index
//!   key (`info = "umbra-store-index-v1"`). The salt and the parameters are
//!   the only plaintext in the file.
//! - **Records**: a record's logical key (e.g. `out/<message id>`) names it
//!   only through HMAC-SHA256 under the index key (the table key, 32 bytes);
//!   its value is XChaCha20-Poly1305 under the record key, with a random
//!   24-byte nonce and the table key as associated data, of
//!   `len(logical key):u16 || logical key || value`. So the file shows
//!   neither message ids nor contacts, names, keys or dropbox ids; a record
//!   moved to another table key does not open.
//! - **Passphrase check**: a fixed record (`check`) must open; a wrong
//!   passphrase is refused before anything is written.
//! - **Atomicity**: each [`Store::commit`] is one redb write transaction,
//!   durable when it returns (redb syncs on commit): after a crash the store
//!   holds exactly the commits that returned.

use crate::Error;
use crate::state::Changes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::Rng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Records as a store holds them: (logical key, value).
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records");

/// What the `check` record holds: it opens only under the right key.
const CHECK: &[u8] = b"umbra-client-store-v1";
const NONCE_LEN: usize = 24;

/// Argon2id cost of deriving the store's key from the passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter of a second on a laptop
    /// core, and 64 MiB per guess for whoever tries passphrases.
    fn default() -> Self {
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    fn encode(&self, salt: &[u8; 16]) -> Vec<u8> {
        let mut v = Vec::with_capacity(28);
        v.extend_from_slice(&self.m_kib.to_be_bytes());
        v.extend_from_slice(&self.t.to_be_bytes());
        v.extend_from_slice(&self.p.to_be_bytes());
        v.extend_from_slice(salt);
        v
    }

    fn decode(b: &[u8]) -> Option<(Self, [u8; 16])> {
        if b.len() != 28 {
            return None;
        }
        let u = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let p = Self {
            m_kib: u(0),
            t: u(4),
            p: u(8),
        };
        Some((p, b[12..28].try_into().ok()?))
    }
}

struct Keys {
    record: Zeroizing<[u8; 32]>,
    index: Zeroizing<[u8; 32]>,
}

impl Keys {
    fn derive(passphrase: &[u8], salt: &[u8; 16], p: KdfParams) -> Result<Self, Error> {
        let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32))
            .map_err(|e| Error::Store(format!("key derivation parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut master = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, master.as_mut())
            .map_err(|e| Error::Store(format!("key derivation: {e}")))?;
        let hk = Hkdf::<Sha256>::from_prk(master.as_ref())
            .map_err(|_| Error::Store("key derivation".into()))?;
        let mut record = Zeroizing::new([0u8; 32]);
        let mut index = Zeroizing::new([0u8; 32]);
        hk.expand(b"umbra-store-records-v1", record.as_mut())
            .and_then(|_| hk.expand(b"umbra-store-index-v1", index.as_mut()))
            .map_err(|_| Error::Store("key derivation".into()))?;
        Ok(Self { record, index })
    }

    /// The table key of a logical key: HMAC-SHA256 under the index key
    /// (HKDF-Expand is HMAC of the info and a counter byte).
    fn table_key(&self, logical: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(self.index.as_ref()) {
            let _ = hk.expand(logical, &mut out);
        }
        out
    }

    fn seal(&self, table_key: &[u8; 32], logical: &[u8], value: &[u8]) -> Result<Vec<u8>, Error> {
        let len =
            u16::try_from(logical.len()).map_err(|_| Error::Store("record key too long".into()))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + logical.len() + value.len()));
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(logical);
        plain.extend_from_slice(value);
        let cipher = XChaCha20Poly1305::new(self.record.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: table_key,
                },
            )
            .map_err(|_| Error::Store("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// (logical key, value), or `None` if it does not open.
    fn open(&self, table_key: &[u8; 32], sealed: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let cipher = XChaCha20Poly1305::new(self.record.as_ref().into());
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: table_key,
                    },
                )
                .ok()?,
        );
        let len = usize::from(u16::from_be_bytes(plain.get(..2)?.try_into().ok()?));
        let logical = plain.get(2..2 + len)?.to_vec();
        let value = plain.get(2 + len..)?.to_vec();
        Some((logical, value))
    }
}

/// An open client store.
pub struct Store {
    db: Database,
    keys: Keys,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {e}", path.display()))
}

impl Store {
    /// Opens the store at `path` with `passphrase`, or creates it (its
    /// directory 0700, the file 0600). Returns the store and every record it
    /// holds. A wrong passphrase gives [`Error::WrongPassphrase`] and writes
    /// nothing.
    pub fn open(path: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<(Self, Records), Error> {
        if passphrase.is_empty() {
            return Err(Error::Config("the store's passphrase is empty".into()));
        }
        let fresh = !path.exists();
        if fresh {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                net::identity::create_private_dir(dir).map_err(|e| store_err(path, e))?;
            }
            net::identity::create_private_file(path).map_err(|e| store_err(path, e))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => store_err(
                path,
                "in use by another client (another process, or a client of this one not yet \
                 shut down: drop its handles and its inbox)",
            ),
            e => store_err(path, e),
        })?;
        let meta = {
            let tx = db.begin_read().map_err(|e| store_err(path, e))?;
            match tx.open_table(META) {
                Ok(t) => t
                    .get("kdf")
                    .map_err(|e| store_err(path, e))?
                    .map(|v| v.value().to_vec())
                    .zip(
                        t.get("check")
                            .map_err(|e| store_err(path, e))?
                            .map(|v| v.value().to_vec()),
                    ),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(store_err(path, e)),
            }
        };
        let (keys, records) = match meta {
            Some((kdf_bytes, check)) => {
                let (params, salt) = KdfParams::decode(&kdf_bytes)
                    .ok_or_else(|| store_err(path, "unreadable key derivation record"))?;
                let keys = Keys::derive(passphrase, &salt, params)?;
                let ck = keys.table_key(b"check");
                match keys.open(&ck, &check) {
                    Some((k, v)) if k == b"check" && v == CHECK => {}
                    _ => return Err(Error::WrongPassphrase),
                }
                let records = Self::load(&db, &keys, path)?;
                (keys, records)
            }
            None => {
                let mut salt = [0u8; 16];
                rand::rng().fill_bytes(&mut salt);
                let keys = Keys::derive(passphrase, &salt, kdf)?;
                let ck = keys.table_key(b"check");
                let check = keys.seal(&ck, b"check", CHECK)?;
                let tx = db.begin_write().map_err(|e| store_err(path, e))?;
                {
                    let mut t = tx.open_table(META).map_err(|e| store_err(path, e))?;
                    t.insert("kdf", kdf.encode(&salt).as_slice())
                        .map_err(|e| store_err(path, e))?;
                    t.insert("check", check.as_slice())
                        .map_err(|e| store_err(path, e))?;
                    tx.open_table(RECORDS).map_err(|e| store_err(path, e))?;
                }
                tx.commit().map_err(|e| store_err(path, e))?;
                (keys, Vec::new())
            }
        };
        Ok((
            Self {
                db,
                keys,
                path: path.to_owned(),
            },
            records,
        ))
    }

    fn load(db: &Database, keys: &Keys, path: &Path) -> Result<Records, Error> {
        let tx = db.begin_read().map_err(|e| store_err(path, e))?;
        let t = match tx.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(path, e)),
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| store_err(path, e))? {
            let (k, v) = row.map_err(|e| store_err(path, e))?;
            let (logical, value) = keys
                .open(k.value(), v.value())
                .ok_or_else(|| store_err(path, "a record does not open: the file is damaged"))?;
            if keys.table_key(&logical) != *k.value() {
                return Err(store_err(path, "a record is filed under another key"));
            }
            out.push((logical, value));
        }
        Ok(out)
    }

    /// Writes `changes` in one durable transaction.
    pub fn commit(&self, changes: &Changes) -> Result<(), Error> {
        let path = &self.path;
        let tx = self.db.begin_write().map_err(|e| store_err(path, e))?;
        {
            let mut t = tx.open_table(RECORDS).map_err(|e| store_err(path, e))?;
            for (k, v) in &changes.puts {
                let tk = self.keys.table_key(k);
                let sealed = self.keys.seal(&tk, k, v)?;
                t.insert(&tk, sealed.as_slice())
                    .map_err(|e| store_err(path, e))?;
            }
            for k in &changes.deletes {
                t.remove(&self.keys.table_key(k))
                    .map_err(|e| store_err(path, e))?;
            }
        }
        tx.commit().map_err(|e| store_err(path, e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            m_kib: 1024,
            t: 1,
            p: 1,
        }
    }

    #[test]
    fn records_round_trip_and_a_wrong_passphrase_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("client.redb");
        let (s, recs) = Store::open(&p, b"correct horse", fast()).unwrap();
        assert!(recs.is_empty());
        let mut ch = Changes::default();
        ch.puts.push((b"out/a".to_vec(), b"hello".to_vec()));
        ch.puts.push((b"snapshot".to_vec(), vec![1, 2, 3]));
        s.commit(&ch).unwrap();
        let ch = Changes {
            puts: vec![(b"out/b".to_vec(), b"x".to_vec())],
            deletes: vec![b"out/a".to_vec()],
        };
        s.commit(&ch).unwrap();
        drop(s);
        // A wrong passphrase is refused before any write transaction (redb
        // may still touch its own header when it opens the file).
        for _ in 0..2 {
            assert!(matches!(
                Store::open(&p, b"wrong", fast()),
                Err(Error::WrongPassphrase)
            ));
        }
        let (_, mut recs) = Store::open(&p, b"correct horse", fast()).unwrap();
        recs.sort();
        assert_eq!(
            recs,
            vec![
                (b"out/b".to_vec(), b"x".to_vec()),
                (b"snapshot".to_vec(), vec![1, 2, 3])
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&p), 0o600);
            assert_eq!(mode(p.parent().unwrap()), 0o700);
        }
        assert!(matches!(
            Store::open(&p, b"", fast()),
            Err(Error::Config(_))
        ));
    }
}
