//! Alerts: conditions the controller watches for (a host offline, a disk nearly full, a
//! cluster not healthy), each firing once per object until it resolves, and silences that keep
//! matching alerts quiet for a while.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// What an alert watches for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// The agent of a node in the pool or in a cluster has been silent for three heartbeats.
    HostOffline,
    /// The file system of a host's agent state is over 90 % full.
    DiskFull,
    /// A cluster is degraded or blocked.
    ClusterUnhealthy,
    /// A pod's container waits to be restarted after crashing (`CrashLoopBackOff`), or has
    /// crashed (or been OOM-killed) more than once in the last five minutes.
    PodCrashLooping,
    /// A pod's container was killed for running out of memory in the last five minutes (and
    /// is not crash-looping, which says so itself).
    PodOomKilled,
    /// A pod has been Pending for five minutes.
    PodPending,
    /// A Kubernetes node has not been Ready for a minute (its kubelet does not report, or
    /// reports a problem) while its host's agent is online.
    NodeNotReady,
    /// The scheduler or the controller manager of a cluster has had no leader for a minute
    /// past its lease: no one schedules pods, or runs the controllers.
    NoLeader,
    /// A service of a node's applied plan (etcd, kube-apiserver, kubelet, containerd, ...) is
    /// not running or fails its probe, while the node's agent is online.
    ComponentDown,
    /// Half or more of a cluster's etcd members are unhealthy: etcd has no quorum, so no
    /// leader, and the cluster's API cannot change anything.
    EtcdNoQuorum,
    /// A host's figure stayed above one of the tenant's thresholds ([`ThresholdRule`]).
    HostThreshold,
    /// A certificate of a cluster (a CA, or a component's on a node) expires within 14 days:
    /// its renewal did not happen.
    CertExpiring,
}

impl AlertRule {
    pub const ALL: [AlertRule; 12] = [
        AlertRule::HostOffline,
        AlertRule::DiskFull,
        AlertRule::ClusterUnhealthy,
        AlertRule::PodCrashLooping,
        AlertRule::PodOomKilled,
        AlertRule::PodPending,
        AlertRule::NodeNotReady,
        AlertRule::NoLeader,
        AlertRule::ComponentDown,
        AlertRule::EtcdNoQuorum,
        AlertRule::HostThreshold,
        AlertRule::CertExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertRule::HostOffline => "host_offline",
            AlertRule::DiskFull => "disk_full",
            AlertRule::ClusterUnhealthy => "cluster_unhealthy",
            AlertRule::PodCrashLooping => "pod_crash_looping",
            AlertRule::PodOomKilled => "pod_oom_killed",
            AlertRule::PodPending => "pod_pending",
            AlertRule::NodeNotReady => "node_not_ready",
            AlertRule::NoLeader => "no_leader",
            AlertRule::ComponentDown => "component_down",
            AlertRule::EtcdNoQuorum => "etcd_no_quorum",
            AlertRule::HostThreshold => "host_threshold",
            AlertRule::CertExpiring => "cert_expiring",
        }
    }
}

impl std::str::FromStr for AlertRule {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|r| r.as_str()).collect();
                crate::InvalidValue(format!(
                    "rule must be one of {}, not {}",
                    all.join(", "),
                    crate::quote(s)
                ))
            })
    }
}

/// Ordered: a warning is below critical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Warning,
    Critical,
}

impl AlertSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for AlertSeverity {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "warning" => Ok(AlertSeverity::Warning),
            "critical" => Ok(AlertSeverity::Critical),
            other => Err(crate::InvalidValue(format!(
                "severity must be warning or critical, not {}",
                crate::quote(other)
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One occurrence of a rule on one object, from when it fired to when it resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: String,
    pub rule: AlertRule,
    pub severity: AlertSeverity,
    pub state: AlertState,
    /// `node`, `cluster`, `pod` (named `cluster/namespace/pod`), `service` (named
    /// `node/service`), `kube_node` (named `cluster/node`) or `component` (named
    /// `cluster/component`).
    pub object_kind: String,
    pub object_id: String,
    pub object_name: String,
    /// What is wrong, in a sentence.
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// Whether a silence covered it when it fired.
    pub silenced: bool,
}

/// Which alerts to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `firing` (the default), `resolved` or `all`.
    #[param(pattern = "^(firing|resolved|all)$")]
    pub state: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Keeps alerts of a rule, of an object, or both, quiet until it ends: they still fire and
/// resolve, and are marked silenced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Silence {
    pub id: String,
    /// The rule it covers; every rule when absent.
    pub rule: Option<AlertRule>,
    /// The node or cluster (by name) it covers; every object when absent.
    pub object_name: Option<String>,
    pub comment: String,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
}

impl Silence {
    /// Whether it covers `rule` on `object_name` at `at`.
    pub fn covers(&self, rule: AlertRule, object_name: &str, at: OffsetDateTime) -> bool {
        at < self.ends_at
            && self.rule.is_none_or(|r| r == rule)
            && self.object_name.as_deref().is_none_or(|o| o == object_name)
    }
}

/// A new silence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    pub rule: Option<AlertRule>,
    /// A node's or cluster's name.
    #[schema(min_length = 1, max_length = 253)]
    pub object_name: Option<String>,
    /// How long it lasts, 1 minute to 30 days.
    #[schema(minimum = 1, maximum = 43200)]
    pub duration_minutes: u32,
    /// Why; shown with it.
    #[schema(min_length = 1, max_length = 512)]
    pub comment: String,
}

impl CreateSilence {
    pub const MAX_MINUTES: u32 = 43_200;

