//! Host metrics from agents' heartbeats. This replica keeps, for each agent it holds, the last
//! report and the current minute's sums; a task writes what was summed since its last write to
//! the store in one batch (once a minute by default; never a write per heartbeat), where parts
//! of the same minute add up, and rolls each finished hour up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qb_api::{EtcdSample, MetricsPoint, MetricsSample, NodeId, TenantId};
use qb_store::Store;
use time::OffsetDateTime;

/// How long a node that stopped reporting is remembered (its last minute written first).
const FORGET_AFTER: time::Duration = time::Duration::minutes(5);

/// The recent metrics of the agents this replica holds, and how fast they answer.
#[derive(Default)]
pub struct HostMetrics {
    nodes: Mutex<HashMap<NodeId, Recent>>,
    round_trips: Mutex<HashMap<TenantId, Histogram>>,
}

/// The upper bounds of the round-trip histogram's buckets, in seconds.
pub const ROUND_TRIP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Durations counted into buckets, as Prometheus's histograms are (each bucket counts what is
/// at most its bound).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; ROUND_TRIP_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(ROUND_TRIP_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

struct Recent {
    tenant: TenantId,
    latest: MetricsSample,
    /// The minute being summed.
    minute: Sums,
    /// Minutes finished and not yet written in full.
    finished: Vec<MetricsPoint>,
}

/// A minute's heartbeats, summed.
#[derive(Clone, Copy)]
struct Sums {
    start: OffsetDateTime,
    samples: u32,
    cpu_percent: f64,
    cpu_percent_max: f64,
    load1: f64,
    memory_used_bytes: f64,
    memory_total_bytes: u64,
    disk_used_bytes: u64,
    disk_total_bytes: u64,
}

impl Sums {
    fn new(start: OffsetDateTime) -> Self {
        Self {
            start,
            samples: 0,
            cpu_percent: 0.0,
            cpu_percent_max: 0.0,
            load1: 0.0,
            memory_used_bytes: 0.0,
            memory_total_bytes: 0,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
        }
    }

    fn add(&mut self, s: &MetricsSample) {
        self.samples += 1;
        self.cpu_percent += s.cpu_percent;
        self.cpu_percent_max = self.cpu_percent_max.max(s.cpu_percent);
        self.load1 += s.load1;
        self.memory_used_bytes += s
            .memory_total_bytes
            .saturating_sub(s.memory_available_bytes) as f64;
        self.memory_total_bytes = s.memory_total_bytes;
        self.disk_used_bytes = self
            .disk_used_bytes
            .max(s.disk_total_bytes.saturating_sub(s.disk_available_bytes));
        self.disk_total_bytes = s.disk_total_bytes;
    }

    fn point(&self) -> MetricsPoint {
        let n = f64::from(self.samples.max(1));
        MetricsPoint {
            at: self.start,
            samples: self.samples,
            cpu_percent: self.cpu_percent / n,
            cpu_percent_max: self.cpu_percent_max,
            load1: self.load1 / n,
            memory_used_bytes: (self.memory_used_bytes / n) as u64,
            memory_total_bytes: self.memory_total_bytes,
            disk_used_bytes: self.disk_used_bytes,
            disk_total_bytes: self.disk_total_bytes,
        }
    }
}

/// The start of `at`'s minute.
fn minute_of(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(at)
}

/// The start of `at`'s hour.
fn hour_of(at: OffsetDateTime) -> OffsetDateTime {
    minute_of(at).replace_minute(0).unwrap_or(at)
}

