//! The routing table: which endpoints serve a request's host and path, built from the cluster's
//! Ingresses of class `qb`, their Services and Endpoints, as `networking.k8s.io/v1` defines it:
//!
//! - A host matches exactly, or a wildcard host (`*.example.org`) matches one more label in
//!   front of its suffix; an exact host wins over a wildcard one.
//! - Paths: `Exact` equals the request path; `Prefix` matches whole path elements (`/app`
//!   matches `/app` and `/app/x`, not `/apps`), a trailing slash ignored; `ImplementationSpecific`
//!   is served as `Prefix`. The longest matching path wins, and `Exact` over `Prefix` at equal
//!   length; between Ingresses, the oldest wins a tie.
//! - Rules without a host apply to every host, after the host's own rules; then the default
//!   backend of the oldest Ingress that has one.
//!
//! Backends are reached at their endpoints (the ready addresses of the Service's Endpoints, on
//! the port of the Service port the Ingress names), never through the Service IP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

/// The IngressClass qb serves.
pub const CLASS: &str = "qb";
/// The controller name of that class.
pub const CONTROLLER: &str = "qb.io/ingress";
/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation Ingresses named their class with before `spec.ingressClassName`.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// A Service port as an Ingress names it, resolved to where its pods listen.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs and error pages.
    pub name: String,
    /// Why it has no endpoints, when it has none.
    pub problem: Option<String>,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
}

impl Backend {
    /// The endpoints in the order to try them: round robin, each request starting one further.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        self.endpoints.iter().cycle().skip(start).take(n)
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.addr).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Debug)]
struct Rule {
    kind: PathKind,
    /// As written for `Exact`; without its trailing slashes for `Prefix` (`/` becomes empty).
    path: String,
    backend: Arc<Backend>,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// Where a TLS host's certificate is: the Secret `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// The routing table of one moment; a new one is built on every change.
#[derive(Debug, Default)]
pub struct Routes {
    hosts: HashMap<String, Vec<Rule>>,
    /// By the suffix after `*.`.
    wildcards: HashMap<String, Vec<Rule>>,
    any_host: Vec<Rule>,
    default_backend: Option<Arc<Backend>>,
    /// The certificate of each TLS host (exact, or `*.suffix`), from the oldest Ingress naming it.
    pub tls: HashMap<String, SecretRef>,
    /// The Ingresses served, as `namespace/name`.
    pub ingresses: Vec<String>,
}

impl Routes {
    /// The backend for `host` (lower case, without a port) and `path`; `None` when nothing
    /// routes it.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let own = self.hosts.get(host).or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            self.wildcards.get(suffix)
        });
        own.into_iter()
            .chain(std::iter::once(&self.any_host))
            .flat_map(|rules| rules.iter())
            .find(|rule| rule.matches(path))
            .map(|rule| &rule.backend)
            .or(self.default_backend.as_ref())
    }

    /// The table of the Ingresses of class `qb` among `ingresses` (also those without a class,
    /// when the IngressClass `qb` is the default), their backends resolved from `services` and
    /// `endpoints`.
    pub fn build(
        ingresses: &[Arc<Ingress>],
        classes: &[Arc<IngressClass>],
        services: &[Arc<Service>],
        endpoints: &[Arc<Endpoints>],
    ) -> Routes {
        let default_class = classes.iter().any(|c| {
            c.metadata.name.as_deref() == Some(CLASS)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        });
        let mut ours: Vec<&Arc<Ingress>> = ingresses
            .iter()
            .filter(|i| is_ours(i, default_class))
            .collect();
        ours.sort_by(|a, b| {
            let key = |i: &Ingress| {
                (
                    i.metadata.creation_timestamp.clone().map(|t| t.0),
                    i.metadata.namespace.clone(),
                    i.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let index = Index::new(services, endpoints);
        let mut routes = Routes::default();
        for ingress in ours {
            let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
            let Some(spec) = &ingress.spec else { continue };
            routes.ingresses.push(format!(
                "{namespace}/{}",
                ingress.metadata.name.as_deref().unwrap_or_default()
            ));
            if routes.default_backend.is_none()
                && let Some(backend) = &spec.default_backend
            {
                routes.default_backend = Some(index.backend(&namespace, backend));
            }
            // A TLS entry without hosts covers the hosts of the Ingress's rules.
            let rule_hosts: Vec<String> = spec
                .rules
                .iter()
                .flatten()
                .filter_map(|r| r.host.clone())
                .collect();
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                let hosts = match tls.hosts.as_deref() {
                    Some(hosts) if !hosts.is_empty() => hosts,
                    _ => &rule_hosts,
                };
                for host in hosts {
                    routes
                        .tls
                        .entry(host.to_ascii_lowercase())
                        .or_insert_with(|| SecretRef {
                            namespace: namespace.clone(),
                            name: secret.clone(),
                        });
                }
            }
            for rule in spec.rules.iter().flatten() {
                let rules = match rule.host.as_deref().map(str::to_ascii_lowercase) {
                    None => &mut routes.any_host,
                    Some(host) => match host.strip_prefix("*.") {
                        Some(suffix) => routes.wildcards.entry(suffix.to_owned()).or_default(),
                        None => routes.hosts.entry(host).or_default(),
                    },
                };
                for http_path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let written = http_path.path.as_deref().unwrap_or("/");
                    let kind = match http_path.path_type.as_deref() {
                        Some("Exact") => PathKind::Exact,
                        _ => PathKind::Prefix,
                    };
                    let path = match kind {
                        PathKind::Exact => written.to_owned(),
                        PathKind::Prefix => written.trim_end_matches('/').to_owned(),
                    };
                    rules.push(Rule {
                        kind,
                        path,
                        backend: index.backend(&namespace, &http_path.backend),
                    });
                }
            }
        }
        for rules in routes
            .hosts
            .values_mut()
            .chain(routes.wildcards.values_mut())
            .chain(std::iter::once(&mut routes.any_host))
        {
            // Stable: between equals, the oldest Ingress's rule stays first.
            rules.sort_by_key(|r| (std::cmp::Reverse(r.path.len()), r.kind == PathKind::Prefix));
        }
        routes
    }
}

fn is_ours(ingress: &Ingress, default_class: bool) -> bool {
    let class = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()?
                .get(LEGACY_CLASS_ANNOTATION)
                .map(String::as_str)
        });
    match class {
        Some(class) => class == CLASS,
        None => default_class,
    }
}

