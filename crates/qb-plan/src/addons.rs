//! The add-ons qb runs in every cluster, as Kubernetes objects rendered per cluster from its
//! settings and its bundle. The controller applies them with server-side apply (so applying
//! again puts back what drifted or was deleted) and judges each add-on's health by its
//! Deployment.
//!
//! - `dns`: qb's cluster DNS (`qb-dns`), two replicas behind the `kube-dns` Service on the
//!   cluster DNS address every kubelet gives its pods.
//!
//! An add-on's image travels in the bundle as the artifact `image-<name>`, which every node
//! imports as `qb.local/<name>:<artifact version>`.

use serde_json::{Value, json};

use crate::render::{CLUSTER_DOMAIN, ClusterInput, cluster_dns_ip};

/// The label on every object qb applies for an add-on, with the add-on's name.
pub const ADDON_LABEL: &str = "qb.io/addon";
/// The namespace add-ons run in.
pub const NAMESPACE: &str = "kube-system";
/// The DNS add-on's name, and its image's.
pub const DNS: &str = "qb-dns";
/// Where the DNS server answers its probes.
const DNS_HEALTH_PORT: u16 = 8080;

/// One add-on of a cluster: what to apply, and the Deployment whose readiness is its health.
#[derive(Clone, Debug, PartialEq)]
pub struct Addon {
    pub name: &'static str,
    /// The version of its image.
    pub version: String,
    /// In the order to apply them.
    pub objects: Vec<Object>,
    /// `(namespace, name)` of its Deployment.
    pub deployment: (String, String),
}

/// A Kubernetes object and the API path that server-side apply sends it to.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub path: String,
    pub manifest: Value,
}

/// An add-on the cluster cannot run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub name: &'static str,
    pub reason: String,
}

/// The artifact that carries add-on `name`'s image.
pub fn image_artifact(name: &str) -> String {
    format!("{}{name}", qb_api::IMAGE_PREFIX)
}

/// The add-ons of `cluster`: each rendered, or why it cannot be.
pub fn render(cluster: &ClusterInput) -> Vec<Result<Addon, Unavailable>> {
    vec![dns(cluster)]
}

