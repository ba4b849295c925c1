//! The REST operations the CLI calls, each declared once: its method and its path template as
//! the OpenAPI document writes it. A test of the controller checks every one against the
//! committed document, so the CLI cannot call a route the API does not have.
//!
//! Declared by hand rather than generated: progenitor reads OpenAPI 3.0 only, and utoipa writes
//! 3.1.

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// The method as HTTP writes it: `GET`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One operation: a method on a path template such as `/api/v1/clusters/{cluster}/attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub method: Method,
    pub template: &'static str,
}

impl Endpoint {
    const fn new(method: Method, template: &'static str) -> Self {
        Self { method, template }
    }

    /// The path's segments, each `{parameter}` replaced by the next of `values`. Nothing is
    /// percent-encoded here: the caller encodes each segment as one path segment, so a value
    /// such as `a/b` stays one segment.
    ///
    /// # Panics
    ///
    /// When `values` does not hold exactly one value per parameter: the caller named another
    /// endpoint than the one it fills.
    pub fn segments<'a>(&self, values: &[&'a str]) -> Vec<&'a str> {
        let mut values = values.iter();
        let segments = self
            .template
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| {
                if segment.starts_with('{') {
                    *values.next().unwrap_or_else(|| {
                        panic!("{} {}: too few values", self.method.as_str(), self.template)
                    })
                } else {
                    segment
                }
            })
            .collect();
        assert!(
            values.next().is_none(),
            "{} {}: too many values",
            self.method.as_str(),
            self.template
        );
        segments
    }
}

pub const AGENT_PACKAGE: Endpoint = Endpoint::new(Method::Get, "/api/v1/agent-packages/{format}");
pub const START_AGENT_UPGRADE: Endpoint = Endpoint::new(Method::Post, "/api/v1/agent-upgrade");
pub const GET_AGENT_UPGRADE: Endpoint = Endpoint::new(Method::Get, "/api/v1/agent-upgrade");
pub const PAUSE_AGENT_UPGRADE: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/agent-upgrade/pause");
pub const RESUME_AGENT_UPGRADE: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/agent-upgrade/resume");
pub const STOP_AGENT_UPGRADE: Endpoint = Endpoint::new(Method::Post, "/api/v1/agent-upgrade/stop");

pub const ARTIFACT_EXISTS: Endpoint = Endpoint::new(Method::Head, "/api/v1/artifacts/{sha256}");
pub const UPLOAD_ARTIFACT: Endpoint = Endpoint::new(Method::Put, "/api/v1/artifacts/{sha256}");

pub const LIST_BOOTSTRAP_TOKENS: Endpoint = Endpoint::new(Method::Get, "/api/v1/bootstrap-tokens");
pub const CREATE_BOOTSTRAP_TOKEN: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/bootstrap-tokens");
pub const REVOKE_BOOTSTRAP_TOKEN: Endpoint =
    Endpoint::new(Method::Delete, "/api/v1/bootstrap-tokens/{id}");

pub const LIST_BUNDLES: Endpoint = Endpoint::new(Method::Get, "/api/v1/bundles");
pub const IMPORT_BUNDLE: Endpoint = Endpoint::new(Method::Post, "/api/v1/bundles");
pub const GET_BUNDLE: Endpoint = Endpoint::new(Method::Get, "/api/v1/bundles/{version}");

pub const LIST_CLUSTERS: Endpoint = Endpoint::new(Method::Get, "/api/v1/clusters");
pub const CREATE_CLUSTER: Endpoint = Endpoint::new(Method::Post, "/api/v1/clusters");
pub const GET_CLUSTER: Endpoint = Endpoint::new(Method::Get, "/api/v1/clusters/{cluster}");
pub const UPDATE_CLUSTER: Endpoint = Endpoint::new(Method::Patch, "/api/v1/clusters/{cluster}");
pub const DELETE_CLUSTER: Endpoint = Endpoint::new(Method::Delete, "/api/v1/clusters/{cluster}");
pub const ATTACH_NODES: Endpoint = Endpoint::new(Method::Post, "/api/v1/clusters/{cluster}/attach");
pub const DETACH_NODES: Endpoint = Endpoint::new(Method::Post, "/api/v1/clusters/{cluster}/detach");
pub const LIST_SNAPSHOTS: Endpoint =
    Endpoint::new(Method::Get, "/api/v1/clusters/{cluster}/snapshots");
