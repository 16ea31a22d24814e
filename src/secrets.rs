//! A job's `secrets` (LAVA's): kept sealed at rest and masked wherever
//! the job's text can be read.
//!
//! LAVA writes a job's `secrets` into its overlay (`/lava-<id>/secrets`)
//! for the test shell to source, and masks their values in its log. labd
//! does the same, and also never keeps them in clear: the job's stored
//! text has each value replaced by `[MASKED]` (see
//! [`crate::job::mask_secrets`]), and the values are kept beside it sealed
//! (ChaCha20-Poly1305) with the lab's key, a file of 32 random bytes in
//! the state directory that only labd may read. A store copied, exported
//! or backed up without that file holds no secret.
//!
//! This module owns the key file, sealing and opening, and the
//! [`Masker`], which replaces every value in a stream of console bytes
//! even when a value is split across two reads.

use crate::model::SealedSecrets;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What replaces a secret's value in the stored job, the log and events.
pub use crate::job::SECRET_MASK as MASK;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("the lab's secrets key {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab's secrets key {}: {why}", .path.display())]
    BadKey { path: PathBuf, why: &'static str },
    #[error("the job's secrets cannot be opened with this lab's key (was the key file replaced?)")]
    Open,
    #[error("sealing the job's secrets failed")]
    Seal,
}

/// The lab's key for sealing secrets.
pub struct LabKey {
    cipher: ChaCha20Poly1305,
}

impl LabKey {
    /// Reads the key at `path`, or makes one there (mode 0600) if there is
    /// none. A key that others may read is refused: it would unseal every
    /// job's secrets.
    pub fn load_or_create(path: &Path) -> Result<LabKey, SecretsError> {
        let io = |source| SecretsError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(SecretsError::BadKey {
                        path: path.to_owned(),
                        why: "others may read it; make it mode 0600",
                    });
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                // Created whole under a temporary name, then renamed: a
                // crash leaves no short key behind.
                let tmp = path.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        if bytes.len() != 32 {
            return Err(SecretsError::BadKey {
                path: path.to_owned(),
                why: "not 32 bytes",
            });
        }
        Ok(LabKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    pub fn seal(&self, secrets: &BTreeMap<String, String>) -> Result<SealedSecrets, SecretsError> {
        let plain = serde_json::to_vec(secrets).map_err(|_| SecretsError::Seal)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let data = self
            .cipher
            .encrypt(&nonce, plain.as_slice())
            .map_err(|_| SecretsError::Seal)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(SealedSecrets {
            nonce: b64.encode(nonce),
            data: b64.encode(data),
        })
    }

    pub fn open(&self, sealed: &SealedSecrets) -> Result<BTreeMap<String, String>, SecretsError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(&sealed.nonce).map_err(|_| SecretsError::Open)?;
        let data = b64.decode(&sealed.data).map_err(|_| SecretsError::Open)?;
        if nonce.len() != 12 {
            return Err(SecretsError::Open);
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&nonce), data.as_slice())
            .map_err(|_| SecretsError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| SecretsError::Open)
    }
}

/// Replaces secret values with [`MASK`] in a stream of bytes. The tail of
/// a read that could be the start of a value is held back until the next
/// read (or [`Masker::finish`]) tells.
#[derive(Debug, Clone)]
pub struct Masker {
    /// Longest first, so that of two values where one starts the other,
    /// the whole longer one is masked.
    values: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Masker {
    /// A masker for these values; `None` when there is nothing to mask.
    /// Empty values are left out: they would match everywhere.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Masker> {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes().to_vec())
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Some(Masker {
            values,
            held: Vec::new(),
        })
    }

    /// The bytes of this read that can be shown now, masked.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.scan(bytes, false)
    }

    /// What was held back, masked, once no more bytes will come.
    pub fn finish(&mut self) -> Vec<u8> {
        self.scan(&[], true)
    }

    fn scan(&mut self, bytes: &[u8], last: bool) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            // A longer value this could still become: wait for more bytes,
            // even if a shorter one is already whole here.
            if !last
                && self
                    .values
                    .iter()
                    .any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                self.held = rest.to_vec();
                return out;
            }
            for v in &self.values {
                if rest.starts_with(v) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += v.len();
                    continue 'scan;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// `text` with every value masked.
    pub fn mask_str(&self, text: &str) -> String {
        let mut m = Masker {
            values: self.values.clone(),
            held: Vec::new(),
        };
        let mut out = m.feed(text.as_bytes());
        out.extend(m.finish());
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_across_reads_are_masked_and_nothing_else_is_held() {
        let mut m = Masker::new(["s3cret", "s3cret-longer", ""]).unwrap();
        let mut out = Vec::new();
        for chunk in [&b"token=s3"[..], b"cr", b"et and s3cret-lo", b"nger; s3c"] {
            out.extend(m.feed(chunk));
        }
        // The tail could still become a value: held until the end.
        assert_eq!(
            String::from_utf8_lossy(&out),
            "token=[MASKED] and [MASKED]; "
        );
        out.extend(m.finish());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "token=[MASKED] and [MASKED]; s3c"
        );
        // A byte that cannot start a value is never held.
        assert_eq!(m.feed(b"plain text"), b"plain text");
        assert!(Masker::new([""]).is_none());
        assert_eq!(m.mask_str("a s3cret b"), "a [MASKED] b");
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = LabKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secrets = BTreeMap::from([("API_KEY".to_owned(), "b43614a9".to_owned())]);
        let sealed = key.seal(&secrets).unwrap();
        assert!(!sealed.data.contains("b43614a9"));
        // The same key, read again from its file.
        let again = LabKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), secrets);
        let other = LabKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(matches!(other.open(&sealed), Err(SecretsError::Open)));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            LabKey::load_or_create(&path),
            Err(SecretsError::BadKey { .. })
        ));
    }
}
