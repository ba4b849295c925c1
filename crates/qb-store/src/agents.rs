//! What agents need from the store: bootstrap tokens, registration, certificate bookkeeping and
//! the controller-wide secrets (the internal CA).

use qb_api::{
    BootstrapToken, BootstrapTokenId, CreatedBootstrapToken, Description, Labels, Node, NodeFacts,
    NodeId, NodeName, NodeState, Page, TenantId,
};
use serde_json::json;
use sqlx::Row;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::nodes::{node_event, to_json};
use crate::{Actor, Backend, Key, Result, Store, StoreError, now_ms, rows, to_ms};

/// Why a bootstrap token was refused. Each is final: the agent needs a new token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the bootstrap token is unknown to this controller")]
    Unknown,
    #[error("the bootstrap token has expired")]
    Expired,
    #[error("the bootstrap token was revoked")]
    Revoked,
    #[error("the bootstrap token has been used as many times as it allows")]
    UsedUp,
}

/// A connected agent as it said hello.
#[derive(Clone, Copy, Debug)]
pub struct SeenAgent<'a> {
    pub version: &'a str,
    /// The SHA-256 of its binary, if it says (protocol 3 on).
    pub build: Option<&'a str>,
    pub protocol: u32,
}

/// A new secret and the hash that is stored in its place.
#[derive(Clone)]
pub struct NewSecret {
    pub secret: String,
    pub hash: String,
}

/// A host asking to join (or rejoin) a tenant.
#[derive(Clone, Debug)]
pub struct Registration {
    pub token_hash: String,
    pub machine_id: String,
    /// The name a new node gets (its hostname); a taken name gets the machine id's start appended.
    pub name: NodeName,
    pub facts: NodeFacts,
    pub labels: Labels,
    pub agent_version: String,
}

/// How long after recording an identity conflict on a node the next one goes unrecorded.
pub const IDENTITY_CONFLICT_QUIET: time::Duration = time::Duration::minutes(10);

/// Two hosts with one machine id: `node`, whose agent is online, and another that tried to
/// register with it.
#[derive(Clone, Debug)]
pub struct IdentityConflict {
    pub tenant: TenantId,
    pub machine_id: String,
    /// The node the machine id belongs to, as it is.
    pub node: Node,
    /// What the other host says of itself.
    pub claimant_hostname: String,
    pub claimant_addresses: Vec<std::net::IpAddr>,
}

impl std::fmt::Display for IdentityConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |addresses: &[std::net::IpAddr]| {
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "host {:?} ({}) presents machine id {}, which belongs to node {} (host {:?}, {}) whose \
             agent is online: two hosts share one identity (a cloned machine?); give this host its \
             own: remove /etc/machine-id and /var/lib/dbus/machine-id and run \
             `systemd-machine-id-setup` (or `dbus-uuidgen --ensure`), or remove the `machine-id` \
             in the agent's state directory if it made its own, or set `machine_id` in its \
             configuration; its agent tries again within a minute",
            self.claimant_hostname,
            list(&self.claimant_addresses),
            self.machine_id,
            self.node.name,
            self.node.facts.hostname,
            list(&self.node.facts.addresses),
        )
    }
}

/// A certificate issued for a node: PEM and serial.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub pem: String,
    pub serial: String,
}

pub type IssueError = Box<dyn std::error::Error + Send + Sync>;

/// A registered node and its new certificate.
#[derive(Clone, Debug)]
pub struct Registered {
    pub tenant: TenantId,
    pub node: Node,
    pub certificate: IssuedCert,
    /// `true` when the host was already known (same machine id) and no node was created.
    pub existing: bool,
}

/// A node as the agent endpoint checks it when an agent connects.
#[derive(Clone, Debug)]
pub struct AgentNode {
    pub node: Node,
    pub cert_serial: Option<String>,
    pub prev_cert_serial: Option<String>,
}

impl AgentNode {
    /// `true` when a certificate with this serial may be used: the current one, or the previous
    /// one while the agent moves to its renewed certificate.
    pub fn accepts_serial(&self, serial: &str) -> bool {
        self.node.state != NodeState::Deauthorized
            && (self.cert_serial.as_deref() == Some(serial)
                || self.prev_cert_serial.as_deref() == Some(serial))
    }
}

