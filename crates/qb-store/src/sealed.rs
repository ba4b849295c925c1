//! Secrets at rest: the columns that hold private keys and shared secrets are stored sealed,
//! by envelope encryption under keys the database never holds.
//!
//! Each value gets a data key of its own (AES-256-GCM, random); the value is encrypted under
//! it, and the data key is wrapped (encrypted) under a key-encryption key from the key file.
//! Both are bound to where the value lives (`nodes.plan/<node id>`...), so a sealed value moved
//! to another row or column does not open. A sealed value reads
//! `qb-sealed-v1:<key name>:<wrapped data key>:<ciphertext>` (base64), so a dump of the
//! database names the key each value needs and shows nothing of the value.
//!
//! The key file holds one key per line, `<name> <base64 of 32 bytes>`; the first seals, every
//! one opens. Rotating a key is adding a new first line and resealing ([`Store::reseal`]):
//! only the data keys are wrapped again, the values' ciphertexts stay. The file is read again
//! when it changes, so running controllers take up a new key without a restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::Row as _;

use crate::{Result, Store, StoreError};

/// What every sealed value starts with.
pub const SEALED_PREFIX: &str = "qb-sealed-v1:";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const MAX_KEY_NAME: usize = 40;
/// How often, at most, the key file is checked for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading the secrets key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the secrets key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secrets key file {path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("the secrets key file {path}, line {line}: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("the secrets key file {path} holds no key")]
    Empty { path: PathBuf },
}

/// Why a stored value cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("it is not sealed")]
    NotSealed,
    #[error("it is not a well-formed sealed value")]
    Malformed,
    #[error("it is sealed with key {0:?}, which the secrets key file does not hold")]
    UnknownKey(String),
    #[error("it does not open with its key: altered, or moved from another row")]
    Forged,
}

/// The key-encryption keys: the first seals, all open. Cloning shares them.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Mutex<Keys>>,
}

struct Keys {
    /// Name and key, the sealing key first.
    keys: Vec<(String, LessSafeKey)>,
    /// Where they were read from, and how that file was then; `None` for keys held in memory.
    file: Option<KeyFile>,
}

struct KeyFile {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.lock();
        f.debug_struct("Keyring")
            .field(
                "keys",
                &keys.keys.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("file", &keys.file.as_ref().map(|f| &f.path))
            .finish()
    }
}

