//! Keeping the routes and certificates current: Ingresses, IngressClasses, Services, Endpoints
//! and TLS Secrets watched through the Kubernetes API; every change builds a new routing table
//! and certificate set. While the API server is unreachable the proxy keeps serving from the
//! last state it had.
//!
//! One replica (the ready one whose pod name sorts first) writes each served Ingress's status:
//! the addresses of the nodes where a replica is ready.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use qb_addon_kit::reflect;

use crate::proxy::SharedRoutes;
use crate::routes::Routes;
use crate::tls::{CertResolver, Certificates};

/// Changes that come together (a rollout) make one rebuild.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the status is looked at again even when nothing changed (a write that failed).
const RESYNC: Duration = Duration::from_secs(30);

/// Where this replica runs and how its siblings are found.
#[derive(Clone, Debug)]
pub struct Replica {
    pub namespace: String,
    pub pod: String,
    /// The label selector of the replicas' pods.
    pub selector: String,
}

/// Watches the cluster through `client`, keeping `routes` and `certificates` current; `ready`
/// turns true once the first full listing is in. Runs until the process ends.
pub async fn run(
    client: Client,
    replica: Replica,
    routes: SharedRoutes,
    certificates: Arc<CertResolver>,
    ready: Arc<AtomicBool>,
) {
    let (changed, mut wake) = tokio::sync::watch::channel(());
    let changed = Arc::new(changed);
    let all = watcher::Config::default;
    let ingresses = reflect::<Ingress>(Api::all(client.clone()), all(), changed.clone());
    let classes = reflect::<IngressClass>(Api::all(client.clone()), all(), changed.clone());
    let services = reflect::<Service>(Api::all(client.clone()), all(), changed.clone());
    let endpoints = reflect::<Endpoints>(Api::all(client.clone()), all(), changed.clone());
    let secrets = reflect::<Secret>(
        Api::all(client.clone()),
        all().fields("type=kubernetes.io/tls"),
        changed.clone(),
    );
    let replicas = reflect::<Pod>(
        Api::namespaced(client.clone(), &replica.namespace),
        all().labels(&replica.selector),
        changed.clone(),
    );
    for ready in [
        ingresses.wait_until_ready().await,
        classes.wait_until_ready().await,
        services.wait_until_ready().await,
        endpoints.wait_until_ready().await,
        secrets.wait_until_ready().await,
        replicas.wait_until_ready().await,
    ] {
        // A dropped writer means its task ended.
        if ready.is_err() {
            return;
        }
    }
    let (status, mut to_write) =
        tokio::sync::watch::channel::<Option<(Vec<String>, BTreeSet<String>)>>(None);
    let writer_client = client.clone();
    let writer_ingresses = ingresses.clone();
    tokio::spawn(async move {
        while to_write.changed().await.is_ok() {
            let latest = to_write.borrow_and_update().clone();
            if let Some((served, addresses)) = latest {
                write_status(&writer_client, &writer_ingresses, &served, &addresses).await;
            }
        }
    });
    let mut reported = String::new();
    loop {
        let table = Routes::build(
            &ingresses.state(),
            &classes.state(),
            &services.state(),
            &endpoints.state(),
        );
        let (certs, problems) = Certificates::build(&table.tls, |r| {
            secrets.get(&ObjectRef::new(&r.name).within(&r.namespace))
        });
        // Said once per change, not on every rebuild.
        let report = format!("{:?} {problems:?}", table.ingresses);
        if report != reported {
            tracing::info!(ingresses = ?table.ingresses, "routes changed");
            for (secret, why) in &problems {
                tracing::warn!(secret = %format!("{}/{}", secret.namespace, secret.name), %why, "no certificate from this Secret; its hosts get the default one");
            }
            reported = report;
        }
        let served: Vec<String> = table.ingresses.clone();
        routes.set(table);
        certificates.set(certs);
        ready.store(true, Ordering::Release);
        // Written apart, so a slow API server never holds back the next table.
        if let Some(addresses) = status_addresses(&replica, &replicas) {
            status.send_replace(Some((served, addresses)));
        }
        if let Ok(Err(_)) = tokio::time::timeout(RESYNC, wake.changed()).await {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        wake.borrow_and_update();
    }
}

/// The node addresses of the ready replicas, when this replica is the one that writes them.
fn status_addresses(me: &Replica, replicas: &Store<Pod>) -> Option<BTreeSet<String>> {
    let ready: Vec<Arc<Pod>> = replicas
        .state()
        .into_iter()
        .filter(|p| {
            let status = p.status.as_ref();
            status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let writer = ready
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .min()?;
    if writer != me.pod {
        return None;
    }
    Some(
        ready
            .iter()
            .filter_map(|p| p.status.as_ref()?.host_ip.clone())
            .collect(),
    )
}

/// Sets `status.loadBalancer.ingress` of each served Ingress whose addresses differ.
async fn write_status(
    client: &Client,
    ingresses: &Store<Ingress>,
    served: &[String],
    addresses: &BTreeSet<String>,
) {
    for key in served {
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        let Some(ingress) = ingresses.get(&ObjectRef::new(name).within(namespace)) else {
            continue;
        };
        let current: BTreeSet<String> = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        if &current == addresses {
            continue;
        }
        let status: Vec<serde_json::Value> = addresses
            .iter()
            .map(|ip| serde_json::json!({ "ip": ip }))
            .collect();
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": status } } });
        let api: Api<Ingress> = Api::namespaced(client.clone(), namespace);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(ingress = %key, addresses = ?addresses, "status written"),
            Err(e) => {
                tracing::warn!(ingress = %key, error = %e, "writing the status failed; trying again later")
            }
        }
    }
}
