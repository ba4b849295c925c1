//! Node metrics history: the controller's per-minute sums of heartbeats, written in batches on a
//! timer, rolled up by the hour, and pruned by age.

use qb_api::{MetricsPoint, NodeId, TenantId};
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::{Result, Store, from_ms, to_ms};

/// How long minute points are kept.
pub const MINUTES_KEPT: time::Duration = time::Duration::DAY;
/// How long hour points are kept.
pub const HOURS_KEPT: time::Duration = time::Duration::days(30);
/// Rows per INSERT statement (12 parameters each).
const ROWS_PER_STATEMENT: usize = 100;

const COLUMNS: &str = "node_id, tenant_id, resolution_s, at, samples, cpu_percent, \
    cpu_percent_max, load1, memory_used_bytes, memory_total_bytes, disk_used_bytes, \
    disk_total_bytes";

/// A point written again (by a restarted controller, or by two replicas during a hand-over)
/// merges with the one there: averages weighted by their heartbeats, peaks kept.
const MERGE: &str = " ON CONFLICT (node_id, resolution_s, at) DO UPDATE SET \
    samples = node_metrics.samples + excluded.samples, \
    cpu_percent = (node_metrics.cpu_percent * node_metrics.samples \
        + excluded.cpu_percent * excluded.samples) / (node_metrics.samples + excluded.samples), \
    cpu_percent_max = CASE WHEN excluded.cpu_percent_max > node_metrics.cpu_percent_max \
        THEN excluded.cpu_percent_max ELSE node_metrics.cpu_percent_max END, \
    load1 = (node_metrics.load1 * node_metrics.samples + excluded.load1 * excluded.samples) \
        / (node_metrics.samples + excluded.samples), \
    memory_used_bytes = (node_metrics.memory_used_bytes * node_metrics.samples \
        + excluded.memory_used_bytes * excluded.samples) \
        / (node_metrics.samples + excluded.samples), \
    memory_total_bytes = excluded.memory_total_bytes, \
    disk_used_bytes = CASE WHEN excluded.disk_used_bytes > node_metrics.disk_used_bytes \
        THEN excluded.disk_used_bytes ELSE node_metrics.disk_used_bytes END, \
    disk_total_bytes = excluded.disk_total_bytes";

