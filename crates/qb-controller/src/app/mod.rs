//! The controller's operations, between the HTTP handlers and the store: [`AppState`] and its
//! methods. A handler extracts and parses its request, checks the caller's role with
//! [`Caller::require`], makes one call here and renders what comes back; an operation takes the
//! authenticated [`Caller`] and parsed values and returns a typed result or the error to answer
//! with, and knows nothing of HTTP, so it is tested without a router.
//!
//! Here live the rules beyond the records' own: the defaults and bounds of what is asked for, a
//! minted token never outliving the token that asks for it, a node's live agent told what
//! became of it, and agents' live state laid over the stored nodes. The store applies the rules
//! of the records and writes their events.

mod access;
mod agents;
mod alerts;
mod bundles;
mod clusters;
mod nodes;
mod notifications;

#[cfg(test)]
mod fixture;

use std::sync::Arc;

use qb_api::{Event, Node, Page, PageParams};
use qb_store::{EventFilter, Store};

pub use access::{OpenedSession, SessionLogin, mint_token};
pub use agents::{AgentPackageFile, AgentUpgradeChange};
pub use bundles::ImportedBundle;

use crate::ApiError;
use crate::agents::Agents;
use crate::auth::{Caller, TokenUse};
use crate::kubeconfig::PublicEndpoint;

/// What every operation shares; also the router's state.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The cluster engine; `engine.wake` wakes it when there is work.
    pub engine: Arc<crate::engine::Engine>,
    pub token_use: TokenUse,
    /// Connected agents.
    pub agents: Arc<Agents>,
    /// What agent packages carry; `None` when the controller has no agent binary to ship.
    pub packaging: Option<Arc<crate::agents::packages::Packaging>>,
    /// How users reach the API, written into kubeconfigs; `None` when the controller does not
    /// know (then it writes no kubeconfigs).
    pub public: Option<Arc<PublicEndpoint>>,
    /// The Kubernetes API proxy's connections to the clusters.
    pub kube_proxy: Arc<crate::proxy::KubeProxy>,
    /// Live updates for the web UI.
    pub changes: Arc<crate::live::Changes>,
    /// Failed password logins, per user.
    pub logins: Arc<crate::passwords::Throttle>,
    /// What sends notifications (and knows whether e-mail can be sent).
    pub notifier: Arc<crate::notify::Notifier>,
}

impl AppState {
    pub fn new(engine: Arc<crate::engine::Engine>) -> Self {
        let kube_proxy = Arc::new(crate::proxy::KubeProxy::new(
            engine.store.clone(),
            engine.agents.clone(),
        ));
        Self {
            store: engine.store.clone(),
            agents: engine.agents.clone(),
            engine,
            token_use: TokenUse::default(),
            packaging: None,
            public: None,
            kube_proxy,
            changes: Arc::default(),
            logins: Arc::default(),
            notifier: Arc::new(
                crate::notify::Notifier::new(None)
                    .unwrap_or_else(|e| panic!("an HTTP client for webhooks: {e:#}")),
            ),
        }
    }

    /// A node with its agent's live state filled in: the store knows only what was last
    /// written, the registry of agents whether the agent is there now.
    async fn live(&self, node: Node) -> Node {
        let mut nodes = [node];
        self.agents.overlay_all(&mut nodes).await;
        let [node] = nodes;
        node
    }

    async fn live_all(&self, mut nodes: Vec<Node>) -> Vec<Node> {
        self.agents.overlay_all(&mut nodes).await;
        nodes
    }

    /// A page of the tenant's audit trail; `page.after` is the `next` cursor of the page
    /// before.
    pub async fn list_events(
        &self,
        caller: &Caller,
        filter: &EventFilter,
        page: &PageParams,
    ) -> Result<Page<Event>, ApiError> {
        let limit = page.limit()?;
        let after = page
            .after
            .as_deref()
            .map(|a| {
                // What `next` holds: an event's number, 1 to 18 digits (as the document says).
                let digits = (1..=18).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_digit());
                a.parse::<i64>().ok().filter(|_| digits).ok_or_else(|| {
                    ApiError::invalid(format!("invalid cursor {}", qb_api::quote(a)))
                })
            })
            .transpose()?;
        Ok(self
            .store
            .list_events(caller.tenant(), filter, after, limit)
            .await?)
    }
}

/// `asked`, or `default` when nothing was asked; refused outside `1..=max`, naming `field`.
fn within(field: &str, asked: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let value = asked.unwrap_or(default);
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be between 1 and {max}"
        )))
    }
}

/// `hours` from now.
fn hours_from_now(hours: u32) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::hours(i64::from(hours))
}

#[cfg(test)]
mod tests {
    use qb_api::ProblemCode;

    use super::fixture::Fixture;
    use super::*;

    #[test]
    fn bounds_default_and_refuse_with_the_field_and_its_range() {
        assert_eq!(within("n", None, 24, 720).unwrap(), 24);
        assert_eq!(within("n", Some(720), 24, 720).unwrap(), 720);
        for asked in [0, 721] {
            let refused = within("expires_in_hours", Some(asked), 24, 720).unwrap_err();
            assert_eq!(refused.0.code, ProblemCode::InvalidInput);
            assert_eq!(
                refused.0.detail,
                "expires_in_hours must be between 1 and 720"
            );
        }
    }

    #[tokio::test]
    async fn events_pages_refuse_a_cursor_that_is_no_event_id() {
        let f = Fixture::new().await;
        let page = PageParams {
            limit: None,
            after: Some("x".to_owned()),
        };
        let refused = f
            .app
            .list_events(&f.admin, &EventFilter::default(), &page)
            .await
            .unwrap_err();
        assert_eq!(refused.0.detail, "invalid cursor \"x\"");
        let events = f
            .app
            .list_events(&f.admin, &EventFilter::default(), &PageParams::default())
            .await
            .unwrap();
        assert!(!events.items.is_empty(), "the fixture's own changes");
    }
}
