//! The client configuration: named contexts (controller address, token, pinned certificate) and the
//! current one, in `$QB_CONFIG` or `$HOME/.config/qb/config.yaml`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::tls::Fingerprint;

/// The name `qb login` gives a context unless told otherwise.
pub const DEFAULT_CONTEXT: &str = "default";

/// The contents of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The context commands use unless `--context` names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One controller the client can talk to, and how.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    /// Base URL of the controller, e.g. `https://qb.example.net:8443`.
    pub server: String,
    /// API token (secret).
    pub token: String,
    /// The pinned certificate, `sha256:<hex>`; absent for plain-HTTP (loopback) controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Context {
    /// The pinned fingerprint, parsed.
    pub fn pinned(&self) -> anyhow::Result<Option<Fingerprint>> {
        self.fingerprint
            .as_deref()
            .map(|f| {
                f.parse()
                    .with_context(|| format!("context {:?} has a bad fingerprint", self.name))
            })
            .transpose()
    }
}

impl Config {
    pub fn find(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The context named `name`, or the current one.
    pub fn resolve(&self, name: Option<&str>) -> anyhow::Result<&Context> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(name) => name,
            None if self.contexts.is_empty() => {
                bail!("not logged in to any controller; run `qb login URL --token TOKEN`")
            }
            None => bail!(
                "no current context; pick one with `qb context use NAME` (see `qb context list`)"
            ),
        };
        self.find(name)
            .ok_or_else(|| anyhow!("no context named {name:?}; see `qb context list`"))
    }

    /// Adds or replaces the context with the same name.
    pub fn upsert(&mut self, context: Context) {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(existing) => *existing = context,
            None => self.contexts.push(context),
        }
    }

    /// Removes a context; forgets it as current too. Returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.contexts.len();
        self.contexts.retain(|c| c.name != name);
        if self.current_context.as_deref() == Some(name) {
            self.current_context = None;
        }
        self.contexts.len() != before
    }

    pub fn parse(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text)
    }
}

/// Where the configuration lives: `--config`, else `$QB_CONFIG` (both arrive as `explicit`), else
/// `$HOME/.config/qb/config.yaml`.
pub fn path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            anyhow!("HOME is not set; give the configuration file with --config or QB_CONFIG")
        })?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("qb")
        .join("config.yaml"))
}

/// Reads the configuration; a missing file is an empty configuration.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()));
        }
    };
    Config::parse(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// Writes the configuration atomically (temporary file, then rename) readable by the owner only:
/// it holds tokens.
pub fn save(path: &Path, config: &Config) -> anyhow::Result<()> {
    let text = serde_yaml_ng::to_string(config).context("cannot encode the configuration")?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir)
        .with_context(|| format!("cannot create config directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = write_private(&tmp, text.as_bytes())
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write config file {}", path.display()));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // A leftover temporary file keeps its old mode; make sure of ours.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            current_context: Some("prod".to_owned()),
            contexts: vec![
                Context {
                    name: "prod".to_owned(),
                    server: "https://qb.example.net:8443".to_owned(),
                    token: "qb_secret".to_owned(),
                    fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
                },
                Context {
                    name: "dev".to_owned(),
                    server: "http://127.0.0.1:8080".to_owned(),
                    token: "qb_dev".to_owned(),
                    fingerprint: None,
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_the_file_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join("config.yaml");
        assert_eq!(
            load(&path).expect("missing file is empty"),
            Config::default()
        );

        save(&path, &sample()).expect("save");
        assert_eq!(load(&path).expect("load"), sample());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Saving again replaces the file and leaves no temporary file behind.
        let mut changed = sample();
        changed.remove("dev");
        save(&path, &changed).expect("save again");
        assert_eq!(load(&path).expect("load"), changed);
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("config.yaml")]);
    }

    #[test]
    fn file_format_is_the_documented_one() {
        let text = "current_context: dev\ncontexts:\n- name: dev\n  server: http://127.0.0.1:8080\n  token: t\n";
        let config = Config::parse(text).expect("parse");
        assert_eq!(
            config.resolve(None).expect("current").server,
            "http://127.0.0.1:8080"
        );
        assert_eq!(Config::parse("").expect("empty"), Config::default());
        assert_eq!(Config::parse("\n  \n").expect("blank"), Config::default());
        assert!(Config::parse("contexts: [{name: a}]").is_err());
        assert!(Config::parse("surprise: 1").is_err());
    }

    #[test]
    fn resolve_upsert_and_remove() {
        let mut config = sample();
        assert_eq!(config.resolve(None).expect("current").name, "prod");
        assert_eq!(config.resolve(Some("dev")).expect("named").name, "dev");
        let err = config.resolve(Some("nope")).expect_err("unknown");
        assert!(
            err.to_string().contains("no context named \"nope\""),
            "{err}"
        );

        let mut dev = sample().contexts[1].clone();
        dev.token = "rotated".to_owned();
        config.upsert(dev);
        assert_eq!(config.contexts.len(), 2);
        assert_eq!(config.resolve(Some("dev")).expect("dev").token, "rotated");

        assert!(config.remove("prod"));
        assert!(!config.remove("prod"));
        assert_eq!(config.current_context, None);
        let err = config.resolve(None).expect_err("no current");
        assert!(err.to_string().contains("qb context use"), "{err}");
        config.remove("dev");
        let err = config.resolve(None).expect_err("nothing");
        assert!(err.to_string().contains("qb login"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let text = format!("{:?}", sample().contexts[0]);
        assert!(!text.contains("qb_secret"), "{text}");
    }
}
