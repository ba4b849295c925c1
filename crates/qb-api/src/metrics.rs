//! Host metrics: what a node's agent reports with every heartbeat, and the per-minute and
//! per-hour history the controller keeps of it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{NodeId, NodeName};

/// A node's load as its agent last reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsSample {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Busy share of all CPUs since the previous heartbeat, 0–100.
    pub cpu_percent: f64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The file system of the agent's state directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub uptime_seconds: u64,
    /// On a master: its etcd member, as etcd's own metrics tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSample>,
}

/// A node's etcd member as its own metrics tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EtcdSample {
    /// It knows a leader.
    pub has_leader: bool,
    /// It is the leader.
    pub is_leader: bool,
    /// The database file's size, and the part of it in use (the rest is freed by a defrag);
    /// etcd refuses writes once the file reaches its quota (2 GiB by default).
    pub db_size_bytes: u64,
    pub db_in_use_bytes: u64,
    /// Leader changes the member has seen since it started.
    pub leader_changes: u64,
}

/// A node's load over one minute or one hour: averages of the heartbeats in it, and the peaks
/// that matter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsPoint {
    /// The start of the interval.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// How many heartbeats it was made of.
    pub samples: u32,
    pub cpu_percent: f64,
    pub cpu_percent_max: f64,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The most used during the interval.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

/// How far back a node's metrics go: up to a day by the minute, beyond by the hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MetricsRange {
    #[serde(rename = "1h")]
    #[default]
    Hour,
    #[serde(rename = "6h")]
    SixHours,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    Month,
}

impl MetricsRange {
    pub const ALL: [MetricsRange; 5] = [
        MetricsRange::Hour,
        MetricsRange::SixHours,
        MetricsRange::Day,
        MetricsRange::Week,
        MetricsRange::Month,
    ];

    pub fn duration(self) -> time::Duration {
        match self {
            MetricsRange::Hour => time::Duration::HOUR,
            MetricsRange::SixHours => time::Duration::HOUR * 6,
            MetricsRange::Day => time::Duration::DAY,
            MetricsRange::Week => time::Duration::WEEK,
            MetricsRange::Month => time::Duration::DAY * 30,
        }
    }

    /// The interval of each point: a minute up to a day, an hour beyond.
    pub fn resolution_seconds(self) -> u32 {
        if self.duration() <= time::Duration::DAY {
            60
        } else {
            3600
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricsRange::Hour => "1h",
            MetricsRange::SixHours => "6h",
            MetricsRange::Day => "24h",
            MetricsRange::Week => "7d",
            MetricsRange::Month => "30d",
        }
    }
}

impl std::str::FromStr for MetricsRange {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                crate::InvalidValue(format!(
                    "range must be one of 1h, 6h, 24h, 7d, 30d, not {s:?}"
                ))
            })
    }
}

/// The query of a node's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// How far back: 1h (the default), 6h, 24h, 7d or 30d.
    #[param(value_type = Option<String>, pattern = "^(1h|6h|24h|7d|30d)$")]
    pub range: Option<String>,
}

/// A node's metrics: its last report and its history over the range asked for, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeMetrics {
    pub node: NodeId,
    pub name: NodeName,
    pub range: MetricsRange,
    pub resolution_seconds: u32,
    /// The last heartbeat's figures, while the agent reports (from the replica holding its
    /// channel, else the last minute kept).
    pub latest: Option<MetricsSample>,
    pub points: Vec<MetricsPoint>,
}