/// A heartbeat's figures as the API shows them. Values an agent cannot mean (a CPU share
/// outside 0–100, a load that is not a number) are clamped, not stored as sent.
pub fn sample(m: &qb_agent_proto::HostMetrics, at: OffsetDateTime) -> MetricsSample {
    let finite = |v: f32| {
        if v.is_finite() {
            f64::from(v.max(0.0))
        } else {
            0.0
        }
    };
    MetricsSample {
        at,
        cpu_percent: finite(m.cpu_percent).min(100.0),
        load1: finite(m.load1),
        load5: finite(m.load5),
        load15: finite(m.load15),
        memory_total_bytes: m.memory_total_bytes,
        memory_available_bytes: m.memory_available_bytes.min(m.memory_total_bytes),
        disk_total_bytes: m.disk_total_bytes,
        disk_available_bytes: m.disk_available_bytes.min(m.disk_total_bytes),
        uptime_seconds: m.uptime_seconds,
        etcd: m.etcd.as_ref().map(|e| EtcdSample {
            has_leader: e.has_leader,
            is_leader: e.is_leader,
            db_size_bytes: e.db_size_bytes,
            db_in_use_bytes: e.db_in_use_bytes.min(e.db_size_bytes),
            leader_changes: e.leader_changes,
        }),
    }
}

impl HostMetrics {
    /// Takes one heartbeat's figures.
    pub fn record(&self, tenant: TenantId, node: NodeId, sample: MetricsSample) {
        let minute = minute_of(sample.at);
        let mut nodes = self.lock();
        let recent = nodes.entry(node).or_insert_with(|| Recent {
            tenant,
            latest: sample.clone(),
            minute: Sums::new(minute),
            finished: Vec::new(),
        });
        if recent.minute.start != minute {
            if recent.minute.samples > 0 {
                recent.finished.push(recent.minute.point());
            }
            recent.minute = Sums::new(minute);
        }
        recent.minute.add(&sample);
        recent.latest = sample;
    }