/// Bytes as stored: a BIGINT (no host has 8 EiB).
fn bytes(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes minute points (`point.at` the minute's start), in one transaction.
    pub async fn record_node_metrics(
        &self,
        points: &[(TenantId, NodeId, MetricsPoint)],
    ) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut w = self.write_global().await?;
        for chunk in points.chunks(ROWS_PER_STATEMENT) {
            let mut sql = format!("INSERT INTO node_metrics ({COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                let p = i * 12;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for c in 1..=12 {
                    if c > 1 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", p + c));
                }
                sql.push(')');
            }
            sql.push_str(MERGE);
            let mut query = sqlx::query(&sql);
            for (tenant, node, point) in chunk {
                query = query
                    .bind(node.to_string())
                    .bind(tenant.to_string())
                    .bind(60_i64)
                    .bind(to_ms(point.at))
                    .bind(i64::from(point.samples.max(1)))
                    .bind(point.cpu_percent)
                    .bind(point.cpu_percent_max)
                    .bind(point.load1)
                    .bind(bytes(point.memory_used_bytes))
                    .bind(bytes(point.memory_total_bytes))
                    .bind(bytes(point.disk_used_bytes))
                    .bind(bytes(point.disk_total_bytes));
            }
            query.execute(&mut *w.tx).await?;
        }
        w.commit().await
    }

    /// Sums the minute points of the hour starting at `hour` into hour points (again, if they
    /// were made before: the result is the same), then forgets points past their age.
    pub async fn roll_up_node_metrics(
        &self,
        hour: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<()> {
        let start = to_ms(hour);
        let mut w = self.write_global().await?;
        sqlx::query(&format!(
            "INSERT INTO node_metrics ({COLUMNS}) \
             SELECT node_id, tenant_id, 3600, $1, SUM(samples), \
                 SUM(cpu_percent * samples) / SUM(samples), MAX(cpu_percent_max), \
                 SUM(load1 * samples) / SUM(samples), \
                 SUM(memory_used_bytes * samples) / SUM(samples), MAX(memory_total_bytes), \
                 MAX(disk_used_bytes), MAX(disk_total_bytes) \
             FROM node_metrics WHERE resolution_s = 60 AND at >= $1 AND at < $2 \
             GROUP BY node_id, tenant_id \
             ON CONFLICT (node_id, resolution_s, at) DO UPDATE SET \
                 samples = excluded.samples, cpu_percent = excluded.cpu_percent, \
                 cpu_percent_max = excluded.cpu_percent_max, load1 = excluded.load1, \
                 memory_used_bytes = excluded.memory_used_bytes, \
                 memory_total_bytes = excluded.memory_total_bytes, \
                 disk_used_bytes = excluded.disk_used_bytes, \
                 disk_total_bytes = excluded.disk_total_bytes"
        ))
        .bind(start)
        .bind(start + 3_600_000)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "DELETE FROM node_metrics WHERE (resolution_s = 60 AND at < $1) \
             OR (resolution_s = 3600 AND at < $2)",
        )
        .bind(to_ms(now - MINUTES_KEPT))
        .bind(to_ms(now - HOURS_KEPT))
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// A node's points of `resolution_s` (60 or 3600) from `since` on, oldest first.
    pub async fn node_metrics(
        &self,
        tenant: TenantId,
        node: NodeId,
        resolution_s: u32,
        since: OffsetDateTime,
    ) -> Result<Vec<MetricsPoint>> {
        let rows = sqlx::query(
            "SELECT at, samples, cpu_percent, cpu_percent_max, load1, memory_used_bytes, \
                 memory_total_bytes, disk_used_bytes, disk_total_bytes \
             FROM node_metrics WHERE tenant_id = $1 AND node_id = $2 AND resolution_s = $3 \
                 AND at >= $4 ORDER BY at",
        )
        .bind(tenant.to_string())
        .bind(node.to_string())
        .bind(i64::from(resolution_s))
        .bind(to_ms(since))
        .fetch_all(&self.pool)
        .await?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        rows.iter()
            .map(|row| {
                Ok(MetricsPoint {
                    at: from_ms(row.try_get("at")?),
                    samples: u32::try_from(row.try_get::<i64, _>("samples")?).unwrap_or(u32::MAX),
                    cpu_percent: row.try_get("cpu_percent")?,
                    cpu_percent_max: row.try_get("cpu_percent_max")?,
                    load1: row.try_get("load1")?,
                    memory_used_bytes: count(row.try_get("memory_used_bytes")?),
                    memory_total_bytes: count(row.try_get("memory_total_bytes")?),
                    disk_used_bytes: count(row.try_get("disk_used_bytes")?),
                    disk_total_bytes: count(row.try_get("disk_total_bytes")?),
                })
            })
            .collect()
    }

    /// Each of the tenant's nodes' disk use (used, total bytes) in its newest minute point
    /// since `since`.
    pub async fn recent_disk_use(
        &self,
        tenant: TenantId,
        since: OffsetDateTime,
    ) -> Result<std::collections::HashMap<NodeId, (u64, u64)>> {
        // Only the newest point of each node.
        let rows = sqlx::query(
            "SELECT m.node_id, m.disk_used_bytes, m.disk_total_bytes FROM node_metrics m \
             JOIN (SELECT node_id, MAX(at) AS at FROM node_metrics \
                   WHERE tenant_id = $1 AND resolution_s = 60 AND at >= $2 GROUP BY node_id) n \
             ON n.node_id = m.node_id AND n.at = m.at WHERE m.resolution_s = 60",
        )
        .bind(tenant.to_string())
        .bind(to_ms(since))
        .fetch_all(&self.pool)
        .await?;
        let mut disks = std::collections::HashMap::new();
        for row in &rows {
            let node: NodeId = crate::parse_id("node", &row.try_get::<String, _>("node_id")?)?;
            let count = |v: i64| u64::try_from(v).unwrap_or(0);
            disks.insert(
                node,
                (
                    count(row.try_get("disk_used_bytes")?),
                    count(row.try_get("disk_total_bytes")?),
                ),
            );
        }
        Ok(disks)
    }
}