    pub fn validate(&self) -> Result<(), crate::InvalidValue> {
        let bad = |m: &str| Err(crate::InvalidValue(m.to_owned()));
        if !(1..=Self::MAX_MINUTES).contains(&self.duration_minutes) {
            return bad("duration_minutes must be between 1 and 43200 (30 days)");
        }
        let comment = self.comment.trim();
        if comment.is_empty() || comment.chars().count() > 512 {
            return bad("comment must say why, in 1 to 512 characters");
        }
        if let Some(object) = &self.object_name
            && (object.is_empty() || object.chars().count() > 253)
        {
            return bad("object_name must be a node's or cluster's name");
        }
        if self.rule.is_none() && self.object_name.is_none() {
            return bad("a silence names a rule, an object, or both");
        }
        Ok(())
    }
}

/// A host figure a tenant's rule watches: each a minute's value as the host reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostMetric {
    /// CPU busy, % (the minute's average).
    Cpu,
    /// Memory in use, % of the host's.
    Memory,
    /// The agent state's file system in use, %.
    Disk,
    /// The one-minute load average.
    Load,
}

impl HostMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            HostMetric::Cpu => "cpu",
            HostMetric::Memory => "memory",
            HostMetric::Disk => "disk",
            HostMetric::Load => "load",
        }
    }

    /// The unit its values are said in.
    pub fn unit(self) -> &'static str {
        match self {
            HostMetric::Load => "",
            _ => " %",
        }
    }
}

impl std::str::FromStr for HostMetric {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            HostMetric::Cpu,
            HostMetric::Memory,
            HostMetric::Disk,
            HostMetric::Load,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            crate::InvalidValue(format!(
                "metric must be cpu, memory, disk or load, not {}",
                crate::quote(s)
            ))
        })
    }
}

/// A tenant's own rule: an alert (`host_threshold`) for each host whose `metric` stayed above
/// `above` for `for_minutes` minutes in a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdRule {
    pub id: String,
    pub name: crate::Name,
    pub metric: HostMetric,
    pub above: f64,
    pub for_minutes: u32,
    pub severity: AlertSeverity,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A new threshold rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThresholdRule {
    pub name: crate::Name,
    pub metric: HostMetric,
    /// The threshold: a percentage (0-100) for cpu, memory and disk, a load for load.
    pub above: f64,
    /// How many minutes in a row, 1 to 60.
    #[schema(minimum = 1, maximum = 60)]
    pub for_minutes: u32,
    /// `warning` (the default) or `critical`.
    #[serde(default)]
    pub severity: Option<AlertSeverity>,
}

impl CreateThresholdRule {
    pub const MAX_MINUTES: u32 = 60;

    pub fn validate(&self) -> Result<(), crate::InvalidValue> {
        let bad = |m: String| Err(crate::InvalidValue(m));
        if !(1..=Self::MAX_MINUTES).contains(&self.for_minutes) {
            return bad("for_minutes must be between 1 and 60".to_owned());
        }
        let most = match self.metric {
            HostMetric::Load => 10_000.0,
            _ => 100.0,
        };
        if !self.above.is_finite() || self.above < 0.0 || self.above >= most {
            return bad(format!(
                "above must be at least 0 and below {most} for {}",
                self.metric.as_str()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_rules_are_checked() {
        let rule = |metric, above, for_minutes| CreateThresholdRule {
            name: "busy".parse().unwrap(),
            metric,
            above,
            for_minutes,
            severity: None,
        };
        assert_eq!(rule(HostMetric::Cpu, 90.0, 10).validate(), Ok(()));
        assert_eq!(rule(HostMetric::Load, 150.0, 1).validate(), Ok(()));
        for (bad, says) in [
            (rule(HostMetric::Cpu, 100.0, 10), "below 100"),
            (rule(HostMetric::Disk, -1.0, 10), "at least 0"),
            (rule(HostMetric::Memory, f64::NAN, 10), "at least 0"),
            (rule(HostMetric::Cpu, 90.0, 0), "between 1 and 60"),
            (rule(HostMetric::Cpu, 90.0, 61), "between 1 and 60"),
        ] {
            let err = bad.validate().unwrap_err().0;
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!("swap".parse::<HostMetric>().is_err());
        assert_eq!("load".parse::<HostMetric>(), Ok(HostMetric::Load));
    }
}
