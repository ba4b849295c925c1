//! Nodes: listing them with their agents' live state, labels, and the lifecycle moves whose
//! news the node's agent must hear.

use std::time::Duration;

use qb_api::{
    ClusterId, LabelChange, MetricsRange, Node, NodeId, NodeMetrics, NodeState, Page, PageParams,
    PingResult, ProblemCode,
};
use qb_store::{Key, NodeFilter, StoreError};

use super::AppState;
use crate::ApiError;
use crate::auth::Caller;

/// The most label changes one request makes.
const MAX_LABEL_CHANGES: usize = 64;
/// How long a ping waits for the agent's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
// The API's limit is what one instruction carries.
const _: () = assert!(qb_api::LogQuery::MAX_BYTES == qb_agent_proto::LogRequest::MAX_BYTES);
/// How long an agent has to read a piece of a log.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

impl AppState {
    /// A page of the tenant's nodes, only those in `state` and of `cluster` when given.
    pub async fn list_nodes(
        &self,
        caller: &Caller,
        state: Option<NodeState>,
        cluster: Option<&Key<ClusterId>>,
        page: &PageParams,
    ) -> Result<Page<Node>, ApiError> {
        let cluster = match cluster {
            Some(key) => Some(
                self.store
                    .get_cluster(caller.tenant(), key)
                    .await?
                    .cluster
                    .id,
            ),
            None => None,
        };
        let filter = NodeFilter { state, cluster };
        let mut nodes = self
            .store
            .list_nodes(
                caller.tenant(),
                &filter,
                page.after.as_deref(),
                page.limit()?,
            )
            .await?;
        nodes.items = self.live_all(nodes.items).await;
        Ok(nodes)
    }

    pub async fn get_node(&self, caller: &Caller, node: &Key<NodeId>) -> Result<Node, StoreError> {
        let node = self.store.get_node(caller.tenant(), node).await?;
        Ok(self.live(node).await)
    }

    pub async fn label_node(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
        change: &LabelChange,
    ) -> Result<Node, ApiError> {
        if change.set.len() + change.remove.len() > MAX_LABEL_CHANGES {
            return Err(ApiError::invalid(format!(
                "at most {MAX_LABEL_CHANGES} label changes per request"
            )));
        }
        let node = self
            .store
            .label_node(caller.tenant(), node, change, &caller.actor())
            .await?;
        Ok(self.live(node).await)
    }

    /// Authorizes a pending node into the pool; its agent, if connected, hears so at once.
    pub async fn authorize_node(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
    ) -> Result<Node, StoreError> {
        let node = self
            .store
            .authorize_node(caller.tenant(), node, &caller.actor())
            .await?;
        crate::agents::endpoint::notify_state(&self.agents, node.id, node.state);
        Ok(self.live(node).await)
    }

    /// Deauthorizes a node. The store refuses its certificate from now on; its live connection
    /// is closed at once rather than at its next reconnect.
    pub async fn deauthorize_node(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
    ) -> Result<Node, StoreError> {
        let node = self
            .store
            .deauthorize_node(caller.tenant(), node, &caller.actor())
            .await?;
        self.agents.revoke(node.id);
        Ok(self.live(node).await)
    }

    /// Forgets a pending or deauthorized node.
    pub async fn delete_node(&self, caller: &Caller, node: &Key<NodeId>) -> Result<(), StoreError> {
        self.store
            .delete_node(caller.tenant(), node, &caller.actor())
            .await
    }

    /// The round trip of a ping through the node's agent: from the controller deciding to the
    /// agent acting.
    pub async fn ping_node(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
    ) -> Result<PingResult, ApiError> {
        let node = self.store.get_node(caller.tenant(), node).await?;
        let round_trip = self.agents.ping(node.id, PING_TIMEOUT).await.map_err(|e| {
            ApiError::new(ProblemCode::AgentUnavailable, format!("{}: {e}", node.name))
        })?;
        Ok(PingResult {
            round_trip_ms: round_trip.as_secs_f64() * 1000.0,
        })
    }

