//! The add-ons qb runs in every cluster, as Kubernetes objects rendered per cluster from its
//! settings and its bundle. The controller applies them with server-side apply (so applying
//! again puts back what drifted or was deleted) and judges each add-on's health by its
//! workload (a Deployment or a DaemonSet).
//!
//! - `qb-dns`: qb's cluster DNS, two replicas behind the `kube-dns` Service on the cluster DNS
//!   address every kubelet gives its pods.
//! - `qb-ingress`: qb's ingress, on the network of every node not labelled
//!   `qb.io/ingress=false`, serving Ingresses of the IngressClass `qb` (the cluster's default,
//!   unless the user sets its `is-default-class` annotation otherwise) on the nodes' ports 80
//!   and 443.
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
/// The ingress add-on's name, and its image's.
pub const INGRESS: &str = "qb-ingress";
/// The node label that keeps the ingress off a node when `false`.
pub const INGRESS_NODE_LABEL: &str = "qb.io/ingress";
/// The IngressClass of the ingress add-on.
const INGRESS_CLASS_PATH: &str = "/apis/networking.k8s.io/v1/ingressclasses/qb";
/// Where the DNS server answers its probes.
const DNS_HEALTH_PORT: u16 = 8080;
/// Where the ingress answers its probes, on its node's network.
const INGRESS_HEALTH_PORT: u16 = 10254;

/// One add-on of a cluster: what to apply, and the workload whose readiness is its health.
#[derive(Clone, Debug, PartialEq)]
pub struct Addon {
    pub name: &'static str,
    /// The version of its image.
    pub version: String,
    /// In the order to apply them.
    pub objects: Vec<Object>,
    pub workload: Workload,
    /// Annotations qb sets when it creates an object and leaves to the user afterwards, as
    /// `(object path, annotation)`.
    pub user_annotations: Vec<(String, &'static str)>,
}

impl Addon {
    /// Its objects as `(path, manifest)` to apply, each user annotation at the value it has
    /// in `live` (the objects as they are, by path) where it has one there.
    pub fn objects_over(
        &self,
        live: &std::collections::HashMap<String, Value>,
    ) -> Vec<(String, Value)> {
        self.objects
            .iter()
            .map(|o| {
                let mut manifest = o.manifest.clone();
                for (path, key) in &self.user_annotations {
                    if *path == o.path
                        && let Some(value) = live
                            .get(path)
                            .and_then(|l| l["metadata"]["annotations"][*key].as_str())
                    {
                        manifest["metadata"]["annotations"][*key] = json!(value);
                    }
                }
                (o.path.clone(), manifest)
            })
            .collect()
    }
}

/// The Deployment or DaemonSet that runs an add-on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
}

