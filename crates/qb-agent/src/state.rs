//! The agent's state directory: its key, certificate and identity. Files holding secrets are
//! written atomically with mode 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use qb_api::{NodeId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who this host is to the controller, once registered.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub tenant_id: TenantId,
    pub node_id: NodeId,
    pub node_name: String,
    pub cert_pem: String,
    /// SHA-256 of the bootstrap token this identity was registered with.
    #[serde(default)]
    pub registered_with: String,
    #[serde(skip)]
    pub key_pem: String,
}

/// Not derived: the key must never reach a log.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("tenant_id", &self.tenant_id)
            .field("node_id", &self.node_id)
            .field("node_name", &self.node_name)
            .field("registered_with", &self.registered_with)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The host's machine id, which names it to the controller when it registers: the one the
    /// configuration gives; else qb's own, once one was made; else the system's
    /// (`/etc/machine-id`, else D-Bus's copy); else — on a minimal install or image without one —
    /// qb's own, made now and kept in the state directory, so the host keeps its identity when a
    /// system id appears later. An empty or `uninitialized` system file counts as none; a file
    /// that cannot be read, or holds something else, is an error naming it.
    pub fn machine_id(
        &self,
        configured: Option<&str>,
        system: &[&Path],
    ) -> Result<qb_agent_proto::MachineId> {
        if let Some(id) = configured {
            return Ok(id.to_owned().try_into()?);
        }
        let own = self.own_machine_id_path();
        match std::fs::read_to_string(&own) {
            Ok(text) => {
                return text.try_into().with_context(|| {
                    format!("{} is damaged; delete it for a new one", own.display())
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", own.display())),
        }
        for file in system {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            };
            let text = text.trim();
            if text.is_empty() || text == "uninitialized" {
                continue;
            }
            return text
                .to_owned()
                .try_into()
                .with_context(|| format!("{} holds no machine id", file.display()));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        write_private(&own, format!("{id}\n").as_bytes())
            .with_context(|| format!("writing {}", own.display()))?;
        tracing::warn!(
            file = %own.display(),
            "this host has no machine id (/etc/machine-id); it is known to the controller by one of qb's own, kept in the state directory"
        );
        Ok(id.try_into()?)
    }

    /// Where qb's own machine id is kept, for a host that has none of its own.
    pub fn own_machine_id_path(&self) -> PathBuf {
        self.dir.join("machine-id")
    }

    /// The saved identity, if this host has registered.
    pub fn identity(&self) -> Result<Option<Identity>> {
        let file = self.dir.join("identity.json");
        if !file.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut identity: Identity = serde_json::from_str(&text).with_context(|| {
            format!("{} is damaged; delete it to register again", file.display())
        })?;
        let key = self.dir.join("node.key");
        identity.key_pem =
            std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
        Ok(Some(identity))
    }

    /// Saves a new identity (registration) or certificate (renewal): the key first, so a crash
    /// never leaves a certificate without its key.
    pub fn save(&self, identity: &Identity) -> Result<()> {
        write_private(&self.dir.join("node.key"), identity.key_pem.as_bytes())
            .context("saving the node key")?;
        write_private(
            &self.dir.join("identity.json"),
            serde_json::to_string_pretty(identity)?.as_bytes(),
        )
        .context("saving the identity")?;
        std::fs::remove_file(self.dir.join("deauthorized")).or_else(ignore_missing)?;
        Ok(())
    }

    /// Forgets the identity after the controller revoked it, remembering which bootstrap token
    /// it came from (`registered_with`) so the agent does not register again with that one; a new
    /// token in the configuration registers again.
    pub fn revoke(&self, registered_with: &str) -> Result<()> {
        std::fs::remove_file(self.dir.join("identity.json")).or_else(ignore_missing)?;
        std::fs::remove_file(self.dir.join("node.key")).or_else(ignore_missing)?;
        write_private(&self.dir.join("deauthorized"), registered_with.as_bytes())
            .context("recording the deauthorization")
    }

    /// `true` when this host was deauthorized while configured with `token`.
    pub fn revoked_with(&self, token: Option<&str>) -> bool {
        std::fs::read_to_string(self.dir.join("deauthorized")).is_ok_and(|h| h == token_hash(token))
    }
}

/// How the state directory remembers a bootstrap token without keeping it.
pub fn token_hash(token: Option<&str>) -> String {
    hex::encode(Sha256::digest(token.unwrap_or_default().as_bytes()))
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Writes a file so that a crash leaves the old or the new content, readable only by the agent:
/// a temporary file (mode 0600) in the same directory, fsync, rename, fsync of the directory.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tag = format!("{}.tmp", rand::random::<u64>());
    replace_file(path, &tag, |file| file.write_all(contents)).map(drop)
}

/// Replaces `path` through a new file (mode 0600) beside it, `.<name>.<tag>`: `fill` writes it,
/// then it is fsynced, renamed into place, and the directory fsynced; on failure the temporary
/// file goes. Returns the file, now at `path`.
pub(crate) fn replace_file(
    path: &Path,
    tag: &str,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{tag}"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        fill(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_host_without_a_machine_id_gets_one_of_qbs_own_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("machine-id");
        let dbus = dir.path().join("dbus-machine-id");
        let system = [etc.as_path(), dbus.as_path()];
        let state = |name: &str| StateDir::open(&dir.path().join(name)).unwrap();
        let (system_id, dbus_id) = (
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
        );

        // None anywhere: made once, then the same on every start — also once the system has
        // one (the host keeps the identity it registered with).
        let bare = state("bare");
        let own = bare.machine_id(None, &system).unwrap();
        assert_eq!(bare.machine_id(None, &system).unwrap(), own);
        let kept = std::fs::read_to_string(bare.own_machine_id_path()).unwrap();
        assert_eq!(kept.trim(), own.as_str());
        assert_ne!(
            state("other").machine_id(None, &system).unwrap(),
            own,
            "random"
        );
        std::fs::write(&etc, format!("{system_id}\n")).unwrap();
        assert_eq!(bare.machine_id(None, &system).unwrap(), own);

        // A host with its own: the system's, else D-Bus's (an empty or uninitialized file is
        // none); the configuration over both.
        assert_eq!(
            state("a").machine_id(None, &system).unwrap().as_str(),
            system_id
        );
        std::fs::write(&etc, "uninitialized\n").unwrap();
        std::fs::write(&dbus, format!("{dbus_id}\n")).unwrap();
        assert_eq!(
            state("b").machine_id(None, &system).unwrap().as_str(),
            dbus_id
        );
        let given = "00000000000000000000000000000001";
        assert_eq!(
            state("c")
                .machine_id(Some(given), &system)
                .unwrap()
                .as_str(),
            given
        );

        // Anything else in the file, or a file that cannot be read, is an error that names it:
        // never a new identity.
        std::fs::write(&etc, "not a machine id").unwrap();
        let e = format!("{:#}", state("d").machine_id(None, &system).unwrap_err());
        assert!(
            e.contains(&etc.display().to_string()) && e.contains("32 lowercase hex"),
            "{e}"
        );
        std::fs::remove_file(&etc).unwrap();
        std::fs::create_dir(&etc).unwrap();
        let e = format!("{:#}", state("e").machine_id(None, &system).unwrap_err());
        assert!(e.contains(&etc.display().to_string()), "{e}");
        assert!(!state("e").own_machine_id_path().exists());
    }

    #[test]
    fn identity_round_trips_privately_and_revocation_remembers_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        assert!(state.identity().unwrap().is_none());
        let id = Identity {
            tenant_id: TenantId::new(),
            node_id: NodeId::new(),
            node_name: "h1".into(),
            cert_pem: "CERT".into(),
            registered_with: token_hash(Some("qbb_old")),
            key_pem: "KEY".into(),
        };
        state.save(&id).unwrap();
        let back = state.identity().unwrap().unwrap();
        assert_eq!((back.node_id, back.key_pem.as_str()), (id.node_id, "KEY"));
        for file in ["node.key", "identity.json"] {
            let mode = std::fs::metadata(state.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let dir_mode = std::fs::metadata(state.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(
            !std::fs::read_to_string(state.path().join("identity.json"))
                .unwrap()
                .contains("KEY")
        );

        state.revoke(&id.registered_with).unwrap();
        assert!(state.identity().unwrap().is_none());
        assert!(state.revoked_with(Some("qbb_old")));
        assert!(!state.revoked_with(Some("qbb_new")));
        state.save(&id).unwrap();
        assert!(
            !state.revoked_with(Some("qbb_old")),
            "a new identity clears the mark"
        );
    }
}