impl Store {
    pub async fn create_bootstrap_token(
        &self,
        tenant: TenantId,
        secret: NewSecret,
        description: Option<Description>,
        expires_at: OffsetDateTime,
        max_uses: u32,
        actor: &Actor,
    ) -> Result<CreatedBootstrapToken> {
        let id = BootstrapTokenId::new();
        let now = now_ms();
        let mut w = self.write(tenant).await?;
        sqlx::query(
            "INSERT INTO bootstrap_tokens (id, tenant_id, secret_hash, description, created_at, expires_at, max_uses, uses) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(id.to_string())
        .bind(tenant.to_string())
        .bind(&secret.hash)
        .bind(description.as_ref().map(|d| d.to_string()))
        .bind(now)
        .bind(to_ms(expires_at))
        .bind(i64::from(max_uses))
        .execute(&mut *w.tx)
        .await?;
        w.event(
            tenant,
            actor,
            NewEvent {
                action: "bootstrap_token.created",
                object_kind: "bootstrap_token",
                object_id: id.to_string(),
                object_name: description.as_ref().map_or("", |d| d.as_str()),
                detail: json!({ "max_uses": max_uses, "expires_at": rfc3339(expires_at) }),
            },
        )
        .await?;
        let token = fetch_bootstrap_token(&mut w, tenant, id).await?;
        w.commit().await?;
        Ok(CreatedBootstrapToken {
            token,
            secret: secret.secret,
        })
    }

    pub async fn list_bootstrap_tokens(
        &self,
        tenant: TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<BootstrapToken>> {
        let sql =
            "SELECT * FROM bootstrap_tokens WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";
        self.fetch_page(sql, tenant, after, limit, rows::bootstrap_token, |t| {
            t.id.to_string()
        })
        .await
    }

    pub async fn revoke_bootstrap_token(
        &self,
        tenant: TenantId,
        id: BootstrapTokenId,
        actor: &Actor,
    ) -> Result<BootstrapToken> {
        let mut w = self.write(tenant).await?;
        let done = sqlx::query(
            "UPDATE bootstrap_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE tenant_id = $2 AND id = $3",
        )
        .bind(now_ms())
        .bind(tenant.to_string())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("bootstrap token", id));
        }
        let token = fetch_bootstrap_token(&mut w, tenant, id).await?;
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "bootstrap_token.revoked",
                object_kind: "bootstrap_token",
                object_id: id.to_string(),
                object_name: token.description.as_ref().map_or("", |d| d.as_str()),
                detail: json!({}),
            },
        )
        .await?;
        Ok(token)
    }

    /// Registers a host with a bootstrap token, in one transaction: checks and counts the
    /// token, creates the node as `pending` (or finds it again by machine id: a pending or
    /// deauthorized host comes back as `pending` with only the new certificate valid; a host in
    /// the pool or a cluster is refused), and records the certificate `issue` makes for it. A
    /// refused registration changes nothing. A host presenting the machine id of a node whose
    /// agent is online (`online` says, by node) is another host with the same identity (a
    /// cloned VM, say): refused as [`StoreError::IdentityConflict`], and the online one keeps
    /// its certificate.
    pub async fn register_node(
        &self,
        reg: &Registration,
        online: impl FnOnce(NodeId) -> bool,
        issue: impl FnOnce(TenantId, NodeId) -> Result<IssuedCert, IssueError>,
    ) -> Result<Registered> {
        let mut w = self.write_global().await?;
        // Lock order is tenant, then token, as everywhere else: find the token's tenant first.
        let tenant_of_token =
            sqlx::query("SELECT tenant_id FROM bootstrap_tokens WHERE secret_hash = $1")
                .bind(&reg.token_hash)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or(StoreError::TokenRefused(TokenRefusal::Unknown))?;
        let lock = if self.backend == Backend::Postgres {
            let tenant: String = tenant_of_token.try_get("tenant_id")?;
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_optional(&mut *w.tx)
                .await?;
            " FOR UPDATE"
        } else {
            ""
        };
        let token = sqlx::query(&format!(
            "SELECT id, tenant_id, expires_at, max_uses, uses, revoked_at FROM bootstrap_tokens WHERE secret_hash = $1{lock}"
        ))
        .bind(&reg.token_hash)
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or(StoreError::TokenRefused(TokenRefusal::Unknown))?;
        let refusal = if token.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            Some(TokenRefusal::Revoked)
        } else if token.try_get::<i64, _>("expires_at")? <= now_ms() {
            Some(TokenRefusal::Expired)
        } else if token.try_get::<i64, _>("uses")? >= token.try_get::<i64, _>("max_uses")? {
            Some(TokenRefusal::UsedUp)
        } else {
            None
        };
        let token_id: String = token.try_get("id")?;
        let tenant: TenantId =
            crate::parse_id("tenant id", &token.try_get::<String, _>("tenant_id")?)?;
        // The same host asking again with the token its stored registration used up: that
        // registration's answer was lost (the controller died before sending it). Until its
        // agent first connects, the host may have it again.
        let unanswered = refusal == Some(TokenRefusal::UsedUp)
            && sqlx::query(
                "SELECT id FROM nodes WHERE tenant_id = $1 AND machine_id = $2 \
                 AND bootstrap_token_id = $3 AND state = 'pending' AND last_seen_at IS NULL",
            )
            .bind(tenant.to_string())
            .bind(&reg.machine_id)
            .bind(&token_id)
            .fetch_optional(&mut *w.tx)
            .await?
            .is_some();
        match refusal {
            Some(refusal) if !unanswered => return Err(StoreError::TokenRefused(refusal)),
            Some(_) => {}
            None => {
                sqlx::query("UPDATE bootstrap_tokens SET uses = uses + 1 WHERE id = $1")
                    .bind(&token_id)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }

        let existing = sqlx::query("SELECT id FROM nodes WHERE tenant_id = $1 AND machine_id = $2")
            .bind(tenant.to_string())
            .bind(&reg.machine_id)
            .fetch_optional(&mut *w.tx)
            .await?;
        let before = match existing {
            Some(row) => {
                let id: NodeId = crate::parse_id("node id", &row.try_get::<String, _>("id")?)?;
                Some(w.node(tenant, &Key::Id(id)).await?)
            }
            None => None,
        };
        if let Some(before) = &before
            && online(before.id)
        {
            return Err(StoreError::IdentityConflict(Box::new(IdentityConflict {
                tenant,
                machine_id: reg.machine_id.clone(),
                node: before.clone(),
                claimant_hostname: reg.facts.hostname.clone(),
                claimant_addresses: reg.facts.addresses.clone(),
            })));
        }
        // A known host may register again only while it is pending or deauthorized: a node in the
        // pool or a cluster is not handed to whoever holds a bootstrap token and its machine id.
        if let Some(before) = &before
            && !matches!(before.state, NodeState::Pending | NodeState::Deauthorized)
        {
            return Err(StoreError::invalid_state(
                before,
                "registered again; deauthorize it first if this host was reinstalled",
            ));
        }
        let node_id = before.as_ref().map_or_else(NodeId::new, |n| n.id);
        let certificate = issue(tenant, node_id).map_err(StoreError::Issue)?;
        let actor = Actor::controller();
        let now = now_ms();
        match &before {
            Some(before) => {
                let state = NodeState::Pending;
                let mut labels = before.labels.clone();
                labels.extend(reg.labels.clone());
                sqlx::query(
                    "UPDATE nodes SET state = $1, facts = $2, labels = $3, agent_version = $4, \
                     prev_cert_serial = NULL, cert_serial = $5, updated_at = $6, \
                     bootstrap_token_id = $7 WHERE id = $8",
                )
                .bind(state.as_str())
                .bind(to_json(&reg.facts))
                .bind(to_json(&labels))
                .bind(&reg.agent_version)
                .bind(&certificate.serial)
                .bind(now)
                .bind(&token_id)
                .bind(node_id.to_string())
                .execute(&mut *w.tx)
                .await?;
                let detail = json!({ "previous_state": before.state, "bootstrap_token": token_id });
                w.event(
                    tenant,
                    &actor,
                    node_event("node.reregistered", before, detail),
                )
                .await?;
            }
            None => {
                let name = free_name(&mut w, tenant, &reg.name, &reg.machine_id).await?;
                sqlx::query(
                    "INSERT INTO nodes (id, tenant_id, name, state, cluster_id, facts, labels, created_at, updated_at, \
                     machine_id, agent_version, cert_serial, bootstrap_token_id) \
                     VALUES ($1, $2, $3, 'pending', NULL, $4, $5, $6, $6, $7, $8, $9, $10)",
                )
                .bind(node_id.to_string())
                .bind(tenant.to_string())
                .bind(name.as_str())
                .bind(to_json(&reg.facts))
                .bind(to_json(&reg.labels))
                .bind(now)
                .bind(&reg.machine_id)
                .bind(&reg.agent_version)
                .bind(&certificate.serial)
                .bind(&token_id)
                .execute(&mut *w.tx)
                .await?;
                let node = w.node(tenant, &Key::Id(node_id)).await?;
                let detail = json!({ "hostname": reg.facts.hostname, "machine_id": reg.machine_id, "bootstrap_token": token_id });
                w.event(tenant, &actor, node_event("node.registered", &node, detail))
                    .await?;
            }
        }
        let existing = before.is_some();
        let node = w.node(tenant, &Key::Id(node_id)).await?;
        w.commit().await?;
        Ok(Registered {
            tenant,
            node,
            certificate,
            existing,
        })
    }

    /// Records that another host tried to register with a node's machine id
    /// (`node.identity_conflict`, on that node), so operators see it in the audit trail: once
    /// per node every [`IDENTITY_CONFLICT_QUIET`] (the other host keeps trying). Returns whether
    /// it recorded one.
    pub async fn record_identity_conflict(&self, conflict: &IdentityConflict) -> Result<bool> {
        let mut w = self.write(conflict.tenant).await?;
        let since = to_ms(OffsetDateTime::now_utc() - IDENTITY_CONFLICT_QUIET);
        let recent = sqlx::query(
            "SELECT 1 FROM events WHERE tenant_id = $1 AND object_id = $2 \
             AND action = 'node.identity_conflict' AND at > $3 LIMIT 1",
        )
        .bind(conflict.tenant.to_string())
        .bind(conflict.node.id.to_string())
        .bind(since)
        .fetch_optional(&mut *w.tx)
        .await?;
        if recent.is_some() {
            return Ok(false);
        }
        let node = w.node(conflict.tenant, &Key::Id(conflict.node.id)).await?;
        let detail = json!({
            "machine_id": conflict.machine_id,
            "holder": { "hostname": node.facts.hostname, "addresses": node.facts.addresses },
            "claimant": {
                "hostname": conflict.claimant_hostname,
                "addresses": conflict.claimant_addresses,
            },
        });
        w.event(
            conflict.tenant,
            &Actor::controller(),
            node_event("node.identity_conflict", &node, detail),
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }

    /// The node behind a connecting agent's certificate.
    pub async fn agent_node(&self, tenant: TenantId, id: NodeId) -> Result<AgentNode> {
        let row = sqlx::query(&format!(
            "{} WHERE n.tenant_id = $1 AND n.id = $2",
            crate::nodes::NODE_SELECT
        ))
        .bind(tenant.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("node", id))?;
        Ok(AgentNode {
            node: rows::node(&row)?,
            cert_serial: row.try_get("cert_serial")?,
            prev_cert_serial: row.try_get("prev_cert_serial")?,
        })
    }

    /// Records a renewed certificate; the previous one stays valid until the agent switches.
    pub async fn renew_node_cert(
        &self,
        tenant: TenantId,
        id: NodeId,
        issue: impl FnOnce() -> Result<IssuedCert, IssueError>,
    ) -> Result<IssuedCert> {
        let mut w = self.write(tenant).await?;
        let node = w.node(tenant, &Key::Id(id)).await?;
        if node.state == NodeState::Deauthorized {
            return Err(StoreError::invalid_state(&node, "given a certificate"));
        }
        let cert = issue().map_err(StoreError::Issue)?;
        sqlx::query(
            "UPDATE nodes SET prev_cert_serial = cert_serial, cert_serial = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(&cert.serial)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await?;
        let detail = json!({ "serial": cert.serial });
        w.commit_by_controller(tenant, "node.certificate_renewed", &node, detail)
            .await?;
        Ok(cert)
    }

    /// When a node's agent was last heard from, as its channel closes (nothing else: a newer
    /// channel may have said more since).
    pub async fn agent_left(&self, tenant: TenantId, id: NodeId, at: OffsetDateTime) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(to_ms(at))
            .bind(tenant.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bookkeeping from a connected agent: its version, changed facts, when it was last seen.
    /// Not audited; called on connect, on changed facts and on disconnect, never per heartbeat.
    pub async fn agent_seen(
        &self,
        tenant: TenantId,
        id: NodeId,
        agent: &SeenAgent<'_>,
        facts: Option<&NodeFacts>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _writer = self.bookkeeping_lock().await;
        sqlx::query(
            "UPDATE nodes SET agent_version = $1, agent_build = $2, agent_protocol = $3, \
             facts = COALESCE($4, facts), last_seen_at = $5 WHERE tenant_id = $6 AND id = $7",
        )
        .bind(agent.version)
        .bind(agent.build)
        .bind(i64::from(agent.protocol))
        .bind(facts.map(to_json))
        .bind(to_ms(at))
        .bind(tenant.to_string())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A controller-wide secret, created by `create` the first time any replica asks.
    pub async fn controller_secret(
        &self,
        name: &str,
        create: impl FnOnce() -> Result<String, IssueError>,
    ) -> Result<String> {
        if let Some(value) = self.read_secret(name).await? {
            return Ok(value);
        }
        let value = create().map_err(StoreError::Issue)?;
        let w = self.write_global().await?;
        let mut w = w;
        sqlx::query("INSERT INTO controller_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(self.seal("controller_secrets", "value", name, &value))
            .bind(now_ms())
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        // Another replica may have won the race: everyone uses the stored value.
        self.read_secret(name)
            .await?
            .ok_or_else(|| StoreError::not_found("secret", name))
    }

    async fn read_secret(&self, name: &str) -> Result<Option<String>> {
        let sealed: Option<String> =
            sqlx::query("SELECT value FROM controller_secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get("value"))
                .transpose()?;
        sealed
            .map(|v| {
                self.unseal(
                    "controller secret",
                    ("controller_secrets", "value", name),
                    &v,
                )
            })
            .transpose()
    }
}

/// `name`, or when a node of the tenant has it, `name-<machine id start>`.
async fn free_name(
    w: &mut crate::WriteTx,
    tenant: TenantId,
    name: &NodeName,
    machine_id: &str,
) -> Result<NodeName> {
    let taken = |n: String| {
        sqlx::query("SELECT 1 AS x FROM nodes WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(n)
    };
    if taken(name.to_string())
        .fetch_optional(&mut *w.tx)
        .await?
        .is_none()
    {
        return Ok(name.clone());
    }
    let suffix = &machine_id[..machine_id.len().min(8)];
    let mut base = name.to_string();
    base.truncate(253 - suffix.len() - 1);
    let candidate: NodeName = format!("{base}-{suffix}").parse()?;
    if taken(candidate.to_string())
        .fetch_optional(&mut *w.tx)
        .await?
        .is_some()
    {
        return Err(StoreError::NameTaken {
            kind: "node",
            name: candidate.to_string(),
        });
    }
    Ok(candidate)
}

async fn fetch_bootstrap_token(
    w: &mut crate::WriteTx,
    tenant: TenantId,
    id: BootstrapTokenId,
) -> Result<BootstrapToken> {
    let row = sqlx::query("SELECT * FROM bootstrap_tokens WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| StoreError::not_found("bootstrap token", id))?;
    rows::bootstrap_token(&row)
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
