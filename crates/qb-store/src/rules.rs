//! Tenants' threshold rules, and the figures they are held against: each host's lowest values
//! over its recent minute points (a figure above a threshold for N minutes in a row is one
//! whose lowest value over those minutes is above it).

use std::collections::HashMap;

use qb_api::{CreateThresholdRule, Name, NodeId, TenantId, ThresholdRule};
use serde_json::json;
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::{Actor, Result, Store, StoreError, from_ms, is_unique_violation, to_ms};

/// A host's lowest figures over some minutes, and how many minute points there were.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricLows {
    pub minutes: u32,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
    pub load1: f64,
}

impl MetricLows {
    /// The lowest value of `metric`.
    pub fn of(&self, metric: qb_api::HostMetric) -> f64 {
        match metric {
            qb_api::HostMetric::Cpu => self.cpu_percent,
            qb_api::HostMetric::Memory => self.memory_percent,
            qb_api::HostMetric::Disk => self.disk_percent,
            qb_api::HostMetric::Load => self.load1,
        }
    }
}

fn rule(row: &sqlx::any::AnyRow) -> Result<ThresholdRule> {
    let text = |c: &str| row.try_get::<String, _>(c);
    let corrupt = |what: &'static str, v: String| StoreError::Corrupt {
        what,
        source: v.into(),
    };
    let (name, metric, severity) = (text("name")?, text("metric")?, text("severity")?);
    Ok(ThresholdRule {
        id: text("id")?,
        name: name.parse().map_err(|_| corrupt("rule name", name))?,
        metric: metric.parse().map_err(|_| corrupt("rule metric", metric))?,
        above: row.try_get("above")?,
        for_minutes: u32::try_from(row.try_get::<i64, _>("for_minutes")?).unwrap_or(1),
        severity: severity
            .parse()
            .map_err(|_| corrupt("rule severity", severity))?,
        created_by: text("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

impl Store {
    pub async fn create_threshold_rule(
        &self,
        tenant: TenantId,
        new: &CreateThresholdRule,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<ThresholdRule> {
        new.validate()?;
        let r = ThresholdRule {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name.clone(),
            metric: new.metric,
            above: new.above,
            for_minutes: new.for_minutes,
            severity: new.severity.unwrap_or(qb_api::AlertSeverity::Warning),
            created_by: actor.0.clone(),
            created_at: from_ms(to_ms(now)),
        };
        let mut w = self.write(tenant).await?;
        let inserted = sqlx::query(
            "INSERT INTO threshold_rules (id, tenant_id, name, metric, above, for_minutes, \
             severity, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.id)
        .bind(tenant.to_string())
        .bind(r.name.as_str())
        .bind(r.metric.as_str())
        .bind(r.above)
        .bind(i64::from(r.for_minutes))
        .bind(r.severity.as_str())
        .bind(&r.created_by)
        .bind(to_ms(r.created_at))
        .execute(&mut *w.tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::NameTaken {
                    kind: "alert rule",
                    name: r.name.to_string(),
                });
            }
            other => {
                other?;
            }
        }
        let detail = json!({"metric": r.metric.as_str(), "above": r.above,
                            "for_minutes": r.for_minutes, "severity": r.severity.as_str()});
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "alert_rule.created",
                object_kind: "alert_rule",
                object_id: r.id.clone(),
                object_name: r.name.as_str(),
                detail,
            },
        )
        .await?;
        Ok(r)
    }

    pub async fn list_threshold_rules(&self, tenant: TenantId) -> Result<Vec<ThresholdRule>> {
        sqlx::query(
            "SELECT id, name, metric, above, for_minutes, severity, created_by, created_at \
             FROM threshold_rules WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rule)
        .collect()
    }

    /// Removes a rule; its firing alerts resolve at the next evaluation.
    pub async fn delete_threshold_rule(
        &self,
        tenant: TenantId,
        name: &Name,
        actor: &Actor,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let deleted = sqlx::query("DELETE FROM threshold_rules WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.to_string())
            .bind(name.as_str())
            .execute(&mut *w.tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "alert rule",
                key: name.to_string(),
            });
        }
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "alert_rule.deleted",
                object_kind: "alert_rule",
                object_id: String::new(),
                object_name: name.as_str(),
                detail: json!({}),
            },
        )
        .await
    }

    /// Each of the tenant's hosts' lowest figures over its minute points since `since`.
    pub async fn metric_lows(
        &self,
        tenant: TenantId,
        since: OffsetDateTime,
    ) -> Result<HashMap<NodeId, MetricLows>> {
        let rows = sqlx::query(
            "SELECT node_id, COUNT(*) AS minutes, MIN(cpu_percent) AS cpu, \
             MIN(CAST(100.0 * memory_used_bytes / CASE WHEN memory_total_bytes > 0 \
                 THEN memory_total_bytes ELSE 1 END AS DOUBLE PRECISION)) AS memory, \
             MIN(CAST(100.0 * disk_used_bytes / CASE WHEN disk_total_bytes > 0 \
                 THEN disk_total_bytes ELSE 1 END AS DOUBLE PRECISION)) AS disk, \
             MIN(load1) AS load1 \
             FROM node_metrics WHERE tenant_id = $1 AND resolution_s = 60 AND at >= $2 \
             GROUP BY node_id",
        )
        .bind(tenant.to_string())
        .bind(to_ms(since))
        .fetch_all(&self.pool)
        .await?;
        let mut lows = HashMap::new();
        for row in &rows {
            let node: NodeId = crate::parse_id("node", &row.try_get::<String, _>("node_id")?)?;
            lows.insert(
                node,
                MetricLows {
                    minutes: u32::try_from(row.try_get::<i64, _>("minutes")?).unwrap_or(0),
                    cpu_percent: row.try_get("cpu")?,
                    memory_percent: row.try_get("memory")?,
                    disk_percent: row.try_get("disk")?,
                    load1: row.try_get("load1")?,
                },
            );
        }
        Ok(lows)
    }
}