impl Workload {
    fn new(kind: WorkloadKind, name: &str) -> Self {
        Self {
            kind,
            namespace: NAMESPACE.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Its path in the Kubernetes API.
    pub fn path(&self) -> String {
        let plural = match self.kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::DaemonSet => "daemonsets",
        };
        format!(
            "/apis/apps/v1/namespaces/{}/{plural}/{}",
            self.namespace, self.name
        )
    }
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

/// The kinds of object add-ons are made of: where to list each (across namespaces), and
/// whether its objects live in a namespace. Objects of these kinds that carry an add-on's
/// labels but are not among what the add-ons render are strays, deleted.
pub const KINDS: &[(&str, bool)] = &[
    ("/api/v1/serviceaccounts", true),
    ("/api/v1/services", true),
    ("/apis/apps/v1/deployments", true),
    ("/apis/apps/v1/daemonsets", true),
    (RBAC_CLUSTER_ROLES, false),
    (RBAC_CLUSTER_ROLE_BINDINGS, false),
    ("/apis/networking.k8s.io/v1/ingressclasses", false),
];
const RBAC_CLUSTER_ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
const RBAC_CLUSTER_ROLE_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";

/// The label selector of every object qb applied for an add-on (URL-encoded).
pub const SELECTOR: &str = "app.kubernetes.io%2Fmanaged-by%3Dqb%2Cqb.io%2Faddon";

/// The paths of the objects in `listed` (a list answer of the kind listed at `collection`) that
/// belong to no add-on of `rendered` (but to none `kept` either: add-ons that could not be
/// rendered keep what they had).
pub fn strays(
    collection: &str,
    namespaced: bool,
    listed: &Value,
    rendered: &[Addon],
    kept: &[&str],
) -> Vec<String> {
    let wanted: std::collections::HashSet<&str> = rendered
        .iter()
        .flat_map(|a| a.objects.iter().map(|o| o.path.as_str()))
        .collect();
    listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let metadata = &item["metadata"];
            let addon = metadata["labels"][ADDON_LABEL].as_str()?;
            if kept.contains(&addon) {
                return None;
            }
            let name = metadata["name"].as_str()?;
            // Add-ons run in their namespace alone: a copy elsewhere is someone else's.
            if namespaced && metadata["namespace"].as_str() != Some(NAMESPACE) {
                return None;
            }
            let path = match (namespaced, collection.rsplit_once('/')) {
                (true, Some((group, plural))) => format!(
                    "{group}/namespaces/{}/{plural}/{name}",
                    metadata["namespace"].as_str()?
                ),
                _ => format!("{collection}/{name}"),
            };
            (!wanted.contains(path.as_str())).then_some(path)
        })
        .collect()
}

/// The artifact that carries add-on `name`'s image.
pub fn image_artifact(name: &str) -> String {
    format!("{}{name}", qb_api::IMAGE_PREFIX)
}

/// The add-ons of `cluster`: each rendered, or why it cannot be.
pub fn render(cluster: &ClusterInput) -> Vec<Result<Addon, Unavailable>> {
    vec![dns(cluster), ingress(cluster)]
}

/// What every add-on's objects share: its name, image and labels.
struct Parts {
    name: &'static str,
    version: String,
    image: String,
}

impl Parts {
    /// The add-on `name` with its image from the cluster's bundle.
    fn of(cluster: &ClusterInput, name: &'static str) -> Result<Parts, Unavailable> {
        let artifact = image_artifact(name);
        let version = cluster
            .bundle
            .artifacts
            .iter()
            .find(|a| a.name == artifact)
            .map(|a| a.version.clone())
            .ok_or_else(|| Unavailable {
                name,
                reason: format!("the cluster's bundle has no {artifact}"),
            })?;
        Ok(Parts {
            name,
            image: format!("qb.local/{name}:{version}"),
            version,
        })
    }

    fn metadata(&self, name: &str, namespaced: bool) -> Value {
        let mut m = json!({
            "name": name,
            "labels": { ADDON_LABEL: self.name, "app.kubernetes.io/managed-by": "qb" },
        });
        if namespaced {
            m["namespace"] = json!(NAMESPACE);
        }
        m
    }

    /// The selector of its pods.
    fn selector(&self) -> Value {
        json!({ "app.kubernetes.io/name": self.name })
    }

    fn pod_labels(&self) -> Value {
        json!({ "app.kubernetes.io/name": self.name, ADDON_LABEL: self.name })
    }

    /// Its service account, and a cluster role with `rules` bound to it.
    fn identity(&self, rules: Value) -> [Object; 3] {
        let role = format!("qb:{}", self.name);
        [
            Object {
                path: format!(
                    "/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{}",
                    self.name
                ),
                manifest: json!({
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": self.metadata(self.name, true),
                }),
            },
            Object {
                path: format!("{RBAC_CLUSTER_ROLES}/{role}"),
                manifest: json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": self.metadata(&role, false),
                    "rules": rules,
                }),
            },
            Object {
                path: format!("{RBAC_CLUSTER_ROLE_BINDINGS}/{role}"),
                manifest: json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": self.metadata(&role, false),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": NAMESPACE}],
                }),
            },
        ]
    }

    fn addon(self, objects: Vec<Object>, kind: WorkloadKind) -> Addon {
        Addon {
            workload: Workload::new(kind, self.name),
            name: self.name,
            version: self.version,
            objects,
            user_annotations: Vec::new(),
        }
    }
}