pub const TAKE_SNAPSHOT: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/clusters/{cluster}/snapshots");
pub const GET_SNAPSHOT: Endpoint = Endpoint::new(
    Method::Get,
    "/api/v1/clusters/{cluster}/snapshots/{snapshot}",
);
pub const CREATE_KUBECONFIG: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/clusters/{cluster}/kubeconfig");
pub const LATEST_PREFLIGHT: Endpoint =
    Endpoint::new(Method::Get, "/api/v1/clusters/{cluster}/preflight");
pub const RUN_PREFLIGHT: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/clusters/{cluster}/preflight");
pub const CLUSTER_HEALTH: Endpoint =
    Endpoint::new(Method::Get, "/api/v1/clusters/{cluster}/health");

pub const LIST_EVENTS: Endpoint = Endpoint::new(Method::Get, "/api/v1/events");

pub const LIST_NODES: Endpoint = Endpoint::new(Method::Get, "/api/v1/nodes");
pub const GET_NODE: Endpoint = Endpoint::new(Method::Get, "/api/v1/nodes/{node}");
pub const DELETE_NODE: Endpoint = Endpoint::new(Method::Delete, "/api/v1/nodes/{node}");
pub const AUTHORIZE_NODE: Endpoint = Endpoint::new(Method::Post, "/api/v1/nodes/{node}/authorize");
pub const DEAUTHORIZE_NODE: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/nodes/{node}/deauthorize");
pub const LABEL_NODE: Endpoint = Endpoint::new(Method::Post, "/api/v1/nodes/{node}/labels");
pub const PING_NODE: Endpoint = Endpoint::new(Method::Post, "/api/v1/nodes/{node}/ping");
pub const LIST_ALERTS: Endpoint = Endpoint::new(Method::Get, "/api/v1/alerts");
pub const LIST_SILENCES: Endpoint = Endpoint::new(Method::Get, "/api/v1/silences");
pub const CREATE_SILENCE: Endpoint = Endpoint::new(Method::Post, "/api/v1/silences");
pub const DELETE_SILENCE: Endpoint = Endpoint::new(Method::Delete, "/api/v1/silences/{id}");
pub const LIST_ALERT_RULES: Endpoint = Endpoint::new(Method::Get, "/api/v1/alert-rules");
pub const CREATE_ALERT_RULE: Endpoint = Endpoint::new(Method::Post, "/api/v1/alert-rules");
pub const DELETE_ALERT_RULE: Endpoint = Endpoint::new(Method::Delete, "/api/v1/alert-rules/{rule}");
pub const LIST_CHANNELS: Endpoint = Endpoint::new(Method::Get, "/api/v1/notification-channels");
pub const CREATE_CHANNEL: Endpoint = Endpoint::new(Method::Post, "/api/v1/notification-channels");
pub const DELETE_CHANNEL: Endpoint =
    Endpoint::new(Method::Delete, "/api/v1/notification-channels/{channel}");
pub const TEST_CHANNEL: Endpoint =
    Endpoint::new(Method::Post, "/api/v1/notification-channels/{channel}/test");
pub const LIST_DELIVERIES: Endpoint = Endpoint::new(Method::Get, "/api/v1/notification-deliveries");
pub const NODE_LOG: Endpoint = Endpoint::new(Method::Get, "/api/v1/nodes/{node}/logs/{service}");
pub const NODE_METRICS: Endpoint = Endpoint::new(Method::Get, "/api/v1/nodes/{node}/metrics");

