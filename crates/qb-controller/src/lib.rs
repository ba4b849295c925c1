//! The qb controller: the REST API over the store, served over TLS.
//!
//! Handlers ([`api`]) parse and authorize, then make one call to the app layer ([`app`]),
//! which applies the rules beyond the records' own and knows nothing of HTTP; the store applies
//! the records' rules and writes the audit trail. Handlers never run SQL.

pub mod addons;
pub mod agent_upgrades;
pub mod agents;
pub mod alerts;
pub mod api;
pub mod app;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod crash;
pub mod engine;
mod error;
mod extract;
pub mod kubeconfig;
pub mod live;
pub mod notify;
pub mod openapi;
pub mod passwords;
pub mod prometheus;
pub mod proxy;
pub mod serve;
pub mod session;
pub mod snapshots;
pub mod tls;
pub mod ui;
pub mod workloads;

pub use api::router;
pub use app::AppState;
pub use error::ApiError;

/// The host and port of an `https://host[:port]/...` URL (IPv6 without brackets; port 443 if
/// none is given); `None` for anything else.
pub fn https_host_port(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    if url.scheme() != "https" {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(name) => name.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn https_hosts_and_ports() {
        for (url, want) in [
            (
                "https://controller.example:7444/x",
                Some(("controller.example", 7444)),
            ),
            ("https://10.0.0.1", Some(("10.0.0.1", 443))),
            ("https://[fd00::1]:7444", Some(("fd00::1", 7444))),
            ("http://controller.example", None),
            ("https://:7444", None),
            ("controller.example:7444", None),
            ("https://host:port", None),
        ] {
            let got = super::https_host_port(url);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{url}");
        }
    }
}