fn dns(cluster: &ClusterInput) -> Result<Addon, Unavailable> {
    let artifact = image_artifact(DNS);
    let version = cluster
        .bundle
        .artifacts
        .iter()
        .find(|a| a.name == artifact)
        .map(|a| a.version.clone())
        .ok_or_else(|| Unavailable {
            name: DNS,
            reason: format!("the cluster's bundle has no {artifact}"),
        })?;
    let image = format!("qb.local/{DNS}:{version}");
    let labels = json!({ ADDON_LABEL: DNS, "app.kubernetes.io/managed-by": "qb" });
    let selector = json!({ "app.kubernetes.io/name": DNS });
    let metadata = |name: &str, namespaced: bool| {
        let mut m = json!({"name": name, "labels": labels});
        if namespaced {
            m["namespace"] = json!(NAMESPACE);
        }
        m
    };
    let ns = format!("/api/v1/namespaces/{NAMESPACE}");
    const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
    let role = format!("qb:{DNS}");
    let objects = vec![
        Object {
            path: format!("{ns}/serviceaccounts/{DNS}"),
            manifest: json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": metadata(DNS, true),
            }),
        },
        Object {
            path: format!("{RBAC}/clusterroles/{role}"),
            manifest: json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": metadata(&role, false),
                "rules": [{
                    "apiGroups": [""],
                    "resources": ["services", "endpoints", "pods"],
                    "verbs": ["get", "list", "watch"],
                }],
            }),
        },
        Object {
            path: format!("{RBAC}/clusterrolebindings/{role}"),
            manifest: json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": metadata(&role, false),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": DNS, "namespace": NAMESPACE}],
            }),
        },
        // Named as every cluster's DNS Service is, which tools look for.
        Object {
            path: format!("{ns}/services/kube-dns"),
            manifest: json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": metadata("kube-dns", true),
                "spec": {
                    "clusterIP": cluster_dns_ip(&cluster.service_cidr).to_string(),
                    "selector": selector,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            }),
        },
        Object {
            path: format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DNS}"),
            manifest: json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": metadata(DNS, true),
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": selector},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                    "template": {
                        "metadata": {"labels": {"app.kubernetes.io/name": DNS, ADDON_LABEL: DNS}},
                        "spec": {
                            "serviceAccountName": DNS,
                            "priorityClassName": "system-cluster-critical",
                            // Other names go to the host's resolvers.
                            "dnsPolicy": "Default",
                            // On different hosts when there are several.
                            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "labelSelector": {"matchLabels": selector},
                                    "topologyKey": "kubernetes.io/hostname",
                                },
                            }]}},
                            // Also on masters that only take what tolerates them.
                            "tolerations": [
                                {"key": "CriticalAddonsOnly", "operator": "Exists"},
                                {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
                            ],
                            "containers": [{
                                "name": "dns",
                                "image": image,
                                // Every node imported it from the bundle; there is no registry.
                                "imagePullPolicy": "Never",
                                "args": [
                                    "--domain", CLUSTER_DOMAIN,
                                    "--listen", "0.0.0.0:53",
                                    "--health", format!("0.0.0.0:{DNS_HEALTH_PORT}"),
                                    "--reverse", cluster.service_cidr.to_string(),
                                    "--reverse", cluster.pod_cidr.to_string(),
                                ],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "health", "containerPort": DNS_HEALTH_PORT, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": DNS_HEALTH_PORT},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", "port": DNS_HEALTH_PORT},
                                    "initialDelaySeconds": 10,
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "20Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                },
                            }],
                        },
                    },
                },
            }),
        },
    ];
    Ok(Addon {
        name: DNS,
        version,
        objects,
        deployment: (NAMESPACE.to_owned(), DNS.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use expect_test::expect_file;

    use super::*;
    use crate::render::fixtures::{bundle, cluster, full_bundle};

    #[test]
    fn the_dns_addon_of_a_cluster_whose_bundle_has_its_image() {
        let mut with_image = full_bundle("1.20.2");
        with_image
            .artifacts
            .extend(bundle("1.20.2", &["image-qb-dns"]).artifacts);
        let cluster = cluster(with_image);
        let addons = render(&cluster);
        let [Ok(dns)] = addons.as_slice() else {
            panic!("{addons:?}");
        };
        assert_eq!((dns.name, dns.version.as_str()), ("qb-dns", "1.0.0"));
        assert_eq!(dns.deployment, ("kube-system".into(), "qb-dns".into()));
        // Every object is labelled as the add-on's, and its path is its own.
        for object in &dns.objects {
            let m = &object.manifest;
            assert_eq!(m["metadata"]["labels"][ADDON_LABEL], "qb-dns", "{m}");
            let name = m["metadata"]["name"].as_str().expect("a name");
            assert!(
                object.path.ends_with(&format!("/{name}")),
                "{}",
                object.path
            );
        }
        let text: String = dns
            .objects
            .iter()
            .map(|o| {
                format!(
                    "PATCH {}\n{}\n",
                    o.path,
                    serde_json::to_string_pretty(&o.manifest).expect("JSON")
                )
            })
            .collect();
        // The Service is on the address kubelets give pods; the image is the bundle's.
        assert!(text.contains("\"clusterIP\": \"10.96.0.10\""), "{text}");
        assert!(
            text.contains("\"image\": \"qb.local/qb-dns:1.0.0\""),
            "{text}"
        );
        expect_file!["snapshots/addons_dns.txt"].assert_eq(&text);
    }

    #[test]
    fn a_bundle_without_the_image_says_so() {
        let cluster = cluster(full_bundle("1.20.2"));
        assert_eq!(
            render(&cluster),
            [Err(Unavailable {
                name: "qb-dns",
                reason: "the cluster's bundle has no image-qb-dns".into()
            })]
        );
    }
}
