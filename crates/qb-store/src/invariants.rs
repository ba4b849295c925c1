//! The rules the store's rows keep between any two transactions, checked on the whole
//! database: after a crash at any point, a restarted controller must find them all true.

use sqlx::Row as _;

use crate::{Result, Store};

/// Each rule: what breaking it means, and a query listing the rows that break it (a name or an
/// id in the first column). The schema's own checks (a node in a cluster is attached or
/// detaching, and only then, say) are not repeated here.
const RULES: &[(&str, &str)] = &[
    (
        "in no cluster but holding a cluster's role, etcd membership, certificates or pod subnet",
        "SELECT name FROM nodes WHERE cluster_id IS NULL AND (role IS NOT NULL \
         OR etcd IS NOT NULL OR certs IS NOT NULL OR pod_subnet IS NOT NULL)",
    ),
    (
        "an etcd member that is not a master",
        "SELECT name FROM nodes WHERE etcd IS NOT NULL AND (role IS NULL OR role <> 'master')",
    ),
    (
        "a plan without a generation",
        "SELECT name FROM nodes WHERE plan IS NOT NULL AND plan_generation < 1",
    ),
    (
        "a pod subnet given to two nodes of one cluster",
        "SELECT n.name FROM nodes n JOIN nodes o ON o.cluster_id = n.cluster_id \
         AND o.pod_subnet = n.pod_subnet AND o.id <> n.id",
    ),
    (
        "a bootstrap token used more often than it may be",
        "SELECT id FROM bootstrap_tokens WHERE uses > max_uses",
    ),
    (
        "a node whose creation is not in the audit trail",
        "SELECT n.name FROM nodes n WHERE NOT EXISTS (SELECT 1 FROM events e \
         WHERE e.object_id = n.id AND e.action = 'node.registered')",
    ),
];

impl Store {
    /// Every broken rule, as `<rule>: <rows>`; empty when the database is consistent. Stored
    /// secrets that are not sealed count as broken too.
    pub async fn invariant_violations(&self) -> Result<Vec<String>> {
        let mut broken = Vec::new();
        for (rule, sql) in RULES {
            let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
            if !rows.is_empty() {
                let names = rows
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<Vec<_>, _>>()?;
                broken.push(format!("{rule}: {}", names.join(", ")));
            }
        }
        let sealed = self.sealed_status().await?;
        if sealed.not_sealed > 0 {
            broken.push(format!("secrets stored plain: {}", sealed.not_sealed));
        }
        Ok(broken)
    }
}
