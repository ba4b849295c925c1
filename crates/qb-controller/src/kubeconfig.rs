//! Kubeconfigs that point plain `kubectl` at a cluster through the controller's Kubernetes API
//! proxy, `<public URL>/k8s/clusters/<cluster>` ([`crate::proxy::PREFIX`]), authenticating with
//! a qb API token; [`qb_plan::kubeconfig`] writes them.

use std::net::Ipv6Addr;

use qb_api::{Name, Secret};
use qb_plan::kubeconfig::{Credentials, Kubeconfig, TrustedCa};

/// How users reach the controller's API, as written into kubeconfigs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicEndpoint {
    /// `http(s)://host[:port]`, without a trailing slash (see [`parse_public_url`]).
    pub url: String,
    /// PEM of the certificate chain the controller serves, for clients to trust; `None` when
    /// the URL is plain HTTP or TLS ends in front of the controller (clients use their own
    /// trusted roots then).
    pub ca_pem: Option<String>,
}

/// Why a public URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid URL {url:?}: {reason}; expected http(s)://HOST[:PORT]")]
pub struct InvalidUrl {
    url: String,
    reason: &'static str,
}

/// Checks the API's URL as users reach it: `http` or `https`, a host (a DNS name, an IPv4
/// address or a bracketed IPv6 address), an optional port, and nothing else (no user, path,
/// query or fragment; a lone trailing `/` is dropped). Returns it with a lowercase scheme.
pub fn parse_public_url(url: &str) -> Result<String, InvalidUrl> {
    let bad = |reason| InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(bad("the scheme must be https or http"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("no query or fragment is allowed"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(bad("no path is allowed"));
    }
    if authority.contains('@') {
        return Err(bad("no user information is allowed"));
    }
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (addr.parse::<Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            (host_ok, port)
        }
    };
    if !host_ok {
        return Err(bad("the host must be a DNS name or an IP address"));
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0))
    {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// The kubeconfig of `user` for `cluster`, authenticating with the API token `secret`.
///
/// The cluster and context are named `qb-<cluster>`, the user `<user>@qb-<cluster>`, so that
/// kubeconfigs of several clusters (and users) merge without clashes (`KUBECONFIG=a:b`).
pub fn render(endpoint: &PublicEndpoint, cluster: &Name, user: &Name, secret: &str) -> String {
    let name = format!("qb-{cluster}");
    Kubeconfig {
        server: format!("{}{}/{cluster}", endpoint.url, crate::proxy::PREFIX),
        ca: endpoint
            .ca_pem
            .clone()
            .map_or(TrustedCa::SystemRoots, TrustedCa::Pem),
        user: format!("{user}@{name}"),
        credentials: Credentials::Token(Secret::from(secret)),
        context: Some(name.clone()),
        cluster: name,
    }
    .to_yaml()
}

#[cfg(test)]
mod tests {
    use qb_plan::kubeconfig::base64;

    use super::*;

    #[test]
    fn public_urls_are_checked() {
        for (url, normalized) in [
            ("https://qb.example.net", "https://qb.example.net"),
            (
                "https://qb.example.net:8443/",
                "https://qb.example.net:8443",
            ),
            ("HTTPS://10.0.0.1:7443", "https://10.0.0.1:7443"),
            ("http://127.0.0.1:7443", "http://127.0.0.1:7443"),
            ("https://[::1]:7443", "https://[::1]:7443"),
            ("https://[2001:db8::1]", "https://[2001:db8::1]"),
            ("https://localhost:65535", "https://localhost:65535"),
        ] {
            assert_eq!(parse_public_url(url).expect(url), normalized);
        }
        for (url, reason) in [
            ("qb.example.net:7443", "no scheme"),
            ("ftp://qb.example.net", "scheme"),
            ("https://", "host"),
            ("https://:7443", "host"),
            ("https://qb.example.net/api", "no path"),
            ("https://qb.example.net//", "no path"),
            ("https://qb.example.net?x=1", "query"),
            ("https://qb.example.net/#top", "fragment"),
            ("https://user:pw@qb.example.net", "user"),
            ("https://qb.example.net:", "port"),
            ("https://qb.example.net:0", "port"),
            ("https://qb.example.net:65536", "port"),
            ("https://qb.example.net:+80", "port"),
            ("https://qb.example.net:80:80", "port"),
            ("https://[::1", "unclosed"),
            ("https://[::1]x", "junk"),
            ("https://[qb]:7443", "host"),
            ("https://qb example.net", "host"),
            ("https://-qb.example.net", "host"),
            ("https://qb..example.net", "host"),
            (" https://qb.example.net", "scheme"),
            ("https://qb.example.net ", "host"),
        ] {
            let e = parse_public_url(url).expect_err(url).to_string();
            assert!(e.contains(reason), "{url}: {e}");
            assert!(e.contains("expected http(s)://HOST[:PORT]"), "{e}");
        }
    }

    #[test]
    fn kubeconfigs_name_everything_after_the_cluster() {
        let endpoint = PublicEndpoint {
            url: "https://qb.example.net:8443".to_owned(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nfoobar\n".to_owned()),
        };
        let cluster: Name = "prod".parse().expect("name");
        let user: Name = "alice".parse().expect("name");
        let expected = format!(
            r#"apiVersion: v1
kind: Config
clusters:
  - name: "qb-prod"
    cluster:
      server: "https://qb.example.net:8443/k8s/clusters/prod"
      certificate-authority-data: "{ca}"
users:
  - name: "alice@qb-prod"
    user:
      token: "qb_0123"
contexts:
  - name: "qb-prod"
    context:
      cluster: "qb-prod"
      user: "alice@qb-prod"
current-context: "qb-prod"
"#,
            ca = base64(b"-----BEGIN CERTIFICATE-----\nfoobar\n"),
        );
        assert_eq!(render(&endpoint, &cluster, &user, "qb_0123"), expected);

        let plain = PublicEndpoint {
            url: "http://127.0.0.1:7443".to_owned(),
            ca_pem: None,
        };
        let text = render(&plain, &cluster, &user, "qb_0123");
        assert!(!text.contains("certificate-authority"), "{text}");
        assert!(
            text.contains("\n      server: \"http://127.0.0.1:7443/k8s/clusters/prod\"\nusers:\n"),
            "{text}"
        );
    }
}
