//! The local etcd member's own view of itself (a leader known, the database's size), read from
//! its Prometheus metrics every few seconds while the node's plan runs etcd, and sent with the
//! heartbeats. Where etcd serves them is the plan's own word: its `--listen-metrics-urls`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_agent_proto::EtcdMetrics;
use qb_agent_proto::plan::Plan;
use tokio::sync::watch;

/// How often the metrics are read.
const EVERY: Duration = Duration::from_secs(5);
/// How long one reading may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A reading older than this is not sent: etcd stopped answering.
const FRESH: Duration = Duration::from_secs(20);

/// The latest reading, shared with the heartbeat.
#[derive(Clone, Default)]
pub struct Latest(Arc<Mutex<Option<(Instant, EtcdMetrics)>>>);

impl Latest {
    /// The latest reading if it is recent.
    pub fn get(&self) -> Option<EtcdMetrics> {
        let latest = self.0.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, m)| m.clone())
    }

    fn set(&self, metrics: Option<EtcdMetrics>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = metrics.map(|m| (Instant::now(), m));
    }
}

/// Where the plan's etcd serves plain-HTTP metrics, if it runs etcd and says so.
pub fn url(plan: &Plan) -> Option<String> {
    let etcd = plan.services.iter().find(|s| s.name.as_str() == "etcd")?;
    let mut args = etcd.command.iter();
    let urls = loop {
        let arg = args.next()?;
        if let Some(v) = arg.strip_prefix("--listen-metrics-urls=") {
            break v.to_owned();
        }
        if arg == "--listen-metrics-urls" {
            break args.next()?.clone();
        }
    };
    urls.split(',')
        .find(|u| u.starts_with("http://"))
        .map(|u| format!("{}/metrics", u.trim_end_matches('/')))
}

/// What etcd's metrics text says; `None` when it lacks what makes a reading.
pub fn parse(text: &str) -> Option<EtcdMetrics> {
    let value = |name: &str| {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    let count = |v: Option<f64>| {
        v.filter(|v| v.is_finite() && *v >= 0.0)
            .map_or(0, |v| v as u64)
    };
    Some(EtcdMetrics {
        has_leader: value("etcd_server_has_leader")? == 1.0,
        is_leader: value("etcd_server_is_leader") == Some(1.0),
        db_size_bytes: count(value("etcd_mvcc_db_total_size_in_bytes")),
        db_in_use_bytes: count(value("etcd_mvcc_db_total_size_in_use_in_bytes")),
        leader_changes: count(value("etcd_server_leader_changes_seen_total")),
    })
}

/// Reads the metrics of the plan's etcd into `latest` every [`EVERY`], until aborted.
pub async fn watch(plan: watch::Receiver<Option<Arc<Plan>>>, latest: Latest) {
    loop {
        let url = plan.borrow().as_deref().and_then(url);
        let reading = match url {
            Some(url) => match crate::probe::fetch(&url, TIMEOUT).await {
                Ok(body) => parse(&String::from_utf8_lossy(&body)),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "cannot read etcd's metrics");
                    None
                }
            },
            None => None,
        };
        latest.set(reading);
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP etcd_server_has_leader Whether or not a leader exists. 1 is existence, 0 is not.
# TYPE etcd_server_has_leader gauge
etcd_server_has_leader 1
etcd_server_is_leader 0
etcd_server_is_learner 0
etcd_server_leader_changes_seen_total 2
etcd_mvcc_db_total_size_in_bytes 2.072576e+06
etcd_mvcc_db_total_size_in_use_in_bytes 1.654784e+06
etcd_server_has_leader_other{x=\"1\"} 0
";

    #[test]
    fn metrics_text_gives_leadership_and_database_size() {
        assert_eq!(
            parse(METRICS),
            Some(EtcdMetrics {
                has_leader: true,
                is_leader: false,
                db_size_bytes: 2_072_576,
                db_in_use_bytes: 1_654_784,
                leader_changes: 2,
            })
        );
        let leaderless = METRICS.replace("etcd_server_has_leader 1", "etcd_server_has_leader 0");
        assert_eq!(parse(&leaderless).map(|m| m.has_leader), Some(false));
        // Not etcd's metrics.
        assert_eq!(parse("go_goroutines 12\n"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn the_url_is_the_plans_listen_metrics_url() {
        let plan = |args: &[&str]| -> Plan {
            serde_json::from_value(serde_json::json!({
                "node_id": qb_api::NodeId::new(), "generation": 1, "artifacts": [], "files": [],
                "state_dirs": [], "services": [{"name": "etcd", "command": args}],
            }))
            .unwrap()
        };
        assert_eq!(
            url(&plan(&[
                "/usr/bin/etcd",
                "--listen-metrics-urls=http://127.0.0.1:2381"
            ])),
            Some("http://127.0.0.1:2381/metrics".to_owned())
        );
        assert_eq!(
            url(&plan(&[
                "/usr/bin/etcd",
                "--listen-metrics-urls",
                "https://x:1,http://[::1]:2381/"
            ])),
            Some("http://[::1]:2381/metrics".to_owned())
        );
        assert_eq!(url(&plan(&["/usr/bin/etcd"])), None);
    }
}
