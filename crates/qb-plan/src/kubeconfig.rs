//! Kubeconfig files, all written by [`Kubeconfig::to_yaml`]: those of the cluster's components
//! on a node (the CA and a client certificate as files, see [`crate::render`]) and those users
//! get from the controller for `kubectl` (the CA inline or none, a bearer token).
//!
//! Every value is a JSON string, which YAML reads as the same string whatever it holds. A
//! template rather than a YAML serializer keeps the files on nodes byte for byte as they are: a
//! file that changes is written again on every node and restarts the services that read it.

use qb_api::Secret;

/// A kubeconfig of one cluster, one user and one context, the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubeconfig {
    /// The cluster's name in the file.
    pub cluster: String,
    /// The API server's URL.
    pub server: String,
    pub ca: TrustedCa,
    /// The user's name in the file.
    pub user: String,
    pub credentials: Credentials,
    /// The context's name, which is also the current context; `None` for `default`.
    pub context: Option<String>,
}

/// How the client knows the API server's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedCa {
    /// `certificate-authority`: a PEM file on the host.
    File(String),
    /// `certificate-authority-data`: the PEM itself, base64-encoded in the file.
    Pem(String),
    /// None named: the client trusts its usual roots (plain HTTP, or TLS that ends in front of
    /// the server with a publicly trusted certificate).
    SystemRoots,
}

/// How the user authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// `client-certificate` and `client-key`: PEM files on the host, so no key is copied into
    /// the kubeconfig.
    ClientCertificate { cert: String, key: String },
    /// `token`: a bearer token, redacted in `Debug`.
    Token(Secret),
}

impl Kubeconfig {
    /// The file. A CA file is named before the server and inline CA data after it, and the
    /// `default` context is written bare, as they have always stood in the files on nodes and in
    /// users' kubeconfigs.
    pub fn to_yaml(&self) -> String {
        let context = self
            .context
            .as_deref()
            .map_or_else(|| "default".to_owned(), quote);
        let (ca_file, ca_data) = match &self.ca {
            TrustedCa::File(path) => (field("certificate-authority", path), String::new()),
            TrustedCa::Pem(pem) => (
                String::new(),
                field("certificate-authority-data", &base64(pem.as_bytes())),
            ),
            TrustedCa::SystemRoots => (String::new(), String::new()),
        };
        let credentials = match &self.credentials {
            Credentials::ClientCertificate { cert, key } => {
                field("client-certificate", cert) + &field("client-key", key)
            }
            Credentials::Token(token) => field("token", token.expose()),
        };
        format!(
            "apiVersion: v1
kind: Config
clusters:
  - name: {cluster}
    cluster:
{ca_file}      server: {server}
{ca_data}users:
  - name: {user}
    user:
{credentials}contexts:
  - name: {context}
    context:
      cluster: {cluster}
      user: {user}
current-context: {context}
",
            cluster = quote(&self.cluster),
            server = quote(&self.server),
            user = quote(&self.user),
        )
    }
}

/// One `key: value` line of a cluster or user entry.
fn field(key: &str, value: &str) -> String {
    format!("      {key}: {}\n", quote(value))
}

/// A double-quoted string, valid in YAML and TOML alike (JSON's escaping).
pub(crate) fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// Standard base64 (RFC 4648, with padding), as kubeconfig's `*-data` fields want it.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_kubeconfig(ca: TrustedCa) -> Kubeconfig {
        Kubeconfig {
            cluster: "lab".to_owned(),
            server: "https://[2001:db8::1]:7443/k8s/clusters/lab".to_owned(),
            ca,
            user: "ops".to_owned(),
            credentials: Credentials::Token(Secret::from("qb_s3cr3t")),
            context: Some("ops@lab".to_owned()),
        }
    }

    #[test]
    fn client_certificate_files() {
        let kubeconfig = Kubeconfig {
            cluster: "demo".to_owned(),
            server: "https://127.0.0.1:6444".to_owned(),
            ca: TrustedCa::File("/etc/qb/pki/ca.crt".to_owned()),
            user: "system:kube-proxy".to_owned(),
            credentials: Credentials::ClientCertificate {
                cert: "/etc/qb/pki/kube-proxy.crt".to_owned(),
                key: "/etc/qb/pki/kube-proxy.key".to_owned(),
            },
            context: None,
        };
        assert_eq!(
            kubeconfig.to_yaml(),
            r#"apiVersion: v1
kind: Config
clusters:
  - name: "demo"
    cluster:
      certificate-authority: "/etc/qb/pki/ca.crt"
      server: "https://127.0.0.1:6444"
users:
  - name: "system:kube-proxy"
    user:
      client-certificate: "/etc/qb/pki/kube-proxy.crt"
      client-key: "/etc/qb/pki/kube-proxy.key"
contexts:
  - name: default
    context:
      cluster: "demo"
      user: "system:kube-proxy"
current-context: default
"#
        );
    }

    #[test]
    fn token_with_and_without_inline_ca() {
        let pem = "-----BEGIN CERTIFICATE-----\nfoobar\n";
        let with_ca = token_kubeconfig(TrustedCa::Pem(pem.to_owned())).to_yaml();
        assert_eq!(
            with_ca,
            r#"apiVersion: v1
kind: Config
clusters:
  - name: "lab"
    cluster:
      server: "https://[2001:db8::1]:7443/k8s/clusters/lab"
      certificate-authority-data: "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmZvb2Jhcgo="
users:
  - name: "ops"
    user:
      token: "qb_s3cr3t"
contexts:
  - name: "ops@lab"
    context:
      cluster: "lab"
      user: "ops"
current-context: "ops@lab"
"#
        );
        let ca_line = field("certificate-authority-data", &base64(pem.as_bytes()));
        assert_eq!(
            token_kubeconfig(TrustedCa::SystemRoots).to_yaml(),
            with_ca.replace(&ca_line, "")
        );
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let debug = format!("{:?}", token_kubeconfig(TrustedCa::SystemRoots));
        assert!(!debug.contains("qb_s3cr3t"), "{debug}");
        assert!(debug.contains("ops@lab"), "{debug}");
    }

    #[test]
    fn values_are_quoted_whatever_they_hold() {
        assert_eq!(quote(r#"a"b\c: #d"#), r#""a\"b\\c: #d""#);
        assert_eq!(quote("line\nbreak"), r#""line\nbreak""#);
    }
}