pub const LIST_TOKENS: Endpoint = Endpoint::new(Method::Get, "/api/v1/tokens");
pub const CREATE_TOKEN: Endpoint = Endpoint::new(Method::Post, "/api/v1/tokens");
pub const REVOKE_TOKEN: Endpoint = Endpoint::new(Method::Delete, "/api/v1/tokens/{id}");

pub const LIST_USERS: Endpoint = Endpoint::new(Method::Get, "/api/v1/users");
pub const CREATE_USER: Endpoint = Endpoint::new(Method::Post, "/api/v1/users");
pub const SET_PASSWORD: Endpoint = Endpoint::new(Method::Put, "/api/v1/users/{user}/password");

pub const WHOAMI: Endpoint = Endpoint::new(Method::Get, "/api/v1/whoami");

/// Every endpoint above, for the test that holds them to the OpenAPI document.
pub const ALL: &[Endpoint] = &[
    AGENT_PACKAGE,
    START_AGENT_UPGRADE,
    GET_AGENT_UPGRADE,
    PAUSE_AGENT_UPGRADE,
    RESUME_AGENT_UPGRADE,
    STOP_AGENT_UPGRADE,
    ARTIFACT_EXISTS,
    UPLOAD_ARTIFACT,
    LIST_BOOTSTRAP_TOKENS,
    CREATE_BOOTSTRAP_TOKEN,
    REVOKE_BOOTSTRAP_TOKEN,
    LIST_BUNDLES,
    IMPORT_BUNDLE,
    GET_BUNDLE,
    LIST_CLUSTERS,
    CREATE_CLUSTER,
    GET_CLUSTER,
    UPDATE_CLUSTER,
    DELETE_CLUSTER,
    ATTACH_NODES,
    DETACH_NODES,
    CREATE_KUBECONFIG,
    LATEST_PREFLIGHT,
    RUN_PREFLIGHT,
    CLUSTER_HEALTH,
    LIST_EVENTS,
    LIST_NODES,
    GET_NODE,
    DELETE_NODE,
    AUTHORIZE_NODE,
    DEAUTHORIZE_NODE,
    LABEL_NODE,
    PING_NODE,
    NODE_METRICS,
    LIST_ALERTS,
    LIST_SILENCES,
    CREATE_SILENCE,
    DELETE_SILENCE,
    NODE_LOG,
    LIST_ALERT_RULES,
    CREATE_ALERT_RULE,
    DELETE_ALERT_RULE,
    LIST_CHANNELS,
    CREATE_CHANNEL,
    DELETE_CHANNEL,
    TEST_CHANNEL,
    LIST_DELIVERIES,
    LIST_TOKENS,
    CREATE_TOKEN,
    REVOKE_TOKEN,
    LIST_USERS,
    CREATE_USER,
    SET_PASSWORD,
    WHOAMI,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_api_paths_with_whole_segment_parameters() {
        for endpoint in ALL {
            let template = endpoint.template;
            let rest = template
                .strip_prefix(crate::API_PREFIX)
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or_else(|| panic!("{template}: not under {}/", crate::API_PREFIX));
            for segment in rest.split('/') {
                let parameter = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                let literal = !segment.contains(['{', '}']);
                assert!(
                    !segment.is_empty() && (literal || parameter.is_some_and(|p| !p.is_empty())),
                    "{template}: segment {segment:?}"
                );
            }
        }
    }

    #[test]
    fn each_endpoint_is_listed_once() {
        for (i, endpoint) in ALL.iter().enumerate() {
            assert!(!ALL[..i].contains(endpoint), "{endpoint:?} twice");
        }
    }

    #[test]
    fn values_fill_parameters_in_order_unencoded() {
        assert_eq!(
            ATTACH_NODES.segments(&["a/../b c"]),
            ["api", "v1", "clusters", "a/../b c", "attach"]
        );
        assert_eq!(WHOAMI.segments(&[]), ["api", "v1", "whoami"]);
        assert!(std::panic::catch_unwind(|| GET_NODE.segments(&[])).is_err());
        assert!(std::panic::catch_unwind(|| WHOAMI.segments(&["extra"])).is_err());
    }
}