impl Keyring {
    /// The keys in the file at `path`, which must be readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let (keys, seen) = read_key_file(path)?;
        Ok(Self::new(
            keys,
            Some(KeyFile {
                path: path.to_owned(),
                seen,
                checked: Instant::now(),
            }),
        ))
    }

    /// The keys in the file at `path`; when there is no such file, one is written with a new
    /// key. Also says whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_key_file(path, &[new_key_line()], true)?;
                Ok((Self::load(path)?, true))
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// One new random key held in memory only: for tests, and for data that must not outlive
    /// the process.
    pub fn ephemeral() -> Self {
        let (name, key) = parse_key_line(&new_key_line()).expect("a new key line parses");
        Self::new(vec![(name, key)], None)
    }

    fn new(keys: Vec<(String, LessSafeKey)>, file: Option<KeyFile>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Keys { keys, file })),
        }
    }

    /// Adds a new key in front of those in the file at `path` (creating it if needed), so that
    /// it seals from now on; returns its name. The others stay, to open what they sealed.
    pub fn add_key(path: &Path) -> Result<String, KeyFileError> {
        let mut lines = vec![new_key_line()];
        let create = match std::fs::symlink_metadata(path) {
            Ok(_) => {
                check_mode(path)?;
                let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                parse_key_file(path, &text)?;
                lines.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                        .map(|l| l.trim().to_owned()),
                );
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(source) => {
                return Err(KeyFileError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        write_key_file(path, &lines, create)?;
        Ok(lines[0]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// The names of the keys, the sealing key first.
    pub fn names(&self) -> Vec<String> {
        self.refresh(false);
        self.lock().keys.iter().map(|(n, _)| n.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the key file again if it changed (at most once a second unless `now`). A file
    /// that no longer reads well is logged and the keys already held are kept.
    fn refresh(&self, now: bool) {
        let mut keys = self.lock();
        let Some(file) = keys.file.as_mut() else {
            return;
        };
        if !now && file.checked.elapsed() < RECHECK {
            return;
        }
        file.checked = Instant::now();
        if stamp(&file.path) == file.seen {
            return;
        }
        let path = file.path.clone();
        match read_key_file(&path) {
            Ok((new, seen)) => {
                tracing::info!(file = %path.display(), keys = ?new.iter().map(|(n, _)| n).collect::<Vec<_>>(), "secrets key file read again");
                keys.keys = new;
                if let Some(file) = keys.file.as_mut() {
                    file.seen = seen;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the secrets key file changed and does not read; keeping the keys read before");
                if let Some(file) = keys.file.as_mut() {
                    file.seen = stamp(&path);
                }
            }
        }
    }

    /// Seals `plain` for the place `context` names.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        self.refresh(false);
        let keys = self.lock();
        let (name, kek) = &keys.keys[0];
        let mut data_key = [0u8; KEY_LEN];
        fill(&mut data_key);
        let dek = aead_key(&data_key);
        let value = encrypt(&dek, context.as_bytes(), plain.to_vec());
        let wrapped = encrypt(kek, &wrap_aad(name, context), data_key.to_vec());
        format!(
            "{SEALED_PREFIX}{name}:{}:{}",
            BASE64.encode(wrapped),
            BASE64.encode(value)
        )
    }

    /// Opens what [`Keyring::seal`] sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let parts = Sealed::parse(sealed)?;
        let data_key = self.unwrap_data_key(&parts, context)?;
        decrypt(&aead_key(&data_key), context.as_bytes(), parts.value)
    }

    /// `sealed` with its data key wrapped again under the sealing key; `None` when it already is.
    pub fn rewrap(&self, context: &str, sealed: &str) -> Result<Option<String>, SealError> {
        let parts = Sealed::parse(sealed)?;
        let data_key = self.unwrap_data_key(&parts, context)?;
        // The value must open too: a rewrap never blesses a forged value.
        decrypt(
            &aead_key(&data_key),
            context.as_bytes(),
            parts.value.clone(),
        )?;
        let keys = self.lock();
        let (name, kek) = &keys.keys[0];
        if *name == parts.key {
            return Ok(None);
        }
        let wrapped = encrypt(kek, &wrap_aad(name, context), data_key);
        Ok(Some(format!(
            "{SEALED_PREFIX}{name}:{}:{}",
            BASE64.encode(wrapped),
            BASE64.encode(parts.value)
        )))
    }

    fn unwrap_data_key(&self, parts: &Sealed, context: &str) -> Result<Vec<u8>, SealError> {
        let find = |keyring: &Self| {
            keyring
                .lock()
                .keys
                .iter()
                .find(|(n, _)| *n == parts.key)
                .map(|(_, k)| decrypt(k, &wrap_aad(&parts.key, context), parts.wrapped.clone()))
        };
        let found = find(self).or_else(|| {
            // A key added to the file since it was read.
            self.refresh(true);
            find(self)
        });
        let data_key = found.ok_or_else(|| SealError::UnknownKey(parts.key.clone()))??;
        if data_key.len() != KEY_LEN {
            return Err(SealError::Malformed);
        }
        Ok(data_key)
    }
}

/// A sealed value's parts.
struct Sealed {
    key: String,
    wrapped: Vec<u8>,
    value: Vec<u8>,
}

impl Sealed {
    fn parse(text: &str) -> Result<Self, SealError> {
        let rest = text
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::NotSealed)?;
        let mut parts = rest.split(':');
        let (Some(key), Some(wrapped), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        let decode = |s: &str| BASE64.decode(s).map_err(|_| SealError::Malformed);
        Ok(Self {
            key: valid_key_name(key)
                .then(|| key.to_owned())
                .ok_or(SealError::Malformed)?,
            wrapped: decode(wrapped)?,
            value: decode(value)?,
        })
    }

    /// The key a stored value's text is sealed with, read from its first characters; `None`
    /// when it is not sealed.
    pub(crate) fn key_of(start: &str) -> Option<&str> {
        start.strip_prefix(SEALED_PREFIX)?.split(':').next()
    }
}

fn wrap_aad(key: &str, context: &str) -> Vec<u8> {
    format!("{key}\n{context}").into_bytes()
}

pub(crate) fn aead_key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

pub(crate) fn fill(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the system's random source works");
}

/// Nonce, then ciphertext and tag.
fn encrypt(key: &LessSafeKey, aad: &[u8], mut data: Vec<u8>) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill(&mut nonce);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut data,
    )
    .expect("AES-GCM seals any value qb stores");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    out
}

fn decrypt(key: &LessSafeKey, aad: &[u8], data: Vec<u8>) -> Result<Vec<u8>, SealError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Malformed);
    }
    let (nonce, rest) = data.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
    let mut rest = rest.to_vec();
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut rest)
        .map_err(|_| SealError::Forged)?
        .len();
    rest.truncate(len);
    Ok(rest)
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A key line with a new random key, named by today's date and a random suffix.
fn new_key_line() -> String {
    let mut key = [0u8; KEY_LEN];
    fill(&mut key);
    let mut suffix = [0u8; 3];
    fill(&mut suffix);
    let today = time::OffsetDateTime::now_utc().date();
    format!(
        "{today}-{:02x}{:02x}{:02x} {}",
        suffix[0],
        suffix[1],
        suffix[2],
        BASE64.encode(key)
    )
}