    /// An instruction pushed to `node`'s agent was answered after `took`; counted under the
    /// node's tenant once its agent has sent a heartbeat.
    pub fn round_trip(&self, node: NodeId, took: Duration) {
        let Some(tenant) = self.lock().get(&node).map(|r| r.tenant) else {
            return;
        };
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The round trips of `tenant`'s agents held here.
    pub fn round_trips(&self, tenant: TenantId) -> Histogram {
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// The node's last report, if this replica holds its agent.
    pub fn latest(&self, node: NodeId) -> Option<MetricsSample> {
        self.lock().get(&node).map(|r| r.latest.clone())
    }

    /// Every held node's last report.
    pub fn all_latest(&self) -> Vec<(TenantId, NodeId, MetricsSample)> {
        self.lock()
            .iter()
            .map(|(node, r)| (r.tenant, *node, r.latest.clone()))
            .collect()
    }

    /// What was summed since the last call, taken out to be written: finished minutes, and
    /// the part of the current one (whose next part will add up with it in the store). Nodes
    /// silent for long are forgotten.
    fn take(&self, now: OffsetDateTime) -> Vec<(TenantId, NodeId, MetricsPoint)> {
        let mut out = Vec::new();
        self.lock().retain(|node, recent| {
            out.extend(recent.finished.drain(..).map(|p| (recent.tenant, *node, p)));
            if recent.minute.samples > 0 {
                out.push((recent.tenant, *node, recent.minute.point()));
                recent.minute = Sums::new(recent.minute.start);
            }
            now - recent.latest.at < FORGET_AFTER
        });
        out
    }

    /// Writes what was summed every `every` and rolls up each hour as it ends, until the
    /// process does. A failed write is logged and tried again next time.
    pub async fn run(self: Arc<Self>, store: Store, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<(TenantId, NodeId, MetricsPoint)> = Vec::new();
        let mut rolled = hour_of(OffsetDateTime::now_utc());
        loop {
            ticker.tick().await;
            let now = OffsetDateTime::now_utc();
            pending.extend(self.take(now));
            match store.record_node_metrics(&pending).await {
                Ok(()) => pending.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, points = pending.len(), "could not write node metrics; trying again in a minute");
                    // Bounded: an hour of writes for every node, then the oldest go.
                    let cap = self.lock().len().max(1) * 3600 / every.as_secs().max(1) as usize;
                    if pending.len() > cap {
                        pending.drain(..pending.len() - cap);
                    }
                }
            }
            let hour = hour_of(now);
            if hour > rolled {
                match store
                    .roll_up_node_metrics(hour - time::Duration::HOUR, now)
                    .await
                {
                    Ok(()) => rolled = hour,
                    Err(e) => tracing::warn!(error = %e, "could not roll up node metrics"),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Recent>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(at: OffsetDateTime, cpu: f32, available: u64) -> MetricsSample {
        sample(
            &qb_agent_proto::HostMetrics {
                cpu_percent: cpu,
                load1: cpu / 10.0,
                memory_total_bytes: 100,
                memory_available_bytes: available,
                disk_total_bytes: 1000,
                disk_available_bytes: 1000 - u64::from(cpu as u32),
                ..Default::default()
            },
            at,
        )
    }

    #[test]
    fn heartbeats_are_summed_by_the_minute_and_each_part_written_once() {
        let metrics = HostMetrics::default();
        let (tenant, node) = (TenantId::new(), NodeId::new());
        let t0 = minute_of(OffsetDateTime::now_utc()) - time::Duration::minutes(3);
        let at = |s: i64| t0 + time::Duration::seconds(s);
        for (s, cpu, available) in [(0, 10.0, 60), (20, 20.0, 40)] {
            metrics.record(tenant, node, heartbeat(at(s), cpu, available));
        }
        // The minute so far, then only what came after.
        let first = metrics.take(at(30));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].2.at, first[0].2.samples), (t0, 2));
        assert!(metrics.take(at(35)).is_empty(), "nothing new");
        metrics.record(tenant, node, heartbeat(at(40), 60.0, 50));
        metrics.record(tenant, node, heartbeat(at(65), 50.0, 50));
        let written = metrics.take(at(70));
        assert_eq!(written.len(), 2, "{written:?}");
        let (t, n, p) = &written[0];
        assert_eq!((*t, *n, p.at, p.samples), (tenant, node, t0, 1));
        assert_eq!((p.cpu_percent, p.cpu_percent_max), (60.0, 60.0));
        assert_eq!(p.disk_used_bytes, 60, "the peak, not the average");
        assert_eq!((written[1].2.at, written[1].2.samples), (at(60), 1));
        assert_eq!(metrics.latest(node).map(|s| s.cpu_percent), Some(50.0));

        let mut sums = Sums::new(t0);
        for (cpu, available) in [(10.0, 60), (20.0, 40), (60.0, 50)] {
            sums.add(&heartbeat(t0, cpu, available));
        }
        let p = sums.point();
        assert!((p.cpu_percent - 30.0).abs() < 1e-6, "{p:?}");
        assert_eq!((p.cpu_percent_max, p.memory_used_bytes), (60.0, 50));

        // A node silent for minutes is forgotten.
        assert!(metrics.take(t0 + time::Duration::minutes(10)).is_empty());
        assert_eq!(metrics.latest(node), None);
    }

    #[test]
    fn round_trips_are_counted_per_tenant_into_cumulative_buckets() {
        let metrics = HostMetrics::default();
        let (tenant, node) = (TenantId::new(), NodeId::new());
        // Not counted before the node is known to be the tenant's.
        metrics.round_trip(node, Duration::from_millis(3));
        assert_eq!(metrics.round_trips(tenant).count, 0);
        metrics.record(tenant, node, heartbeat(OffsetDateTime::now_utc(), 1.0, 50));
        for ms in [3, 3, 40, 20_000] {
            metrics.round_trip(node, Duration::from_millis(ms));
        }
        let h = metrics.round_trips(tenant);
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 20.046).abs() < 1e-9, "{h:?}");
        // <= 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, ..., 10 s
        assert_eq!(h.buckets, [0, 0, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]);
        assert_eq!(metrics.round_trips(TenantId::new()), Histogram::default());
    }

    #[test]
    fn figures_no_host_can_have_are_clamped() {
        let s = sample(
            &qb_agent_proto::HostMetrics {
                cpu_percent: 250.0,
                load1: f32::NAN,
                load5: -1.0,
                memory_total_bytes: 10,
                memory_available_bytes: 20,
                ..Default::default()
            },
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!((s.cpu_percent, s.load1, s.load5), (100.0, 0.0, 0.0));
        assert_eq!(s.memory_available_bytes, 10);
    }
}
