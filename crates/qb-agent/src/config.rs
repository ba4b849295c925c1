//! The agent's configuration file (TOML), as shipped in its package.

use std::path::{Path, PathBuf};

use qb_api::{LabelKey, LabelValue, Labels};
use qb_pki::Pin;
use serde::Deserialize;

/// What the agent needs to find and trust its controller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The controller's agent endpoint, e.g. `https://controller.example:7444`.
    pub controller_url: String,
    /// Agent endpoints of the controller's other replicas, tried in turn when the one in use
    /// does not answer.
    #[serde(default)]
    pub other_controller_urls: Vec<String>,
    /// SHA-256 pins of the controller CA's public key (`sha256:<hex>`); several while the CA
    /// rotates. The agent talks to nothing that does not chain to one of them.
    pub ca_pins: Vec<Pin>,
    /// The bootstrap token to register with. Used once; after that the node certificate in
    /// `state_dir` is the host's identity.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// Where the agent keeps its key, certificate and identity.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// An HTTP proxy to reach the controller through (`http://proxy:3128`), with CONNECT.
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Labels the node gets when it registers.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The host's machine id; default: the agent's own if it made one, else /etc/machine-id,
    /// else /var/lib/dbus/machine-id, else one the agent makes (see `StateDir::machine_id`).
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The node's name; default: the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Where the services the agent supervises write their logs (rotated).
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
}

fn default_log_dir() -> PathBuf {
    PathBuf::from("/var/log/qb")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/qb-agent")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        };
        for url in config.controller_urls() {
            if !url.starts_with("https://") || authority(url, 443).is_err() {
                return Err(invalid(format!(
                    "controller URLs must be https:// URLs with a host, not {url:?}"
                )));
            }
        }
        if config.ca_pins.is_empty() {
            return Err(invalid("ca_pins must name at least one CA pin".to_owned()));
        }
        if let Some(proxy) = &config.http_proxy
            && !proxy.starts_with("http://")
        {
            return Err(invalid(format!(
                "http_proxy must be an http:// URL, not {proxy:?}"
            )));
        }
        config.labels().map_err(|e| invalid(e.0))?;
        Ok(config)
    }

    /// The configured labels, validated.
    pub fn labels(&self) -> Result<Labels, qb_api::InvalidValue> {
        self.labels
            .iter()
            .map(|(k, v)| Ok((k.parse::<LabelKey>()?, v.parse::<LabelValue>()?)))
            .collect()
    }

    /// Every agent endpoint of the controller: `controller_url`, then the other replicas'.
    pub fn controller_urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.controller_url.as_str())
            .chain(self.other_controller_urls.iter().map(String::as_str))
    }
}

/// `host:port` and `host` of an `http(s)://host[:port]/...` URL.
pub fn authority(url: &str, default_port: u16) -> Result<(String, String), String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed IPv6 address"))?;
        (host.to_owned(), after.strip_prefix(':').map(str::to_owned))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        None => default_port,
    };
    let joined = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((joined, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../config.example.toml");

    #[test]
    fn the_shipped_example_parses() {
        let config = Config::parse(Path::new("config.example.toml"), EXAMPLE).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/qb-agent"));
        assert_eq!(
            authority(&config.controller_url, 443).unwrap().0,
            "controller.example:7444"
        );
        assert_eq!(config.labels().unwrap().len(), 1);
    }

    #[test]
    fn bad_configs_name_the_file_and_the_problem() {
        let pin = "sha256:".to_owned() + &"ab".repeat(32);
        for (text, want) in [
            ("", "missing field `controller_url`"),
            (
                "controller_url = \"http://x\"\nca_pins = [\"PIN\"]",
                "controller URLs must be https:// URLs",
            ),
            (
                "controller_url = \"https://x\"\nother_controller_urls = [\"http://y\"]\nca_pins = [\"PIN\"]",
                "https://",
            ),
            (
                "controller_url = \"https://x\"\nca_pins = []",
                "at least one",
            ),
            (
                "controller_url = \"https://x\"\nca_pins = [\"sha256:zz\"]",
                "CA pin",
            ),
            (
                "controller_url = \"https://x\"\nca_pins = [\"PIN\"]\nbogus = 1",
                "unknown field",
            ),
            (
                "controller_url = \"https://x\"\nca_pins = [\"PIN\"]\n[labels]\n\"bad key!\" = \"v\"",
                "label key",
            ),
        ] {
            let text = text.replace("PIN", &pin);
            let err = Config::parse(Path::new("/etc/qb-agent/config.toml"), &text).unwrap_err();
            let chain = format!(
                "{err}: {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(chain.contains("/etc/qb-agent/config.toml"), "{chain}");
            assert!(
                chain.to_lowercase().contains(&want.to_lowercase()),
                "{text}: {chain}"
            );
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(
            authority("https://10.77.0.1:7444", 443).unwrap(),
            ("10.77.0.1:7444".into(), "10.77.0.1".into())
        );
        assert_eq!(
            authority("https://host/x", 443).unwrap(),
            ("host:443".into(), "host".into())
        );
        assert_eq!(
            authority("https://[fd00::1]:7444", 443).unwrap(),
            ("[fd00::1]:7444".into(), "fd00::1".into())
        );
        assert!(authority("https://:7444", 443).is_err());
    }
}