/// Probes of a server's `/ready` and `/healthz` on `port`.
fn probes(port: u16) -> (Value, Value) {
    (
        json!({"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 2}),
        json!({
            "httpGet": {"path": "/healthz", "port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 3,
        }),
    )
}

/// Tolerated by add-ons that also run on masters that only take what tolerates them.
fn master_tolerations() -> Value {
    json!([
        {"key": "CriticalAddonsOnly", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    ])
}

/// A container that binds ports below 1024 and nothing else.
fn binds_low_ports() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
    })
}

fn dns(cluster: &ClusterInput) -> Result<Addon, Unavailable> {
    let parts = Parts::of(cluster, DNS)?;
    let selector = parts.selector();
    let (readiness, liveness) = probes(DNS_HEALTH_PORT);
    let [account, role, binding] = parts.identity(json!([{
        "apiGroups": [""],
        "resources": ["services", "endpoints", "pods"],
        "verbs": ["get", "list", "watch"],
    }]));
    let objects = vec![
        account,
        role,
        binding,
        // Named as every cluster's DNS Service is, which tools look for.
        Object {
            path: format!("/api/v1/namespaces/{NAMESPACE}/services/kube-dns"),
            manifest: json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": parts.metadata("kube-dns", true),
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
            path: Workload::new(WorkloadKind::Deployment, DNS).path(),
            manifest: json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": parts.metadata(DNS, true),
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": selector},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                    "template": {
                        "metadata": {"labels": parts.pod_labels()},
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
                            "tolerations": master_tolerations(),
                            "containers": [{
                                "name": "dns",
                                "image": parts.image,
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
                                "readinessProbe": readiness,
                                "livenessProbe": liveness,
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "20Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": binds_low_ports(),
                            }],
                        },
                    },
                },
            }),
        },
    ];
    Ok(parts.addon(objects, WorkloadKind::Deployment))
}

fn ingress(cluster: &ClusterInput) -> Result<Addon, Unavailable> {
    let parts = Parts::of(cluster, INGRESS)?;
    let (readiness, liveness) = probes(INGRESS_HEALTH_PORT);
    let [account, role, binding] = parts.identity(json!([
        {
            "apiGroups": [""],
            "resources": ["services", "endpoints", "secrets", "pods"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses", "ingressclasses"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses/status"],
            "verbs": ["update", "patch"],
        },
    ]));
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let objects = vec![
        account,
        role,
        binding,
        Object {
            path: INGRESS_CLASS_PATH.to_owned(),
            manifest: json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {
                    "name": "qb",
                    "labels": parts.metadata("qb", false)["labels"],
                    "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
                },
                "spec": {"controller": "qb.io/ingress"},
            }),
        },
        Object {
            path: Workload::new(WorkloadKind::DaemonSet, INGRESS).path(),
            manifest: json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": parts.metadata(INGRESS, true),
                "spec": {
                    "selector": {"matchLabels": parts.selector()},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                    "template": {
                        "metadata": {"labels": parts.pod_labels()},
                        "spec": {
                            "serviceAccountName": INGRESS,
                            "priorityClassName": "system-cluster-critical",
                            // Ports 80 and 443 of the node itself.
                            "hostNetwork": true,
                            "dnsPolicy": "ClusterFirstWithHostNet",
                            // Open connections get this long to finish (`--drain-seconds`).
                            "terminationGracePeriodSeconds": 15,
                            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": [
                                    {"key": INGRESS_NODE_LABEL, "operator": "NotIn", "values": ["false"]},
                                ]}],
                            }}},
                            "tolerations": master_tolerations(),
                            "containers": [{
                                "name": "ingress",
                                "image": parts.image,
                                "imagePullPolicy": "Never",
                                "args": [
                                    "--http", "0.0.0.0:80",
                                    "--https", "0.0.0.0:443",
                                    "--health", format!("0.0.0.0:{INGRESS_HEALTH_PORT}"),
                                    "--drain-seconds", "10",
                                ],
                                "env": [
                                    {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                                ],
                                "ports": [
                                    {"name": "http", "containerPort": 80, "protocol": "TCP"},
                                    {"name": "https", "containerPort": 443, "protocol": "TCP"},
                                    {"name": "health", "containerPort": INGRESS_HEALTH_PORT, "protocol": "TCP"},
                                ],
                                "readinessProbe": readiness,
                                "livenessProbe": liveness,
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "32Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                                "securityContext": binds_low_ports(),
                            }],
                        },
                    },
                },
            }),
        },
    ];
    let mut addon = parts.addon(objects, WorkloadKind::DaemonSet);
    // The cluster's default class unless the user says otherwise.
    addon.user_annotations.push((
        INGRESS_CLASS_PATH.to_owned(),
        "ingressclass.kubernetes.io/is-default-class",
    ));
    Ok(addon)
}