fn parse_key_line(line: &str) -> Result<(String, LessSafeKey), String> {
    let mut words = line.split_whitespace();
    let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
        return Err("expected `<name> <base64 key>`".to_owned());
    };
    if !valid_key_name(name) {
        return Err(format!(
            "the key name {name:?} is not 1-{MAX_KEY_NAME} letters, digits, '-' or '.'"
        ));
    }
    let bytes = BASE64
        .decode(key)
        .map_err(|_| format!("the key {name:?} is not base64"))?;
    if bytes.len() != KEY_LEN {
        return Err(format!(
            "the key {name:?} is {} bytes, not {KEY_LEN}",
            bytes.len()
        ));
    }
    Ok((name.to_owned(), aead_key(&bytes)))
}

fn parse_key_file(path: &Path, text: &str) -> Result<Vec<(String, LessSafeKey)>, KeyFileError> {
    let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |problem| KeyFileError::Invalid {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let (name, key) = parse_key_line(line).map_err(invalid)?;
        if keys.iter().any(|(n, _)| *n == name) {
            return Err(invalid(format!("the key name {name:?} is used twice")));
        }
        keys.push((name, key));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

fn check_mode(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Readable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_key_file(path: &Path) -> Result<(Vec<(String, LessSafeKey)>, Stamp), KeyFileError> {
    check_mode(path)?;
    let seen = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((parse_key_file(path, &text)?, seen))
}

const KEY_FILE_HEADER: &str = "\
# qb-controller's secrets key file: one key per line, `<name> <base64 of 32 bytes>`.
# The first key seals new secrets; every key here opens what it sealed. Without this file the
# secrets in the database cannot be read: keep a copy apart from the database's backups, and
# give every replica the same file.
";

/// Writes the key file whole (a new file renamed over the old), owner-only from the start.
fn write_key_file(path: &Path, lines: &[String], create: bool) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let mut text = KEY_FILE_HEADER.to_owned();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    if create {
        // Never replace a file someone else wrote meanwhile.
        std::fs::hard_link(&tmp, path).map_err(err)?;
        std::fs::remove_file(&tmp).map_err(err)?;
    } else {
        std::fs::rename(&tmp, path).map_err(err)?;
    }
    if let Some(dir) = dir {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// A column that holds sealed values, and how its rows' places are named.
struct SealedColumn {
    table: &'static str,
    column: &'static str,
    id: &'static str,
}

const SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "controller_secrets",
        column: "value",
        id: "name",
    },
    SealedColumn {
        table: "clusters",
        column: "pki",
        id: "id",
    },
    SealedColumn {
        table: "nodes",
        column: "certs",
        id: "id",
    },
    SealedColumn {
        table: "nodes",
        column: "plan",
        id: "id",
    },
    SealedColumn {
        table: "notification_channels",
        column: "secret",
        id: "id",
    },
    SealedColumn {
        table: "etcd_snapshots",
        column: "data_key",
        id: "CAST(id AS TEXT)",
    },
];

/// Where a sealed value lives, `table.column/id`: what its keys are bound to.
pub fn context(table: &str, column: &str, id: &str) -> String {
    format!("{table}.{column}/{id}")
}

/// What [`Store::sealed_status`] found: how many values each key seals, and how many are not
/// sealed at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealedStatus {
    pub by_key: BTreeMap<String, u64>,
    pub not_sealed: u64,
}

/// What [`Store::reseal`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values stored plain before, now sealed.
    pub sealed: u64,
    /// Values whose data key was wrapped again under the sealing key.
    pub rewrapped: u64,
}

impl Store {
    /// Seals a value for `table.column` of the row `id`.
    pub(crate) fn seal(&self, table: &str, column: &str, id: &str, plain: &str) -> String {
        self.keyring
            .seal(&context(table, column, id), plain.as_bytes())
    }

