//! Turning stored rows into API types. A row that does not parse is reported as corrupt, never
//! silently skipped.

use std::collections::BTreeMap;
use std::str::FromStr;

use qb_api::{
    Cidr, Cluster, ClusterRef, ClusterState, Event, KubernetesVersion, Labels, MasterCount, Name,
    Node, NodeFacts, NodeName, NodeRole, NodeState, Role, TenantId, Token,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, StoreError, from_ms};

fn corrupt<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        source: Box::new(e),
    }
}

pub(crate) fn parse<T: FromStr>(what: &'static str, s: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse().map_err(corrupt(what))
}

/// A stored JSON text read into its type. The error keeps only where and what kind: serde's
/// own message may quote the value, and some columns hold private keys.
pub(crate) fn json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what)(JsonShape::of(&e)))
}

/// Where a JSON text failed to parse, and how, without any of its content.
#[derive(Debug, thiserror::Error)]
#[error("{kind} at line {line}, column {column}")]
struct JsonShape {
    kind: &'static str,
    line: usize,
    column: usize,
}

impl JsonShape {
    fn of(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        Self {
            kind: match e.classify() {
                Category::Io => "unreadable",
                Category::Syntax => "not JSON",
                Category::Data => "JSON of another shape",
                Category::Eof => "cut short",
            },
            line: e.line(),
            column: e.column(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown value {0:?}")]
struct UnknownValue(String);

pub(crate) fn cluster_state(s: &str) -> Result<ClusterState> {
    ClusterState::parse(s).ok_or_else(|| corrupt("cluster state")(UnknownValue(s.to_owned())))
}

pub(crate) fn node_state(s: &str) -> Result<NodeState> {
    NodeState::parse(s).ok_or_else(|| corrupt("node state")(UnknownValue(s.to_owned())))
}

pub(crate) fn role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| corrupt("role")(UnknownValue(s.to_owned())))
}

/// Rows of any tenant, each read by `item` and paired with its `tenant_id`.
pub(crate) fn with_tenant<T>(
    rows: &[AnyRow],
    item: impl Fn(&AnyRow) -> Result<T>,
) -> Result<Vec<(TenantId, T)>> {
    rows.iter()
        .map(|row| {
            let tenant = crate::parse_id("tenant id", &row.try_get::<String, _>("tenant_id")?)?;
            Ok((tenant, item(row)?))
        })
        .collect()
}

/// A node row joined with its cluster's name as `cluster_name`.
pub(crate) fn node(row: &AnyRow) -> Result<Node> {
    let cluster_id: Option<String> = row.try_get("cluster_id")?;
    let cluster_name: Option<String> = row.try_get("cluster_name")?;
    let cluster = match (cluster_id, cluster_name) {
        (Some(id), Some(name)) => Some(ClusterRef {
            id: parse("cluster id", &id)?,
            name: parse("cluster name", &name)?,
        }),
        _ => None,
    };
    Ok(Node {
        id: parse("node id", &row.try_get::<String, _>("id")?)?,
        name: parse::<NodeName>("node name", &row.try_get::<String, _>("name")?)?,
        state: node_state(&row.try_get::<String, _>("state")?)?,
        cluster,
        facts: json::<NodeFacts>("node facts", &row.try_get::<String, _>("facts")?)?,
        labels: json::<Labels>("node labels", &row.try_get::<String, _>("labels")?)?,
        agent: row
            .try_get::<Option<String>, _>("agent_version")?
            .map(|version| -> Result<qb_api::NodeAgent> {
                Ok(qb_api::NodeAgent {
                    version,
                    build: row.try_get::<Option<String>, _>("agent_build")?,
                    protocol: row
                        .try_get::<Option<i64>, _>("agent_protocol")?
                        .and_then(|p| u32::try_from(p).ok()),
                    online: false,
                    last_seen_at: row.try_get::<Option<i64>, _>("last_seen_at")?.map(from_ms),
                })
            })
            .transpose()?,
        role: row
            .try_get::<Option<String>, _>("role")?
            .map(|r| json::<NodeRole>("node role", &format!("\"{r}\"")))
            .transpose()?,
        address: row
            .try_get::<Option<String>, _>("address")?
            .map(|a| parse::<std::net::IpAddr>("node address", &a))
            .transpose()?,
        plan: match row.try_get::<i64, _>("plan_generation")? {
            0 => None,
            generation => Some(qb_api::NodePlan {
                generation: u64::try_from(generation).unwrap_or_default(),
                kubernetes_version: row
                    .try_get::<Option<String>, _>("plan_version")?
                    .map(|v| parse::<KubernetesVersion>("plan version", &v))
                    .transpose()?,
                report: row
                    .try_get::<Option<String>, _>("plan_report")?
                    .map(|r| json("plan report", &r))
                    .transpose()?,
            }),
        },
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

/// A cluster row with its node count as `node_count`.
pub(crate) fn cluster(row: &AnyRow) -> Result<Cluster> {
    let node_count: i64 = row.try_get("node_count")?;
    Ok(Cluster {
        id: parse("cluster id", &row.try_get::<String, _>("id")?)?,
        name: parse::<Name>("cluster name", &row.try_get::<String, _>("name")?)?,
        kubernetes_version: parse::<KubernetesVersion>(
            "kubernetes version",
            &row.try_get::<String, _>("kubernetes_version")?,
        )?,
        pod_cidr: parse::<Cidr>("pod CIDR", &row.try_get::<String, _>("pod_cidr")?)?,
        service_cidr: parse::<Cidr>("service CIDR", &row.try_get::<String, _>("service_cidr")?)?,
        masters: parse::<MasterCount>("master count", &row.try_get::<String, _>("masters")?)?,
        roles: json::<BTreeMap<NodeName, NodeRole>>("roles", &row.try_get::<String, _>("roles")?)?,
        taint_masters: row.try_get::<i64, _>("taint_masters")? != 0,
        rollout_paused: row.try_get::<i64, _>("rollout_paused")? != 0,
        snapshot_interval_minutes: count(row, "snapshot_interval_minutes")?,
        snapshot_retention: count(row, "snapshot_retention")?,
        state: match cluster_state(&row.try_get::<String, _>("state")?)? {
            ClusterState::Empty if node_count > 0 => ClusterState::Pending,
            state => state,
        },
        state_message: row.try_get("state_message")?,
        // NULL only in a row an older controller wrote (a replica not yet upgraded).
        state_since: from_ms(
            row.try_get::<Option<i64>, _>("state_changed_at")?
                .map_or_else(|| row.try_get("created_at"), Ok)?,
        ),
        node_count: u32::try_from(node_count).unwrap_or(u32::MAX),
        created_at: from_ms(row.try_get("created_at")?),
    })
}

/// A token row joined with its user's `user_name` and `role`.
pub(crate) fn token(row: &AnyRow) -> Result<Token> {
    let description: Option<String> = row.try_get("description")?;
    let last_used_at: Option<i64> = row.try_get("last_used_at")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(Token {
        id: parse("token id", &row.try_get::<String, _>("id")?)?,
        user: parse("user name", &row.try_get::<String, _>("user_name")?)?,
        role: role(&row.try_get::<String, _>("role")?)?,
        description: description
            .map(|d| parse("token description", &d))
            .transpose()?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: from_ms(row.try_get("expires_at")?),
        last_used_at: last_used_at.map(from_ms),
        revoked_at: revoked_at.map(from_ms),
    })
}

pub(crate) fn event(row: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        at: from_ms(row.try_get("at")?),
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        object_kind: row.try_get("object_kind")?,
        object_id: row.try_get("object_id")?,
        object_name: row.try_get("object_name")?,
        detail: json("event detail", &row.try_get::<String, _>("detail")?)?,
    })
}

pub(crate) fn bootstrap_token(row: &AnyRow) -> Result<qb_api::BootstrapToken> {
    let description: Option<String> = row.try_get("description")?;
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let count = |column: &str| -> Result<u32> {
        let n: i64 = row.try_get(column)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(qb_api::BootstrapToken {
        id: parse("bootstrap token id", &row.try_get::<String, _>("id")?)?,
        description: description
            .map(|d| parse("token description", &d))
            .transpose()?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: from_ms(row.try_get("expires_at")?),
        max_uses: count("max_uses")?,
        uses: count("uses")?,
        revoked_at: revoked_at.map(from_ms),
    })
}

/// A non-negative count or size column that fits `T` (always, for rows qb wrote).
pub(crate) fn count<T: TryFrom<i64>>(row: &AnyRow, column: &'static str) -> Result<T> {
    let value: i64 = row.try_get(column)?;
    T::try_from(value).map_err(|_| StoreError::Corrupt {
        what: column,
        source: format!("{value} is out of range").into(),
    })
}