/// Services and Endpoints by `(namespace, name)`.
struct Index<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    endpoints: HashMap<(&'a str, &'a str), &'a Endpoints>,
}

impl<'a> Index<'a> {
    fn new(services: &'a [Arc<Service>], endpoints: &'a [Arc<Endpoints>]) -> Self {
        let key = |m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            Some((m.namespace.as_deref()?, m.name.as_deref()?))
        };
        Self {
            services: services
                .iter()
                .filter_map(|s| Some((key(&s.metadata)?, &**s)))
                .collect(),
            endpoints: endpoints
                .iter()
                .filter_map(|e| Some((key(&e.metadata)?, &**e)))
                .collect(),
        }
    }

    fn backend(&self, namespace: &str, backend: &IngressBackend) -> Arc<Backend> {
        let (name, endpoints, problem) = match self.resolve(namespace, backend) {
            Ok((name, endpoints)) if endpoints.is_empty() => {
                let problem = format!("{name} has no ready endpoints");
                (name, endpoints, Some(problem))
            }
            Ok((name, endpoints)) => (name, endpoints, None),
            Err((name, problem)) => (name, Vec::new(), Some(problem)),
        };
        Arc::new(Backend {
            name,
            problem,
            endpoints: endpoints
                .into_iter()
                .map(|addr| Endpoint { addr })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The backend's name and endpoints, or its name and why it cannot be served.
    fn resolve(
        &self,
        namespace: &str,
        backend: &IngressBackend,
    ) -> Result<(String, Vec<SocketAddr>), (String, String)> {
        let Some(service) = &backend.service else {
            let name = format!("{namespace}/(resource backend)");
            return Err((name, "resource backends are not supported".to_owned()));
        };
        let port = service.port.as_ref();
        let port_text = port
            .and_then(|p| p.name.clone().or(p.number.map(|n| n.to_string())))
            .unwrap_or_default();
        let name = format!("{namespace}/{}:{port_text}", service.name);
        let Some(svc) = self.services.get(&(namespace, service.name.as_str())) else {
            return Err((name.clone(), format!("{name}: no such Service")));
        };
        let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
        let service_port = ports
            .clone()
            .find(|p| match port {
                Some(want) => match (&want.name, want.number) {
                    (Some(n), _) => p.name.as_deref() == Some(n.as_str()),
                    (None, Some(number)) => p.port == number,
                    (None, None) => false,
                },
                None => false,
            })
            .ok_or_else(|| {
                (
                    name.clone(),
                    format!("{name}: the Service has no such port"),
                )
            })?;
        let mut addrs = Vec::new();
        let Some(endpoints) = self.endpoints.get(&(namespace, service.name.as_str())) else {
            return Ok((name, addrs));
        };
        let single = ports.count() == 1;
        for subset in endpoints.subsets.iter().flatten() {
            // The Endpoints port of that Service port: by name, or the only one.
            let Some(target) = subset.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or_default()
                    == service_port.name.as_deref().unwrap_or_default()
                    || single && subset.ports.as_ref().is_some_and(|ps| ps.len() == 1)
            }) else {
                continue;
            };
            let Ok(port) = u16::try_from(target.port) else {
                continue;
            };
            for address in subset.addresses.iter().flatten() {
                if let Ok(ip) = address.ip.parse::<IpAddr>() {
                    addrs.push(SocketAddr::new(ip, port));
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        Ok((name, addrs))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(
        value: serde_json::Value,
    ) -> Arc<T> {
        Arc::new(serde_json::from_value(value).expect("a valid object"))
    }

    fn service(name: &str, ports: serde_json::Value) -> Arc<Service> {
        object(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": "10.96.0.10", "ports": ports},
        }))
    }

    fn endpoints(name: &str, ips: &[&str], ports: serde_json::Value) -> Arc<Endpoints> {
        let addresses: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        object(json!({
            "metadata": {"namespace": "default", "name": name},
            "subsets": [{"addresses": addresses, "notReadyAddresses": [{"ip": "10.244.9.9"}], "ports": ports}],
        }))
    }

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        object(json!({
            "metadata": {"namespace": "default", "name": name, "creationTimestamp": created},
            "spec": spec,
        }))
    }

    fn backend(service: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"service": {"name": service, "port": port}})
    }

    fn path(path: &str, kind: &str, service: &str) -> serde_json::Value {
        json!({"path": path, "pathType": kind, "backend": backend(service, json!({"number": 80}))})
    }

    /// Services `a`..`e` on port 80 (named `http`) with one endpoint each, port 8080 of pod
    /// `10.244.0.<n>`.
    fn cluster() -> (Vec<Arc<Service>>, Vec<Arc<Endpoints>>) {
        let names = ["a", "b", "c", "d", "e"];
        let services = names
            .iter()
            .map(|n| service(n, json!([{"name": "http", "port": 80, "targetPort": 8080}])))
            .collect();
        let endpoints = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                endpoints(
                    n,
                    &[&format!("10.244.0.{}", i + 1)],
                    json!([{"name": "http", "port": 8080}]),
                )
            })
            .collect();
        (services, endpoints)
    }

    fn served_by(routes: &Routes, host: &str, path: &str) -> Option<String> {
        routes
            .route(host, path)
            .map(|b| b.name.split(':').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn paths_match_as_the_ingress_api_defines() {
        let (services, endpoints) = cluster();
        let spec = json!({
            "ingressClassName": "qb",
            "rules": [{"host": "shop.example.org", "http": {"paths": [
                path("/", "Prefix", "a"),
                path("/app/", "Prefix", "b"),
                path("/app", "Exact", "c"),
                path("/app/login", "ImplementationSpecific", "d"),
            ]}}],
        });
        let routes = Routes::build(
            &[ingress("shop", "2026-01-01T00:00:00Z", spec)],
            &[],
            &services,
            &endpoints,
        );
        for (path, want) in [
            ("/", "a"),
            ("/apps", "a"),
            ("/app", "c"),
            ("/app/", "b"),
            ("/app/x", "b"),
            ("/app/login", "d"),
            ("/app/login/2fa", "d"),
            ("/app/logins", "b"),
            ("/APP", "a"),
        ] {
            assert_eq!(
                served_by(&routes, "shop.example.org", path).as_deref(),
                Some(&*format!("default/{want}")),
                "{path}"
            );
        }
        assert_eq!(served_by(&routes, "other.example.org", "/"), None);
    }

    #[test]
    fn exact_hosts_win_over_wildcards_and_hostless_rules_and_the_default_backend_come_last() {
        let (services, endpoints) = cluster();
        let spec = json!({
            "ingressClassName": "qb",
            "defaultBackend": backend("e", json!({"name": "http"})),
            "rules": [
                {"host": "*.example.org", "http": {"paths": [path("/", "Prefix", "a")]}},
                {"host": "www.example.org", "http": {"paths": [path("/www", "Prefix", "b")]}},
                {"http": {"paths": [path("/any", "Prefix", "c")]}},
            ],
        });
        let routes = Routes::build(
            &[ingress("i", "2026-01-01T00:00:00Z", spec)],
            &[],
            &services,
            &endpoints,
        );
        for (host, path, want) in [
            ("shop.example.org", "/x", "a"),
            ("www.example.org", "/www", "b"),
            // The exact host has no rule for `/x`: the rules of every host, then the default.
            ("www.example.org", "/any", "c"),
            ("www.example.org", "/x", "e"),
            // A wildcard covers one label only.
            ("a.b.example.org", "/x", "e"),
            ("example.org", "/x", "e"),
            ("elsewhere.test", "/any/thing", "c"),
        ] {
            assert_eq!(
                served_by(&routes, host, path).as_deref(),
                Some(&*format!("default/{want}")),
                "{host}{path}"
            );
        }
    }

    #[test]
    fn only_ingresses_of_class_qb_are_served_and_the_oldest_wins_a_tie() {
        let (services, endpoints) = cluster();
        let rule =
            |svc: &str| json!([{"host": "h.test", "http": {"paths": [path("/", "Prefix", svc)]}}]);
        let ingresses = [
            ingress(
                "newer",
                "2026-02-01T00:00:00Z",
                json!({"ingressClassName": "qb", "rules": rule("b")}),
            ),
            ingress(
                "older",
                "2026-01-01T00:00:00Z",
                json!({"ingressClassName": "qb", "rules": rule("a")}),
            ),
            ingress(
                "theirs",
                "2025-01-01T00:00:00Z",
                json!({"ingressClassName": "nginx", "rules": rule("c")}),
            ),
            ingress(
                "classless",
                "2024-01-01T00:00:00Z",
                json!({"rules": rule("d")}),
            ),
        ];
        let routes = Routes::build(&ingresses, &[], &services, &endpoints);
        assert_eq!(
            served_by(&routes, "h.test", "/").as_deref(),
            Some("default/a")
        );
        assert_eq!(routes.ingresses, ["default/older", "default/newer"]);

        // With qb the default class, Ingresses without a class are served too.
        let class: Arc<IngressClass> = object(json!({
            "metadata": {"name": "qb", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "spec": {"controller": CONTROLLER},
        }));
        let routes = Routes::build(&ingresses, &[class], &services, &endpoints);
        assert_eq!(
            served_by(&routes, "h.test", "/").as_deref(),
            Some("default/d")
        );
        let legacy = ingress(
            "legacy",
            "2023-01-01T00:00:00Z",
            json!({"rules": rule("e")}),
        );
        let mut legacy = (*legacy).clone();
        legacy.metadata.annotations =
            Some([(LEGACY_CLASS_ANNOTATION.to_owned(), "qb".to_owned())].into());
        let routes = Routes::build(&[Arc::new(legacy)], &[], &services, &endpoints);
        assert_eq!(
            served_by(&routes, "h.test", "/").as_deref(),
            Some("default/e")
        );
    }

    #[test]
    fn backends_are_the_ready_endpoints_on_the_named_ports_target() {
        let services = vec![
            service(
                "multi",
                json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]),
            ),
            service("single", json!([{"port": 80}])),
            service("empty", json!([{"port": 80}])),
        ];
        let endpoints = vec![
            endpoints(
                "multi",
                &["10.244.1.2", "10.244.2.3"],
                json!([{"name": "admin", "port": 9901}, {"name": "http", "port": 8080}]),
            ),
            endpoints("single", &["10.244.1.4"], json!([{"port": 3000}])),
        ];
        let spec = json!({
            "ingressClassName": "qb",
            "rules": [{"host": "h.test", "http": {"paths": [
                {"path": "/admin", "pathType": "Prefix", "backend": backend("multi", json!({"name": "admin"}))},
                {"path": "/web", "pathType": "Prefix", "backend": backend("multi", json!({"number": 80}))},
                {"path": "/single", "pathType": "Prefix", "backend": backend("single", json!({"number": 80}))},
                {"path": "/empty", "pathType": "Prefix", "backend": backend("empty", json!({"number": 80}))},
                {"path": "/missing", "pathType": "Prefix", "backend": backend("missing", json!({"number": 80}))},
                {"path": "/badport", "pathType": "Prefix", "backend": backend("single", json!({"number": 81}))},
            ]}}],
        });
        let routes = Routes::build(
            &[ingress("i", "2026-01-01T00:00:00Z", spec)],
            &[],
            &services,
            &endpoints,
        );
        let at = |path: &str| routes.route("h.test", path).expect("a route");
        let addrs = |path: &str| -> Vec<String> {
            at(path)
                .addresses()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(addrs("/admin"), ["10.244.1.2:9901", "10.244.2.3:9901"]);
        assert_eq!(addrs("/web"), ["10.244.1.2:8080", "10.244.2.3:8080"]);
        assert_eq!(addrs("/single"), ["10.244.1.4:3000"]);
        for (path, problem) in [
            ("/empty", "default/empty:80 has no ready endpoints"),
            ("/missing", "default/missing:80: no such Service"),
            (
                "/badport",
                "default/single:81: the Service has no such port",
            ),
        ] {
            assert!(addrs(path).is_empty());
            assert_eq!(at(path).problem.as_deref(), Some(problem));
        }
        // Round robin: each request starts at the next endpoint.
        let firsts: Vec<SocketAddr> = (0..4)
            .map(|_| at("/web").endpoints().next().expect("an endpoint").addr)
            .collect();
        assert_eq!(firsts[0], firsts[2]);
        assert_ne!(firsts[0], firsts[1]);
        assert_eq!(at("/web").endpoints().count(), 2);
    }

    #[test]
    fn tls_hosts_take_the_secret_of_the_oldest_ingress_naming_them() {
        let (services, endpoints) = cluster();
        let tls = |secret: &str| json!({"ingressClassName": "qb", "tls": [{"hosts": ["Shop.example.org", "*.example.org"], "secretName": secret}]});
        let routes = Routes::build(
            &[
                ingress("new", "2026-02-01T00:00:00Z", tls("new-cert")),
                ingress("old", "2026-01-01T00:00:00Z", tls("old-cert")),
            ],
            &[],
            &services,
            &endpoints,
        );
        let want = SecretRef {
            namespace: "default".into(),
            name: "old-cert".into(),
        };
        assert_eq!(routes.tls.get("shop.example.org"), Some(&want));
        assert_eq!(routes.tls.get("*.example.org"), Some(&want));

        let hostless = json!({"ingressClassName": "qb", "tls": [{"secretName": "rules-cert"}],
                              "rules": [{"host": "a.test"}, {"host": "b.test"}, {}]});
        let routes = Routes::build(
            &[ingress("i", "2026-01-01T00:00:00Z", hostless)],
            &[],
            &services,
            &endpoints,
        );
        let mut hosts: Vec<&String> = routes.tls.keys().collect();
        hosts.sort();
        assert_eq!(hosts, ["a.test", "b.test"], "the rules' hosts");
    }
}
