//! A small blocking HTTP/1.1 client for the controller's REST API on loopback. Every request
//! under `/api/` must be an operation of the committed OpenAPI document, so a test cannot pass
//! against a route the API does not declare.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The operations of `qb-controller/openapi.json`: method (`GET`) and path template.
static DOCUMENTED: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qb-controller/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
    doc["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .flat_map(|(template, item)| {
            let methods = item.as_object().expect("a path item is an object").keys();
            methods.map(|method| (method.to_ascii_uppercase(), template.clone()))
        })
        .collect()
});

/// Panics unless `method path` (the query aside) is an operation of the document. Paths outside
/// `/api/` (health, the Kubernetes API proxy) are not in it.
fn assert_documented(method: &str, path: &str) {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if !path.starts_with("/api/") {
        return;
    }
    assert!(
        DOCUMENTED
            .iter()
            .any(|(m, template)| m == method && fits(template, path)),
        "{method} {path} is not an operation of qb-controller/openapi.json"
    );
}

/// Whether `path` fits `template`, each `{parameter}` standing for one non-empty segment.
fn fits(template: &str, path: &str) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

/// The API with one bearer token.
#[derive(Clone)]
pub struct Api {
    addr: SocketAddr,
    token: String,
}

/// An answer: status and body (JSON, or the text as a JSON string).
#[derive(Debug)]
pub struct Reply {
    pub request: String,
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// Asserts a 2xx status; the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} answered {}: {}",
            self.request,
            self.status,
            self.body
        );
        self.body
    }

    /// Asserts this status and problem code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}: {}",
            self.request,
            self.body
        );
    }
}

/// A bootstrap token as created.
#[derive(Clone, Debug)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl Api {
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            token: token.to_owned(),
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(Value::to_string).unwrap_or_default();
        self.raw(method, path, "application/json", body.as_bytes())
    }

    /// `PUT` of raw bytes.
    pub fn put_bytes(&self, path: &str, bytes: &[u8]) -> Reply {
        self.raw(
            "PUT",
            &format!("/api/v1{path}"),
            "application/octet-stream",
            bytes,
        )
    }

    /// `GET` of what is not JSON (a package): the body as it came; panics on a status other
    /// than 200.
    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let path = format!("/api/v1{path}");
        let (status, content) = self.exchange("GET", &path, "application/json", b"");
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&content)
        );
        content
    }

    fn raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let (status, content) = self.exchange(method, path, content_type, body);
        let body = serde_json::from_slice(&content)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&content).into_owned()));
        Reply {
            request: format!("{method} {path}"),
            status,
            body,
        }
    }

    /// One request; the status and the body.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        assert_documented(method, path);
        let request = format!("{method} {path}");
        let mut stream = TcpStream::connect_timeout(&self.addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("{request}: cannot connect to {}: {e}", self.addr));
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{request}: reading the answer: {e}"));
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{request}: no HTTP head in {raw:?}"));
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let mut content = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{request}: bad status line in {head:?}"));
        if head.contains("transfer-encoding: chunked") {
            content = dechunk(&content);
        }
        (status, content)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", &format!("/api/v1{path}"), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", &format!("/api/v1{path}"), Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Reply {
        self.call("PATCH", &format!("/api/v1{path}"), Some(body))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", &format!("/api/v1{path}"), None)
    }

    /// `GET /healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.call("GET", "/healthz", None).status == 200
    }

    /// All of the tenant's nodes.
    pub fn nodes(&self) -> Vec<Value> {
        let page = self.get("/nodes?limit=1000").ok();
        page["items"].as_array().expect("a page of nodes").clone()
    }

    /// One node by name or id (asserting it exists).
    pub fn node(&self, name: &str) -> Value {
        self.get(&format!("/nodes/{name}")).ok()
    }

    pub fn bootstrap_token(&self, max_uses: u32, hours: u32) -> BootstrapToken {
        let created = self
            .post(
                "/bootstrap-tokens",
                &json!({ "max_uses": max_uses, "expires_in_hours": hours }),
            )
            .ok();
        BootstrapToken {
            id: created["token"]["id"]
                .as_str()
                .expect("token id")
                .to_owned(),
            secret: created["secret"].as_str().expect("secret").to_owned(),
        }
    }

    /// The tenant's bootstrap tokens, by id.
    pub fn bootstrap_tokens(&self) -> Vec<Value> {
        let page = self.get("/bootstrap-tokens?limit=1000").ok();
        page["items"].as_array().expect("a page of tokens").clone()
    }
}

/// `true` when a node's agent is online.
pub fn online(node: &Value) -> bool {
    node["agent"]["online"].as_bool() == Some(true)
}

pub fn state(node: &Value) -> &str {
    node["state"].as_str().unwrap_or("?")
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

#[test]
fn only_documented_api_requests_are_sent() {
    assert_documented("POST", "/api/v1/clusters/lab/detach");
    assert_documented("HEAD", "/api/v1/artifacts/0123abcd");
    assert_documented("GET", "/api/v1/nodes?limit=1000");
    assert_documented("GET", "/k8s/clusters/lab/version");
    for (method, path) in [
        ("POST", "/api/v1/nodes/x/bogus"),
        ("PATCH", "/api/v1/nodes/x"),
        ("POST", "/api/v1/nodes//labels"),
        ("GET", "/api/v1/nodes/"),
        ("GET", "/api/v2/nodes"),
    ] {
        assert!(
            std::panic::catch_unwind(|| assert_documented(method, path)).is_err(),
            "{method} {path} passed"
        );
    }
}
