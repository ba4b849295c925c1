//! Keeping the zone current: Services, Endpoints and (for verified pod records) Pods watched
//! through the Kubernetes API, each kept in a reflector's store; every change makes a new
//! snapshot of the zone. While the API server is unreachable the watches retry with backoff
//! and the zone keeps answering from the last state it had.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use kube::runtime::watcher;
use kube::{Api, Client};
use qb_addon_kit::reflect;

use crate::server::SharedZone;
use crate::zone::{self, PodRecords, Zone, ZoneConfig};

/// Changes that come together (a rollout) make one snapshot.
const SETTLE: Duration = Duration::from_millis(50);

/// Watches the cluster through `client` and keeps `zone` current; `ready` turns true once the
/// first full listing is in the zone. Runs until the process ends.
pub async fn run(client: Client, config: ZoneConfig, zone: SharedZone, ready: Arc<AtomicBool>) {
    let (changed, mut wake) = tokio::sync::watch::channel(());
    let changed = Arc::new(changed);
    let all = watcher::Config::default;
    let services = reflect::<core::Service>(Api::all(client.clone()), all(), changed.clone());
    let endpoints = reflect::<core::Endpoints>(Api::all(client.clone()), all(), changed.clone());
    let pods = (config.pods == PodRecords::Verified)
        .then(|| reflect::<core::Pod>(Api::all(client.clone()), all(), changed.clone()));
    // Each store is ready once its first listing is in; a dropped writer means its task ended.
    if services.wait_until_ready().await.is_err() || endpoints.wait_until_ready().await.is_err() {
        return;
    }
    if let Some(pods) = &pods
        && pods.wait_until_ready().await.is_err()
    {
        return;
    }
    let mut serial: u32 = 1;
    loop {
        let snapshot = Zone::build(
            config.clone(),
            serial,
            &services
                .state()
                .iter()
                .filter_map(|s| service(s))
                .collect::<Vec<_>>(),
            &endpoints
                .state()
                .iter()
                .map(|e| self::endpoints(e))
                .collect::<Vec<_>>(),
            &pods
                .as_ref()
                .map(|p| p.state().iter().map(|p| pod(p)).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        zone.set(snapshot);
        ready.store(true, Ordering::Release);
        serial = serial.wrapping_add(1);
        if wake.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        wake.borrow_and_update();
    }
}

/// A Service as the zone needs it; `None` for one without a name or namespace.
pub fn service(s: &core::Service) -> Option<zone::Service> {
    let spec = s.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        zone::ServiceKind::ExternalName(spec.external_name.clone()?)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        zone::ServiceKind::Headless
    } else {
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .fold(Vec::new(), |mut all, ip| {
                if !all.contains(&ip) {
                    all.push(ip);
                }
                all
            });
        if ips.is_empty() {
            return None;
        }
        zone::ServiceKind::ClusterIp(ips)
    };
    Some(zone::Service {
        namespace: s.metadata.namespace.clone()?,
        name: s.metadata.name.clone()?,
        kind,
        ports: spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect(),
    })
}

/// The ready addresses of an Endpoints object.
pub fn endpoints(e: &core::Endpoints) -> zone::Endpoints {
    zone::Endpoints {
        namespace: e.metadata.namespace.clone().unwrap_or_default(),
        name: e.metadata.name.clone().unwrap_or_default(),
        subsets: e
            .subsets
            .iter()
            .flatten()
            .map(|s| zone::Subset {
                addresses: s
                    .addresses
                    .iter()
                    .flatten()
                    .filter_map(|a| {
                        Some(zone::Address {
                            ip: a.ip.parse().ok()?,
                            hostname: a.hostname.clone().filter(|h| !h.is_empty()),
                        })
                    })
                    .collect(),
                ports: s
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| port(p.name.as_deref(), p.protocol.as_deref(), p.port))
                    .collect(),
            })
            .collect(),
    }
}

pub fn pod(p: &core::Pod) -> zone::Pod {
    let status = p.status.as_ref();
    zone::Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        ips: status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.as_deref()?.parse().ok())
            .chain(status.and_then(|s| s.pod_ip.as_deref()?.parse().ok()))
            .collect(),
    }
}

fn port(name: Option<&str>, protocol: Option<&str>, number: i32) -> Option<zone::Port> {
    Some(zone::Port {
        name: name.unwrap_or_default().to_owned(),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(number).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid object")
    }

    #[test]
    fn kubernetes_objects_become_the_zones_inputs() {
        let web: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                     "ports": [{"name": "http", "port": 80}, {"port": 8080, "protocol": "UDP"}]},
        }));
        let web = service(&web).expect("a service");
        assert_eq!(web.name, "web");
        match &web.kind {
            zone::ServiceKind::ClusterIp(ips) => assert_eq!(
                ips,
                &[
                    "10.96.0.20".parse::<IpAddr>().expect("IP"),
                    "fd00::20".parse().expect("IP")
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            web.ports,
            [
                zone::Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80
                },
                zone::Port {
                    name: String::new(),
                    protocol: "udp".into(),
                    port: 8080
                },
            ]
        );
        let headless: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None"},
        }));
        assert!(matches!(
            service(&headless).map(|s| s.kind),
            Some(zone::ServiceKind::Headless)
        ));
        let external: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        }));
        assert!(matches!(
            service(&external).map(|s| s.kind),
            Some(zone::ServiceKind::ExternalName(n)) if n == "example.org"
        ));
        // A Service the API server has not given an IP yet has no name to serve.
        let pending: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "new", "namespace": "default"}, "spec": {},
        }));
        assert!(service(&pending).is_none());

        let eps: core::Endpoints = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.5", "hostname": "db-0"}, {"ip": "10.244.2.6"}],
                "notReadyAddresses": [{"ip": "10.244.3.7"}],
                "ports": [{"name": "pg", "port": 5432}],
            }],
        }));
        let eps = endpoints(&eps);
        let addresses: Vec<(String, Option<String>)> = eps.subsets[0]
            .addresses
            .iter()
            .map(|a| (a.ip.to_string(), a.hostname.clone()))
            .collect();
        assert_eq!(
            addresses,
            [
                ("10.244.1.5".into(), Some("db-0".into())),
                ("10.244.2.6".into(), None)
            ],
            "ready addresses only"
        );

        let p: core::Pod = from_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
        }));
        let mut ips = pod(&p).ips;
        ips.dedup();
        assert_eq!(ips, ["10.244.1.5".parse::<IpAddr>().expect("IP")]);
    }
}