    /// A piece of the log of `service` on `node`, read by its agent.
    pub async fn node_log(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
        service: &str,
        query: &qb_api::LogQuery,
    ) -> Result<qb_api::NodeLog, ApiError> {
        let valid = !service.is_empty()
            && service.len() <= 63
            && service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(ApiError::invalid(format!(
                "{} is not a service name (etcd, kubelet, kube-apiserver, ...)",
                qb_api::quote(service)
            )));
        }
        let max = qb_agent_proto::LogRequest::MAX_BYTES;
        let max_bytes = query.max_bytes.unwrap_or(max);
        if !(1..=max).contains(&max_bytes) {
            return Err(ApiError::invalid(format!(
                "max_bytes must be between 1 and {max}"
            )));
        }
        if query
            .since_seconds
            .is_some_and(|s| s > qb_api::LogQuery::MAX_SINCE_SECONDS)
        {
            return Err(ApiError::invalid(format!(
                "since_seconds must be at most {} (30 days)",
                qb_api::LogQuery::MAX_SINCE_SECONDS
            )));
        }
        let node = self.store.get_node(caller.tenant(), node).await?;
        let request = qb_agent_proto::LogRequest {
            service: service.to_owned(),
            offset: query.offset,
            since_seconds: query.since_seconds,
            max_bytes,
        };
        let unavailable =
            |e: String| ApiError::new(ProblemCode::AgentUnavailable, format!("{}: {e}", node.name));
        match self
            .agents
            .request(
                node.id,
                |_| qb_agent_proto::Instruction::Log(request),
                LOG_TIMEOUT,
            )
            .await
        {
            Ok(qb_agent_proto::Outcome::Log { piece }) => Ok(qb_api::NodeLog {
                node: node.name.to_string(),
                service: service.to_owned(),
                text: piece.text,
                start: piece.start,
                end: piece.end,
                rotated: piece.rotated,
            }),
            Ok(qb_agent_proto::Outcome::Failed { error }) if error.starts_with("no service") => {
                Err(ApiError::new(
                    ProblemCode::NotFound,
                    format!("{}: {error}", node.name),
                ))
            }
            Ok(qb_agent_proto::Outcome::Failed { error }) => Err(unavailable(error)),
            Ok(other) => Err(unavailable(format!("unexpected answer {other:?}"))),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// A node's last report and its history over `range`.
    pub async fn node_metrics(
        &self,
        caller: &Caller,
        node: &Key<NodeId>,
        range: MetricsRange,
    ) -> Result<NodeMetrics, ApiError> {
        let node = self.store.get_node(caller.tenant(), node).await?;
        let resolution_seconds = range.resolution_seconds();
        let since = time::OffsetDateTime::now_utc() - range.duration();
        let points = self
            .store
            .node_metrics(caller.tenant(), node.id, resolution_seconds, since)
            .await?;
        Ok(NodeMetrics {
            node: node.id,
            name: node.name,
            range,
            resolution_seconds,
            latest: self.agents.metrics().latest(node.id),
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::app::fixture::Fixture;

    #[tokio::test]
    async fn label_changes_are_bounded_per_request() {
        let f = Fixture::new().await;
        let name = f.pending_node("n1").await;
        let key = Key::Name(name.to_string());
        let change = |n: usize| LabelChange {
            set: (0..n)
                .map(|i| (format!("k{i}").parse().unwrap(), "v".parse().unwrap()))
                .collect::<BTreeMap<_, _>>(),
            remove: Vec::new(),
        };
        let refused = f
            .app
            .label_node(&f.operator, &key, &change(65))
            .await
            .unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::InvalidInput);
        assert_eq!(refused.0.detail, "at most 64 label changes per request");
        let node = f
            .app
            .label_node(&f.operator, &key, &change(64))
            .await
            .unwrap();
        assert_eq!(node.labels.len(), 64);
    }

    #[tokio::test]
    async fn a_node_moves_through_authorization_and_is_forgotten() {
        let f = Fixture::new().await;
        let key = Key::Name(f.pending_node("n1").await.to_string());
        let node = f.app.authorize_node(&f.operator, &key).await.unwrap();
        assert_eq!(node.state, NodeState::Authorized);
        let node = f.app.deauthorize_node(&f.operator, &key).await.unwrap();
        assert_eq!(node.state, NodeState::Deauthorized);
        f.app.delete_node(&f.operator, &key).await.unwrap();
        assert!(matches!(
            f.app.get_node(&f.operator, &key).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_ping_to_a_node_without_its_agent_names_the_node() {
        let f = Fixture::new().await;
        let key = Key::Name(f.pending_node("n1").await.to_string());
        let refused = f.app.ping_node(&f.operator, &key).await.unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::AgentUnavailable);
        assert!(refused.0.detail.starts_with("n1: "), "{}", refused.0.detail);
    }

    #[tokio::test]
    async fn nodes_are_listed_by_state_and_an_unknown_cluster_is_not_found() {
        let f = Fixture::new().await;
        let pending = f.pending_node("n1").await;
        let authorized = Key::Name(f.pending_node("n2").await.to_string());
        f.app
            .authorize_node(&f.operator, &authorized)
            .await
            .unwrap();
        let page = f
            .app
            .list_nodes(
                &f.operator,
                Some(NodeState::Pending),
                None,
                &PageParams::default(),
            )
            .await
            .unwrap();
        let names: Vec<_> = page.items.iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, [pending]);
        let refused = f
            .app
            .list_nodes(
                &f.operator,
                None,
                Some(&Key::Name("nowhere".to_owned())),
                &PageParams::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::NotFound);
    }
}