#[cfg(test)]
mod tests {
    use expect_test::expect_file;

    use super::*;
    use crate::render::fixtures::{bundle, cluster, full_bundle};

    fn snapshot(addon: &Addon) -> String {
        addon
            .objects
            .iter()
            .map(|o| {
                format!(
                    "PATCH {}\n{}\n",
                    o.path,
                    serde_json::to_string_pretty(&o.manifest).expect("JSON")
                )
            })
            .collect()
    }

    #[test]
    fn the_addons_of_a_cluster_whose_bundle_has_their_images() {
        let mut with_images = full_bundle("1.20.2");
        with_images
            .artifacts
            .extend(bundle("1.20.2", &["image-qb-dns", "image-qb-ingress"]).artifacts);
        let cluster = cluster(with_images);
        let addons = render(&cluster);
        let [Ok(dns), Ok(ingress)] = addons.as_slice() else {
            panic!("{addons:?}");
        };
        assert_eq!((dns.name, dns.version.as_str()), ("qb-dns", "1.0.0"));
        assert_eq!(
            dns.workload.path(),
            "/apis/apps/v1/namespaces/kube-system/deployments/qb-dns"
        );
        assert_eq!(
            (ingress.name, ingress.workload.path().as_str()),
            (
                "qb-ingress",
                "/apis/apps/v1/namespaces/kube-system/daemonsets/qb-ingress"
            )
        );
        // Every object is labelled as its add-on's, and its path is its own.
        for addon in [dns, ingress] {
            for object in &addon.objects {
                let m = &object.manifest;
                assert_eq!(m["metadata"]["labels"][ADDON_LABEL], addon.name, "{m}");
                let name = m["metadata"]["name"].as_str().expect("a name");
                assert!(
                    object.path.ends_with(&format!("/{name}")),
                    "{}",
                    object.path
                );
            }
        }
        let dns = snapshot(dns);
        // The Service is on the address kubelets give pods; the image is the bundle's.
        assert!(dns.contains("\"clusterIP\": \"10.96.0.10\""), "{dns}");
        assert!(
            dns.contains("\"image\": \"qb.local/qb-dns:1.0.0\""),
            "{dns}"
        );
        expect_file!["snapshots/addons_dns.txt"].assert_eq(&dns);
        let ingress = snapshot(ingress);
        assert!(ingress.contains("\"hostNetwork\": true"), "{ingress}");
        expect_file!["snapshots/addons_ingress.txt"].assert_eq(&ingress);
    }