    /// Opens a value of `table.column` of the row `id`.
    pub(crate) fn unseal(
        &self,
        what: &'static str,
        (table, column, id): (&str, &str, &str),
        sealed: &str,
    ) -> Result<String> {
        let bytes = self
            .keyring
            .open(&context(table, column, id), sealed)
            .map_err(|source| StoreError::Sealed { what, source })?;
        String::from_utf8(bytes).map_err(|_| StoreError::Sealed {
            what,
            source: SealError::Malformed,
        })
    }

    /// The places and key names of every stored secret, from the first characters of each.
    async fn sealed_places(&self) -> Result<Vec<(&'static SealedColumn, String, Option<String>)>> {
        let mut places = Vec::new();
        let len = SEALED_PREFIX.len() + MAX_KEY_NAME + 1;
        for col in SEALED_COLUMNS {
            let (table, column, id) = (col.table, col.column, col.id);
            let rows = sqlx::query(&format!(
                "SELECT {id} AS id, substr({column}, 1, {len}) AS start FROM {table} \
                 WHERE {column} IS NOT NULL"
            ))
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let start: String = row.try_get("start")?;
                places.push((
                    col,
                    row.try_get("id")?,
                    Sealed::key_of(&start).map(str::to_owned),
                ));
            }
        }
        Ok(places)
    }

    /// How the stored secrets are sealed.
    pub async fn sealed_status(&self) -> Result<SealedStatus> {
        let mut status = SealedStatus::default();
        for (_, _, key) in self.sealed_places().await? {
            match key {
                Some(key) => *status.by_key.entry(key).or_default() += 1,
                None => status.not_sealed += 1,
            }
        }
        Ok(status)
    }

    /// Seals every stored secret that is not (a database from before secrets were sealed), and
    /// wraps every data key under another key again under the sealing key. Refused, with
    /// nothing changed, when a value is sealed with a key the key file does not hold.
    pub async fn reseal(&self) -> Result<Resealed> {
        let places = self.sealed_places().await?;
        let names = self.keyring.names();
        if let Some(unknown) = places
            .iter()
            .filter_map(|(_, _, key)| key.as_ref())
            .find(|key| !names.contains(key))
        {
            return Err(StoreError::Sealed {
                what: "secret",
                source: SealError::UnknownKey(unknown.clone()),
            });
        }
        let mut done = Resealed::default();
        for (col, id, key) in places {
            if key.as_ref() == names.first() {
                continue;
            }
            let (table, column, id_column) = (col.table, col.column, col.id);
            let _lock = self.bookkeeping_lock().await;
            let Some(row) = sqlx::query(&format!(
                "SELECT {column} AS v FROM {table} WHERE {id_column} = $1"
            ))
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?
            else {
                continue;
            };
            let Some(old) = row.try_get::<Option<String>, _>("v")? else {
                continue;
            };
            let ctx = context(table, column, &id);
            let new = match self.keyring.rewrap(&ctx, &old) {
                Ok(Some(new)) => new,
                Ok(None) => continue,
                Err(SealError::NotSealed) => self.keyring.seal(&ctx, old.as_bytes()),
                Err(source) => {
                    return Err(StoreError::Sealed {
                        what: "secret",
                        source,
                    });
                }
            };
            let plain = !old.starts_with(SEALED_PREFIX);
            // Only if nobody changed it meanwhile; a value written since is sealed already.
            let updated = sqlx::query(&format!(
                "UPDATE {table} SET {column} = $1 WHERE {id_column} = $2 AND {column} = $3"
            ))
            .bind(&new)
            .bind(&id)
            .bind(&old)
            .execute(&self.pool)
            .await?;
            if updated.rows_affected() == 1 {
                if plain {
                    done.sealed += 1;
                } else {
                    done.rewrapped += 1;
                }
            }
        }
        if done.sealed > 0 && self.backend == crate::Backend::Sqlite {
            // The plain values' old pages would stay in the file's free space and the log:
            // rewrite the file without them.
            let _lock = self.bookkeeping_lock().await;
            for statement in [
                "PRAGMA wal_checkpoint(TRUNCATE)",
                "VACUUM",
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ] {
                sqlx::query(statement).execute(&self.pool).await?;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file_with(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        write_key_file(
            &path,
            &lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(),
            true,
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_place() {
        let keys = Keyring::ephemeral();
        let sealed = keys.seal("nodes.plan/1", b"-----BEGIN PRIVATE KEY-----");
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            keys.open("nodes.plan/1", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(matches!(
            keys.open("nodes.plan/2", &sealed),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            keys.open("nodes.certs/1", &sealed),
            Err(SealError::Forged)
        ));
        // The same value sealed twice reads differently.
        assert_ne!(
            sealed,
            keys.seal("nodes.plan/1", b"-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn altered_or_foreign_values_do_not_open() {
        let keys = Keyring::ephemeral();
        let sealed = keys.seal("c/1", b"secret");
        let mut parts: Vec<String> = sealed.split(':').map(str::to_owned).collect();
        let mut value = BASE64.decode(&parts[3]).unwrap();
        let last = value.len() - 1;
        value[last] ^= 1;
        parts[3] = BASE64.encode(value);
        assert!(matches!(
            keys.open("c/1", &parts.join(":")),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            keys.open("c/1", "secret"),
            Err(SealError::NotSealed)
        ));
        for bad in [
            "qb-sealed-v1:",
            "qb-sealed-v1:k:AAAA",
            "qb-sealed-v1:k:AA:AA:AA",
            "qb-sealed-v1:k/x:AAAA:AAAA",
            "qb-sealed-v1:k:!!:AAAA",
        ] {
            assert!(
                matches!(keys.open("c/1", bad), Err(SealError::Malformed)),
                "{bad}"
            );
        }
        let other = Keyring::ephemeral();
        let name = other.names()[0].clone();
        assert!(
            matches!(other.open("c/1", &sealed), Err(SealError::UnknownKey(n)) if n == keys.names()[0] && n != name)
        );
    }

    #[test]
    fn rewrapping_moves_a_value_to_the_first_key_and_keeps_it() {
        let (_dir, path) = file_with(&[]);
        let old = Keyring::load_or_create(&path).map(|(k, _)| k);
        // An empty file (the header only) holds no key.
        assert!(matches!(old, Err(KeyFileError::Empty { .. })));
        let (_dir, path) = {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("secrets.key");
            (dir, path)
        };
        let (keys, created) = Keyring::load_or_create(&path).unwrap();
        assert!(created);
        let first = keys.names();
        assert_eq!(first.len(), 1);
        let sealed = keys.seal("c/1", b"value");
        assert_eq!(keys.rewrap("c/1", &sealed).unwrap(), None);

        let added = Keyring::add_key(&path).unwrap();
        let keys = Keyring::load(&path).unwrap();
        assert_eq!(keys.names(), vec![added.clone(), first[0].clone()]);
        let moved = keys.rewrap("c/1", &sealed).unwrap().unwrap();
        assert_eq!(Sealed::key_of(&moved), Some(added.as_str()));
        // The value's ciphertext is the same: only its data key was wrapped again.
        assert_eq!(moved.rsplit(':').next(), sealed.rsplit(':').next());
        assert_eq!(keys.open("c/1", &moved).unwrap(), b"value");
        assert!(matches!(
            keys.rewrap("c/2", &sealed),
            Err(SealError::Forged)
        ));
    }

    #[test]
    fn a_running_keyring_takes_up_keys_added_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let (running, _) = Keyring::load_or_create(&path).unwrap();
        let other_process = {
            Keyring::add_key(&path).unwrap();
            Keyring::load(&path).unwrap()
        };
        let sealed = other_process.seal("c/1", b"new");
        // Opening a value sealed with a key it did not know makes it read the file again.
        assert_eq!(running.open("c/1", &sealed).unwrap(), b"new");
        assert_eq!(running.names(), other_process.names());
    }

    #[test]
    fn key_files_are_checked() {
        let key = BASE64.encode([7u8; 32]);
        for (lines, problem) in [
            (vec!["k1"], "line 5: expected"),
            (vec!["k1 AAAA"], "is 3 bytes, not 32"),
            (vec!["k/1 AAAA"], "is not 1-40 letters"),
            (vec!["k1 not-base64!"], "is not base64"),
            (
                vec![&*format!("k1 {key}"), &*format!("k1 {key}")],
                "line 6: the key name \"k1\" is used twice",
            ),
        ] {
            let (_dir, path) = file_with(&lines);
            let error = Keyring::load(&path).unwrap_err().to_string();
            assert!(error.contains(problem), "{lines:?}: {error}");
        }
        let (_dir, path) = file_with(&[&format!("k1 {key}")]);
        assert_eq!(Keyring::load(&path).unwrap().names(), vec!["k1"]);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = Keyring::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn debug_shows_key_names_only() {
        let key = BASE64.encode([7u8; 32]);
        let (_dir, path) = file_with(&[&format!("k1 {key}")]);
        let keys = Keyring::load(&path).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("k1"), "{shown}");
        assert!(
            !shown.contains(&key) && !shown.contains("7, 7, 7"),
            "{shown}"
        );
    }
}