    #[test]
    fn objects_with_an_addons_labels_that_no_addon_renders_are_strays() {
        let mut with_images = full_bundle("1.20.2");
        with_images
            .artifacts
            .extend(bundle("1.20.2", &["image-qb-dns", "image-qb-ingress"]).artifacts);
        let rendered: Vec<Addon> = render(&cluster(with_images))
            .into_iter()
            .map(|a| a.expect("rendered"))
            .collect();
        let item = |namespace: Option<&str>, name: &str, addon: &str| {
            let mut metadata = json!({"name": name, "labels": {ADDON_LABEL: addon}});
            if let Some(namespace) = namespace {
                metadata["namespace"] = json!(namespace);
            }
            json!({ "metadata": metadata })
        };
        let accounts = json!({"items": [
            item(Some("kube-system"), "qb-dns", "qb-dns"),
            item(Some("kube-system"), "qb-dns-old", "qb-dns"),
            item(Some("default"), "qb-ingress", "qb-ingress"),
            item(Some("kube-system"), "qb-metrics", "qb-metrics"),
        ]});
        assert_eq!(
            strays(
                "/api/v1/serviceaccounts",
                true,
                &accounts,
                &rendered,
                &["qb-metrics"]
            ),
            ["/api/v1/namespaces/kube-system/serviceaccounts/qb-dns-old"],
            "the copy in default is not an add-on's"
        );
        let roles = json!({"items": [
            item(None, "qb:qb-ingress", "qb-ingress"),
            item(None, "qb:qb-gone", "qb-gone"),
        ]});
        assert_eq!(
            strays(RBAC_CLUSTER_ROLES, false, &roles, &rendered, &[]),
            ["/apis/rbac.authorization.k8s.io/v1/clusterroles/qb:qb-gone"]
        );
        // Every path an add-on renders is one its kind lists.
        for object in rendered.iter().flat_map(|a| &a.objects) {
            assert!(
                KINDS.iter().any(|(collection, namespaced)| {
                    let (group, plural) = collection.rsplit_once('/').expect("a path");
                    if *namespaced {
                        object.path.starts_with(&format!("{group}/namespaces/"))
                            && object.path.contains(&format!("/{plural}/"))
                    } else {
                        object.path.starts_with(&format!("{collection}/"))
                    }
                }),
                "{} is of no kind in KINDS",
                object.path
            );
        }
    }

    #[test]
    fn the_ingress_class_stays_default_unless_the_user_says_otherwise() {
        let mut with_images = full_bundle("1.20.2");
        with_images
            .artifacts
            .extend(bundle("1.20.2", &["image-qb-dns", "image-qb-ingress"]).artifacts);
        let addons = render(&cluster(with_images));
        let Some(Ok(ingress)) = addons.get(1) else {
            panic!("{addons:?}");
        };
        let default = |live: &std::collections::HashMap<String, Value>| {
            let objects = ingress.objects_over(live);
            let (_, class) = objects
                .iter()
                .find(|(path, _)| path == INGRESS_CLASS_PATH)
                .expect("the IngressClass");
            class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"].clone()
        };
        assert_eq!(default(&Default::default()), "true", "at creation");
        let user_said = [(
            INGRESS_CLASS_PATH.to_owned(),
            json!({"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": "false"}}}),
        )]
        .into();
        assert_eq!(default(&user_said), "false", "the user's word");
        let without = [(INGRESS_CLASS_PATH.to_owned(), json!({"metadata": {}}))].into();
        assert_eq!(default(&without), "true", "put back when removed");
    }

    #[test]
    fn a_bundle_without_the_images_says_so() {
        let cluster = cluster(full_bundle("1.20.2"));
        assert_eq!(
            render(&cluster),
            [
                Err(Unavailable {
                    name: "qb-dns",
                    reason: "the cluster's bundle has no image-qb-dns".into()
                }),
                Err(Unavailable {
                    name: "qb-ingress",
                    reason: "the cluster's bundle has no image-qb-ingress".into()
                })
            ]
        );
    }
}
