//! Rendering: the API's objects as JSON or YAML, or as human tables.
//!
//! Table renderers are pure functions of the objects and the current time, so they are tested
//! without a controller.

use std::io::Write;

use anyhow::Context as _;
use comfy_table::{Table, presets};
use qb_api::{
    BootstrapToken, Bundle, BundleManifest, Cluster, ClusterDetail, Description, Event, Labels,
    MeshProbe, Node, NodeAgent, NodeMetrics, NodePlan, NodeRole, PlanState, PreflightReport,
    ServiceReport, Severity, StepState, Token, User, Whoami,
};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod alerts;
mod health;
pub use alerts::*;
pub use health::*;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Where results go: stdout, in the chosen format.
pub struct Output {
    pub format: Format,
}

impl Output {
    /// Prints `value` as JSON/YAML, or the human rendering `table` produces.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
                s.push('\n');
                s
            }
            Format::Yaml => serde_yaml_ng::to_string(value).context("cannot encode YAML")?,
            Format::Table => {
                let mut s = table();
                if !s.is_empty() && !s.ends_with('\n') {
                    s.push('\n');
                }
                s
            }
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")
    }

    /// Prints a list: the items as a JSON/YAML array, or a table (a note on stderr when empty).
    pub fn emit_list<T: Serialize>(
        &self,
        items: &[T],
        what: &str,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.format == Format::Table && items.is_empty() {
            eprintln!("No {what} found.");
            return Ok(());
        }
        self.emit(&items, table)
    }
}

/// A borderless table with kubectl-like spacing and no trailing blanks.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 3 }));
    }
    trim_lines(&t.to_string())
}

/// `Key:   value` lines, aligned, for one object.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        out.push_str(&format!("{:<width$}  {first}\n", format!("{key}:")));
        for more in lines {
            out.push_str(&format!("{:<width$}  {more}\n", ""));
        }
    }
    trim_lines(&out)
}

fn trim_lines(s: &str) -> String {
    let mut out: String = s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out
}

/// How long ago, kubectl style: `42s`, `5m`, `3h`, `12d`, `2y`.
pub fn age(then: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - then).whole_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

/// RFC 3339 in UTC, to the second.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Bytes with a binary unit: `512Mi`, `15.6Gi`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub const NONE: &str = "<none>";

/// A node's last report on one line, then its history as a table.
pub fn node_metrics(m: &NodeMetrics, now: OffsetDateTime) -> String {
    let used = |total: u64, available: u64| total.saturating_sub(available);
    let mut out = match &m.latest {
        Some(s) => format!(
            "Node {}: CPU {:.1}%, load {:.2} {:.2} {:.2}, memory {} of {} used, disk {} of {} \
             used, up {} (reported {} ago)\n",
            m.name,
            s.cpu_percent,
            s.load1,
            s.load5,
            s.load15,
            bytes(used(s.memory_total_bytes, s.memory_available_bytes)),
            bytes(s.memory_total_bytes),
            bytes(used(s.disk_total_bytes, s.disk_available_bytes)),
            bytes(s.disk_total_bytes),
            age(
                now - time::Duration::seconds(s.uptime_seconds.try_into().unwrap_or(i64::MAX)),
                now
            ),
            age(s.at, now),
        ),
        None => format!("Node {}: no report from its agent now.\n", m.name),
    };
    if let Some(e) = m.latest.as_ref().and_then(|s| s.etcd.as_ref()) {
        let role = match (e.has_leader, e.is_leader) {
            (_, true) => "the leader",
            (true, false) => "a follower",
            (false, false) => "WITHOUT A LEADER",
        };
        out.push_str(&format!(
            "etcd: {role}, database {} ({} in use), {} leader changes seen\n",
            bytes(e.db_size_bytes),
            bytes(e.db_in_use_bytes),
            e.leader_changes
        ));
    }
    if m.points.is_empty() {
        out.push_str(&format!(
            "No history over the last {} yet.\n",
            m.range.as_str()
        ));
        return out;
    }
    out.push('\n');
    out.push_str(&table(
        &[
            "TIME",
            "CPU AVG",
            "CPU MAX",
            "LOAD1",
            "MEMORY USED",
            "DISK USED",
        ],
        m.points.iter().map(|p| {
            vec![
                timestamp(p.at),
                format!("{:.1}%", p.cpu_percent),
                format!("{:.1}%", p.cpu_percent_max),
                format!("{:.2}", p.load1),
                format!(
                    "{}/{}",
                    bytes(p.memory_used_bytes),
                    bytes(p.memory_total_bytes)
                ),
                format!("{}/{}", bytes(p.disk_used_bytes), bytes(p.disk_total_bytes)),
            ]
        }),
    ));
    out
}

pub fn labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return NONE.to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(s: String) -> String {
    if s.is_empty() { NONE.to_owned() } else { s }
}

/// What the node list shows at most of a node's addresses; the rest are counted (`,+2`).
const LISTED_ADDRESSES: usize = 2;

/// A node's addresses for a table cell: the address its cluster reaches it at first (when it
/// has one), then the host's others; the first few, then how many more.
fn addresses_cell(n: &Node) -> String {
    let addresses: Vec<&std::net::IpAddr> = n
        .address
        .iter()
        .chain(n.facts.addresses.iter().filter(|a| Some(**a) != n.address))
        .collect();
    let mut cell = addresses
        .iter()
        .take(LISTED_ADDRESSES)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if addresses.len() > LISTED_ADDRESSES {
        cell.push_str(&format!(",+{}", addresses.len() - LISTED_ADDRESSES));
    }
    or_none(cell)
}

/// `yes`/`no`, or `-` when no agent has registered.
pub fn agent_online(agent: Option<&NodeAgent>) -> &'static str {
    match agent {
        None => "-",
        Some(a) if a.online => "yes",
        Some(_) => "no",
    }
}

/// How long ago the agent was last heard from, or `-`.
pub fn agent_last_seen(agent: Option<&NodeAgent>, now: OffsetDateTime) -> String {
    agent
        .and_then(|a| a.last_seen_at)
        .map_or_else(|| "-".to_owned(), |t| age(t, now))
}

/// The agent's version, or `-` when no agent has registered.
pub fn agent_version(agent: Option<&NodeAgent>) -> String {
    agent.map_or_else(|| "-".to_owned(), |a| a.version.clone())
}

/// The node list. The OS and kernel are in `qb node show`, to keep it narrow.
pub fn nodes_table(nodes: &[Node], now: OffsetDateTime) -> String {
    table(
        &[
            "NAME",
            "STATE",
            "CLUSTER",
            "ROLE",
            "ONLINE",
            "LAST-SEEN",
            "AGENT",
            "ARCH",
            "CPUS",
            "MEMORY",
            "ADDRESSES",
            "LABELS",
            "AGE",
        ],
        nodes.iter().map(|n| {
            let agent = n.agent.as_ref();
            vec![
                n.name.to_string(),
                n.state.as_str().to_owned(),
                n.cluster
                    .as_ref()
                    .map_or_else(|| NONE.to_owned(), |c| c.name.to_string()),
                role_name(n.role).to_owned(),
                agent_online(agent).to_owned(),
                agent_last_seen(agent, now),
                agent_version(agent),
                or_none(n.facts.arch.clone()),
                n.facts.cpus.to_string(),
                bytes(n.facts.memory_bytes),
                addresses_cell(n),
                labels(&n.labels),
                age(n.created_at, now),
            ]
        }),
    )
}

pub fn node_fields(n: &Node, now: OffsetDateTime) -> String {
    let when = |t: OffsetDateTime| format!("{} ({} ago)", timestamp(t), age(t, now));
    let mut rows = vec![
        ("Name", n.name.to_string()),
        ("ID", n.id.to_string()),
        ("State", n.state.as_str().to_owned()),
        (
            "Cluster",
            n.cluster
                .as_ref()
                .map_or_else(|| NONE.to_owned(), |c| c.name.to_string()),
        ),
        ("Role", role_name(n.role).to_owned()),
    ];
    if let Some(plan) = &n.plan {
        rows.push(("Plan", plan_status(plan)));
        let services = services(plan);
        if !services.is_empty() {
            rows.push((
                "Services",
                services
                    .iter()
                    .map(|s| format!("{} {}", s.name, service_status(s)))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ));
        }
    }
    match &n.agent {
        None => rows.push(("Agent", format!("{NONE} (no agent has registered)"))),
        Some(a) => rows.extend([
            ("Agent", a.version.clone()),
            ("Online", agent_online(Some(a)).to_owned()),
            (
                "Last seen",
                a.last_seen_at.map_or_else(|| "never".to_owned(), when),
            ),
        ]),
    }
    rows.extend([
        ("Hostname", or_none(n.facts.hostname.clone())),
        ("OS", or_none(n.facts.os.clone())),
        ("Kernel", or_none(n.facts.kernel.clone())),
        ("Arch", or_none(n.facts.arch.clone())),
        ("CPUs", n.facts.cpus.to_string()),
        ("Memory", bytes(n.facts.memory_bytes)),
        (
            "Address",
            n.address.map_or_else(|| NONE.to_owned(), |a| a.to_string()),
        ),
        (
            "Addresses",
            or_none(
                n.facts
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ),
        (
            "Labels",
            or_none(
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ),
        ("Created", when(n.created_at)),
        ("Updated", when(n.updated_at)),
    ]);
    fields(&rows)
}

/// Milliseconds, with as many decimals as make sense: `0.42`, `3.7`, `120`.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

pub fn clusters_table(clusters: &[Cluster], now: OffsetDateTime) -> String {
    table(
        &[
            "NAME",
            "STATE",
            "VERSION",
            "MASTERS",
            "NODES",
            "POD-CIDR",
            "SERVICE-CIDR",
            "AGE",
        ],
        clusters.iter().map(|c| {
            vec![
                c.name.to_string(),
                c.state.as_str().to_owned(),
                c.kubernetes_version.to_string(),
                c.masters.to_string(),
                c.node_count.to_string(),
                c.pod_cidr.to_string(),
                c.service_cidr.to_string(),
                age(c.created_at, now),
            ]
        }),
    )
}

pub fn cluster_detail(d: &ClusterDetail, now: OffsetDateTime) -> String {
    let c = &d.cluster;
    let roles = c
        .roles
        .iter()
        .map(|(node, role)| format!("{node}={}", role_name(Some(*role))))
        .collect::<Vec<_>>()
        .join("\n");
    let state = match &c.state_message {
        Some(message) if !message.is_empty() => format!("{} — {message}", c.state.as_str()),
        _ => c.state.as_str().to_owned(),
    };
    let mut out = fields(&[
        ("Name", c.name.to_string()),
        ("ID", c.id.to_string()),
        ("State", state),
        ("Version", c.kubernetes_version.to_string()),
        (
            "Masters",
            if c.taint_masters {
                format!("{} (tainted: workloads on workers only)", c.masters)
            } else {
                c.masters.to_string()
            },
        ),
        ("Roles", or_none(roles)),
        ("Pod CIDR", c.pod_cidr.to_string()),
        ("Service CIDR", c.service_cidr.to_string()),
        ("Nodes", c.node_count.to_string()),
        (
            "Rollout",
            if c.rollout_paused {
                format!("paused (`qb cluster resume {}`)", c.name)
            } else {
                "on".to_owned()
            },
        ),
        ("Snapshots", crate::commands::cluster::snapshot_schedule(c)),
        (
            "Created",
            format!(
                "{} ({} ago)",
                timestamp(c.created_at),
                age(c.created_at, now)
            ),
        ),
    ]);
    if !d.nodes.is_empty() {
        out.push('\n');
        out.push_str(&cluster_nodes_table(&d.nodes, now));
    }
    let services: Vec<(&Node, &ServiceReport)> = d
        .nodes
        .iter()
        .flat_map(|n| n.plan.iter().flat_map(services).map(move |s| (n, s)))
        .collect();
    if !services.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["NODE", "SERVICE", "STATUS", "RESTARTS", "LAST-EXIT"],
            services.iter().map(|(n, s)| {
                vec![
                    n.name.to_string(),
                    s.name.clone(),
                    service_health(s).to_owned(),
                    s.restarts.to_string(),
                    s.last_exit.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            }),
        ));
    }
    if !d.addons.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["ADD-ON", "VERSION", "HEALTH", "CHECKED", "MESSAGE"],
            d.addons.iter().map(|a| {
                vec![
                    a.name.clone(),
                    a.version.clone().unwrap_or_else(|| "-".to_owned()),
                    a.health.as_str().to_owned(),
                    format!("{} ago", age(a.checked_at, now)),
                    a.message.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            }),
        ));
    }
    out
}

/// A cluster's nodes: what they are to the cluster, and how their plans are going.
pub fn cluster_nodes_table(nodes: &[Node], now: OffsetDateTime) -> String {
    table(
        &[
            "NAME",
            "STATE",
            "ROLE",
            "ONLINE",
            "LAST-SEEN",
            "AGENT",
            "ADDRESSES",
            "VERSION",
            "PLAN",
        ],
        nodes.iter().map(|n| {
            let agent = n.agent.as_ref();
            vec![
                n.name.to_string(),
                n.state.as_str().to_owned(),
                role_name(n.role).to_owned(),
                agent_online(agent).to_owned(),
                agent_last_seen(agent, now),
                agent_version(agent),
                addresses_cell(n),
                n.plan
                    .as_ref()
                    .and_then(|p| p.kubernetes_version.as_ref())
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
                n.plan
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| truncate(&plan_status(p), 72)),
            ]
        }),
    )
}

/// `master`, `worker`, or `-` before placement.
pub fn role_name(role: Option<NodeRole>) -> &'static str {
    match role {
        Some(NodeRole::Master) => "master",
        Some(NodeRole::Worker) => "worker",
        None => "-",
    }
}

/// How a node's plan is going: `gen 4 applied`, `gen 4 applying (service:etcd running)`,
/// `gen 4 failed: <why>`; and when the agent has not caught up with the newest generation, both.
pub fn plan_status(plan: &NodePlan) -> String {
    let Some(report) = &plan.report else {
        return format!("gen {} published, no report yet", plan.generation);
    };
    let generation = report.generation;
    let status = match report.state {
        PlanState::Applied => format!("gen {generation} applied"),
        PlanState::Applying => {
            let step = report
                .steps
                .iter()
                .find(|s| s.state == StepState::Running)
                .or_else(|| report.steps.iter().find(|s| s.state == StepState::Pending));
            match step {
                Some(step) => format!(
                    "gen {generation} applying ({} {})",
                    step.name,
                    step_state(step.state)
                ),
                None => format!("gen {generation} applying"),
            }
        }
        PlanState::Failed | PlanState::Refused => {
            let verb = if report.state == PlanState::Failed {
                "failed"
            } else {
                "refused"
            };
            let failed = report
                .steps
                .iter()
                .find(|s| s.state == StepState::Failed)
                .or_else(|| report.steps.iter().find(|s| s.message.is_some()));
            match failed {
                Some(step) => match &step.message {
                    Some(message) => format!("gen {generation} {verb}: {}: {message}", step.name),
                    None => format!("gen {generation} {verb}: {}", step.name),
                },
                None => format!("gen {generation} {verb}"),
            }
        }
    };
    if report.generation < plan.generation {
        format!("gen {} published; agent at {status}", plan.generation)
    } else {
        status
    }
}

fn step_state(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed => "failed",
    }
}

/// The services the agent last reported for a plan.
fn services(plan: &NodePlan) -> &[ServiceReport] {
    plan.report.as_ref().map_or(&[], |r| r.services.as_slice())
}

/// `ok`, `unhealthy` or `not running`.
fn service_health(s: &ServiceReport) -> &'static str {
    match (s.running, s.healthy) {
        (true, true) => "ok",
        (true, false) => "unhealthy",
        (false, _) => "not running",
    }
}

/// `ok, 0 restarts`; `not running, 3 restarts (last exit: exit status 1)`.
pub fn service_status(s: &ServiceReport) -> String {
    let mut out = format!(
        "{}, {} restart{}",
        service_health(s),
        s.restarts,
        if s.restarts == 1 { "" } else { "s" }
    );
    if let Some(exit) = s
        .last_exit
        .as_ref()
        .filter(|_| s.restarts > 0 || !s.running)
    {
        out.push_str(&format!(" (last exit: {exit})"));
    }
    out
}

/// `etcd 3.4.23, kube-apiserver 1.20.2`.
pub fn bundle_artifacts(m: &BundleManifest) -> String {
    m.artifacts
        .iter()
        .map(|a| format!("{} {}", a.name, a.version))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn bundles_table(bundles: &[Bundle], now: OffsetDateTime) -> String {
    table(
        &["VERSION", "ARTIFACTS", "IMPORTED"],
        bundles.iter().map(|b| {
            vec![
                b.manifest.kubernetes_version.to_string(),
                bundle_artifacts(&b.manifest),
                format!("{} ago", age(b.imported_at, now)),
            ]
        }),
    )
}

pub fn bundle_fields(b: &Bundle, now: OffsetDateTime) -> String {
    let mut out = fields(&[
        ("Version", b.manifest.kubernetes_version.to_string()),
        (
            "Imported",
            format!(
                "{} ({} ago)",
                timestamp(b.imported_at),
                age(b.imported_at, now)
            ),
        ),
        ("Artifacts", b.manifest.artifacts.len().to_string()),
    ]);
    out.push('\n');
    out.push_str(&table(
        &["NAME", "VERSION", "SIZE", "SHA256"],
        b.manifest.artifacts.iter().map(|a| {
            vec![
                a.name.clone(),
                a.version.clone(),
                bytes(a.size),
                a.sha256.clone(),
            ]
        }),
    ));
    out
}

/// A preflight result: a summary line, the problems, the local checks that failed (warnings
/// too), and the network matrix: its failed cells, or with `all` every cell. `now` adds how long
/// ago it ran.
pub fn preflight_report(r: &PreflightReport, all: bool, now: Option<OffsetDateTime>) -> String {
    let mut nodes: std::collections::BTreeSet<&str> =
        r.checks.iter().map(|c| c.node_name.as_str()).collect();
    nodes.extend(r.mesh.iter().flat_map(|p| [p.from.as_str(), p.to.as_str()]));
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut out = format!(
        "Preflight of {} {} in {} ms: {}, {}.",
        r.cluster.name,
        if r.passed { "passed" } else { "FAILED" },
        r.duration_ms,
        plural(nodes.len(), "node", "nodes"),
        plural(r.mesh.len(), "probe", "probes"),
    );
    if let Some(now) = now {
        out.push_str(&format!(
            " Run at {} ({} ago).",
            timestamp(r.started_at),
            age(r.started_at, now)
        ));
    }
    out.push('\n');

    if !r.problems.is_empty() {
        out.push_str("\nProblems:\n");
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }

    let failed: Vec<_> = r.checks.iter().filter(|c| !c.check.ok).collect();
    if !failed.is_empty() {
        out.push_str(&format!(
            "\nFailed checks ({} of {} passed):\n",
            r.checks.len() - failed.len(),
            r.checks.len()
        ));
        out.push_str(&table(
            &["NODE", "CHECK", "SEVERITY", "DETAIL"],
            failed.iter().map(|c| {
                vec![
                    c.node_name.to_string(),
                    c.check.name.clone(),
                    match c.check.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    }
                    .to_owned(),
                    c.check.detail.clone(),
                ]
            }),
        ));
    } else if !r.checks.is_empty() {
        out.push_str(&format!("\nAll {} local checks passed.\n", r.checks.len()));
    }

    let ok = r.mesh.iter().filter(|p| p.ok).count();
    if !r.mesh.is_empty() {
        out.push_str(&format!(
            "\nNetwork: {ok} of {} OK.\n",
            plural(r.mesh.len(), "probe", "probes")
        ));
    }
    let port = |p: &MeshProbe| format!("{}/{}", p.port, p.protocol.as_str());
    let error = |p: &MeshProbe| p.error.clone().unwrap_or_else(|| "failed".to_owned());
    if all && !r.mesh.is_empty() {
        out.push_str(&table(
            &["FROM", "TO", "PORT", "RESULT", "LATENCY"],
            r.mesh.iter().map(|p| {
                vec![
                    p.from.to_string(),
                    p.to.to_string(),
                    port(p),
                    if p.ok { "ok".to_owned() } else { error(p) },
                    p.latency_us.map_or_else(
                        || "-".to_owned(),
                        |us| format!("{} ms", millis(us as f64 / 1000.0)),
                    ),
                ]
            }),
        ));
    } else if ok < r.mesh.len() {
        out.push_str(&table(
            &["FROM", "TO", "PORT", "ERROR"],
            r.mesh
                .iter()
                .filter(|p| !p.ok)
                .map(|p| vec![p.from.to_string(), p.to.to_string(), port(p), error(p)]),
        ));
    }
    out
}

pub fn users_table(users: &[User], now: OffsetDateTime) -> String {
    table(
        &["NAME", "ROLE", "ID", "AGE"],
        users.iter().map(|u| {
            vec![
                u.name.to_string(),
                u.role.as_str().to_owned(),
                u.id.to_string(),
                age(u.created_at, now),
            ]
        }),
    )
}

/// `active`, `revoked` or `expired`.
pub fn token_status(t: &Token, now: OffsetDateTime) -> &'static str {
    lifetime_status(t.revoked_at, t.expires_at, now)
}

/// What any token is as time passes: `active`, `revoked` or `expired`.
fn lifetime_status(
    revoked_at: Option<OffsetDateTime>,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> &'static str {
    if revoked_at.is_some() {
        "revoked"
    } else if expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

/// A token's description, or [`NONE`].
fn description_cell(description: Option<&Description>) -> String {
    or_none(description.map(ToString::to_string).unwrap_or_default())
}

pub fn tokens_table(tokens: &[Token], now: OffsetDateTime) -> String {
    table(
        &[
            "ID",
            "USER",
            "ROLE",
            "STATUS",
            "DESCRIPTION",
            "EXPIRES",
            "LAST-USED",
            "AGE",
        ],
        tokens.iter().map(|t| {
            vec![
                t.id.to_string(),
                t.user.to_string(),
                t.role.as_str().to_owned(),
                token_status(t, now).to_owned(),
                description_cell(t.description.as_ref()),
                timestamp(t.expires_at),
                t.last_used_at
                    .map_or_else(|| "never".to_owned(), |u| format!("{} ago", age(u, now))),
                age(t.created_at, now),
            ]
        }),
    )
}

/// `active`, `revoked`, `expired` or `used-up`.
pub fn bootstrap_token_status(t: &BootstrapToken, now: OffsetDateTime) -> &'static str {
    match lifetime_status(t.revoked_at, t.expires_at, now) {
        "active" if t.uses >= t.max_uses => "used-up",
        status => status,
    }
}

pub fn bootstrap_tokens_table(tokens: &[BootstrapToken], now: OffsetDateTime) -> String {
    table(
        &["ID", "STATUS", "USES", "DESCRIPTION", "EXPIRES", "AGE"],
        tokens.iter().map(|t| {
            vec![
                t.id.to_string(),
                bootstrap_token_status(t, now).to_owned(),
                format!("{}/{}", t.uses, t.max_uses),
                description_cell(t.description.as_ref()),
                timestamp(t.expires_at),
                age(t.created_at, now),
            ]
        }),
    )
}

/// At most `max` characters, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn events_table(events: &[Event]) -> String {
    table(
        &["ID", "TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"],
        events.iter().map(|e| {
            let detail = match &e.detail {
                serde_json::Value::Null => String::new(),
                serde_json::Value::Object(m) if m.is_empty() => String::new(),
                other => truncate(&other.to_string(), 80),
            };
            vec![
                e.id.to_string(),
                timestamp(e.at),
                e.actor.clone(),
                e.action.clone(),
                format!("{}/{}", e.object_kind, e.object_name),
                detail,
            ]
        }),
    )
}

pub fn whoami_fields(w: &Whoami, context: &str, server: &str) -> String {
    fields(&[
        ("User", w.user.to_string()),
        ("Role", w.role.as_str().to_owned()),
        ("Tenant", w.tenant.to_string()),
        ("Token", w.token_id.to_string()),
        ("Context", context.to_owned()),
        ("Server", server.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use qb_api::{
        ClusterRef, ClusterState, MasterCount, NodeAgent, NodeFacts, NodeState, Role, TokenId,
        UserId,
    };
    use std::collections::BTreeMap;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-05-01 12:00:00 UTC);

    fn node(name: &str, state: NodeState, cluster: Option<&str>, labels: &[(&str, &str)]) -> Node {
        Node {
            id: qb_api::NodeId::new(),
            name: name.parse().expect("name"),
            state,
            cluster: cluster.map(|c| ClusterRef {
                id: qb_api::ClusterId::new(),
                name: c.parse().expect("cluster"),
            }),
            facts: NodeFacts {
                hostname: name.to_owned(),
                os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
                kernel: "6.1.0".to_owned(),
                arch: "x86_64".to_owned(),
                cpus: 8,
                memory_bytes: 16 * 1024 * 1024 * 1024,
                addresses: vec![
                    "10.0.0.5".parse().expect("ip"),
                    "fd00::5".parse().expect("ip"),
                ],
                interfaces: Vec::new(),
                route_source: None,
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.parse().expect("key"), v.parse().expect("value")))
                .collect(),
            agent: None,
            role: None,
            address: None,
            plan: None,
            created_at: datetime!(2024-04-28 12:00:00 UTC),
            updated_at: datetime!(2024-05-01 11:59:30 UTC),
        }
    }

    /// A table line's cells, one space apart.
    fn words(line: &str) -> String {
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn agent(online: bool, seen: Option<OffsetDateTime>) -> Option<NodeAgent> {
        Some(NodeAgent {
            version: "0.1.0".to_owned(),
            build: None,
            protocol: Some(3),
            online,
            last_seen_at: seen,
        })
    }

    #[test]
    fn node_table_has_the_documented_columns() {
        let mut online = node(
            "host-1",
            NodeState::Attached,
            Some("clus100"),
            &[("rack", "r1"), ("zone", "a")],
        );
        online.agent = agent(true, Some(datetime!(2024-05-01 11:59:55 UTC)));
        online.role = Some(qb_api::NodeRole::Master);
        // The address its cluster reaches it at comes first.
        online.address = Some("fd00::5".parse().expect("ip"));
        let mut offline = node("host-3", NodeState::Authorized, None, &[]);
        offline.agent = agent(false, Some(datetime!(2024-04-30 12:00:00 UTC)));
        offline
            .facts
            .addresses
            .push("192.0.2.7".parse().expect("ip"));
        offline
            .facts
            .addresses
            .push("192.0.2.8".parse().expect("ip"));
        let mut never = node("host-4", NodeState::Pending, None, &[]);
        never.agent = agent(false, None);
        let nodes = vec![
            online,
            node("host-2.rack2", NodeState::Pending, None, &[]),
            offline,
            never,
        ];
        let out = nodes_table(&nodes, NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(
            words(lines[0]),
            "NAME STATE CLUSTER ROLE ONLINE LAST-SEEN AGENT ARCH CPUS MEMORY ADDRESSES LABELS AGE"
        );
        assert!(lines[0].starts_with("NAME   "), "{out}");
        assert!(lines[1].starts_with("host-1 "), "{out}");
        let rows: Vec<String> = lines[1..].iter().map(|l| words(l)).collect();
        assert_eq!(
            rows,
            [
                "host-1 attached clus100 master yes 5s 0.1.0 x86_64 8 16Gi fd00::5,10.0.0.5 rack=r1,zone=a 3d",
                "host-2.rack2 pending <none> - - - - x86_64 8 16Gi 10.0.0.5,fd00::5 <none> 3d",
                "host-3 authorized <none> - no 24h 0.1.0 x86_64 8 16Gi 10.0.0.5,fd00::5,+2 <none> 3d",
                "host-4 pending <none> - no - 0.1.0 x86_64 8 16Gi 10.0.0.5,fd00::5 <none> 3d",
            ],
            "{out}"
        );
        // Columns line up: every row's STATE and ONLINE start where the header's do.
        for column in ["STATE", "ROLE", "ONLINE", "LAST-SEEN"] {
            let col = lines[0].find(column).expect(column);
            for line in &lines[1..] {
                let before = &line[..col];
                assert!(
                    before.ends_with("   ") && !line[col..].starts_with(' '),
                    "{column} misaligned in {line:?}"
                );
            }
        }
        assert!(out.lines().all(|l| l == l.trim_end()), "trailing blanks");
        // Narrow enough for a wide terminal with typical values.
        assert!(lines.iter().all(|l| l.chars().count() <= 150), "{out}");
    }

    #[test]
    fn node_fields_list_every_label_and_address() {
        let out = node_fields(
            &node(
                "host-1",
                NodeState::Authorized,
                None,
                &[("a", "1"), ("b", "")],
            ),
            NOW,
        );
        assert!(out.contains("State:      authorized\n"), "{out}");
        assert!(
            out.contains("Agent:      <none> (no agent has registered)\n"),
            "{out}"
        );
        assert!(!out.contains("Online:"), "{out}");
        assert!(out.contains("Labels:     a=1\n            b=\n"), "{out}");
        assert!(
            out.contains("Addresses:  10.0.0.5\n            fd00::5\n"),
            "{out}"
        );
        assert!(
            out.contains("Created:    2024-04-28T12:00:00Z (3d ago)"),
            "{out}"
        );
    }

    #[test]
    fn node_fields_show_the_agent() {
        let mut n = node("host-1", NodeState::Attached, Some("c1"), &[]);
        n.agent = agent(true, Some(datetime!(2024-05-01 11:59:58 UTC)));
        let out = node_fields(&n, NOW);
        assert!(
            out.contains(
                "Cluster:    c1\nRole:       -\nAgent:      0.1.0\nOnline:     yes\n\
                 Last seen:  2024-05-01T11:59:58Z (2s ago)\nHostname:   host-1\n"
            ),
            "{out}"
        );
        n.agent = agent(false, None);
        let out = node_fields(&n, NOW);
        assert!(out.contains("Online:     no\nLast seen:  never\n"), "{out}");
    }

    #[test]
    fn round_trips_in_milliseconds() {
        assert_eq!(
            [
                millis(0.0),
                millis(0.4242),
                millis(3.75),
                millis(12.34),
                millis(99.94),
                millis(120.4),
                millis(5001.0)
            ],
            ["0.00", "0.42", "3.75", "12.3", "99.9", "120", "5001"]
        );
    }

    fn cluster() -> Cluster {
        Cluster {
            id: qb_api::ClusterId::new(),
            name: "clus100".parse().expect("name"),
            kubernetes_version: "1.20.2".parse().expect("version"),
            pod_cidr: "10.20.0.0/16".parse().expect("cidr"),
            service_cidr: "10.21.0.0/16".parse().expect("cidr"),
            masters: MasterCount::Auto,
            roles: BTreeMap::from([("host-1".parse().expect("node"), qb_api::NodeRole::Master)]),
            taint_masters: false,
            rollout_paused: false,
            snapshot_interval_minutes: 720,
            snapshot_retention: 5,
            state: ClusterState::Pending,
            state_message: None,
            state_since: datetime!(2024-05-01 11:00:00 UTC),
            node_count: 3,
            created_at: datetime!(2024-05-01 11:00:00 UTC),
        }
    }

    #[test]
    fn cluster_table_and_detail() {
        let out = clusters_table(&[cluster()], NOW);
        assert_eq!(
            out,
            "NAME      STATE     VERSION   MASTERS   NODES   POD-CIDR       SERVICE-CIDR   AGE\n\
             clus100   pending   1.20.2    auto      3       10.20.0.0/16   10.21.0.0/16   1h\n"
        );
        let states: Vec<String> = ClusterState::ALL
            .iter()
            .map(|state| {
                let mut c = cluster();
                c.state = *state;
                let out = clusters_table(&[c], NOW);
                let row = out.lines().nth(1).unwrap_or_default();
                row.split_whitespace().nth(1).unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(
            states,
            [
                "empty",
                "pending",
                "preflight",
                "installing",
                "ready",
                "degraded",
                "blocked"
            ]
        );
        let detail = ClusterDetail {
            cluster: cluster(),
            nodes: vec![node("host-1", NodeState::Attached, Some("clus100"), &[])],
            addons: Vec::new(),
        };
        let out = cluster_detail(&detail, NOW);
        assert!(out.contains("Roles:         host-1=master\n"), "{out}");
        assert!(out.contains("\n\nNAME "), "{out}");
    }

    fn plan(
        generation: u64,
        state: PlanState,
        steps: &[(&str, StepState, Option<&str>)],
    ) -> NodePlan {
        NodePlan {
            generation,
            kubernetes_version: None,
            report: Some(qb_api::PlanReport {
                generation,
                state,
                steps: steps
                    .iter()
                    .map(|(name, state, message)| qb_api::StepReport {
                        name: (*name).to_owned(),
                        state: *state,
                        message: message.map(str::to_owned),
                    })
                    .collect(),
                services: Vec::new(),
            }),
        }
    }

    fn service(
        name: &str,
        running: bool,
        healthy: bool,
        restarts: u32,
        exit: Option<&str>,
    ) -> ServiceReport {
        ServiceReport {
            name: name.to_owned(),
            running,
            healthy,
            restarts,
            pid: running.then_some(4242),
            last_exit: exit.map(str::to_owned),
        }
    }

    #[test]
    fn plan_statuses() {
        use StepState::{Done, Failed, Pending, Running};
        let applied = plan(4, PlanState::Applied, &[("artifacts", Done, None)]);
        let applying = plan(
            4,
            PlanState::Applying,
            &[
                ("artifacts", Done, None),
                ("files", Done, None),
                ("service:etcd", Running, None),
                ("service:kube-apiserver", Pending, None),
            ],
        );
        let starting = plan(4, PlanState::Applying, &[("artifacts", Pending, None)]);
        let failed = plan(
            4,
            PlanState::Failed,
            &[
                ("artifacts", Done, None),
                (
                    "service:etcd",
                    Failed,
                    Some("probe on 127.0.0.1:2379 failed"),
                ),
            ],
        );
        let refused = plan(5, PlanState::Refused, &[]);
        let mut behind = applied.clone();
        behind.generation = 5;
        let unreported = NodePlan {
            generation: 1,
            kubernetes_version: None,
            report: None,
        };
        let statuses: Vec<String> = [
            applied, applying, starting, failed, refused, behind, unreported,
        ]
        .iter()
        .map(plan_status)
        .collect();
        assert_eq!(
            statuses,
            [
                "gen 4 applied",
                "gen 4 applying (service:etcd running)",
                "gen 4 applying (artifacts pending)",
                "gen 4 failed: service:etcd: probe on 127.0.0.1:2379 failed",
                "gen 5 refused",
                "gen 5 published; agent at gen 4 applied",
                "gen 1 published, no report yet",
            ]
        );
        assert_eq!(
            [
                service_status(&service("etcd", true, true, 0, None)),
                service_status(&service("etcd", true, true, 1, Some("exit status 1"))),
                service_status(&service("kubelet", true, false, 2, None)),
                service_status(&service("kubelet", false, false, 3, Some("signal 9"))),
            ],
            [
                "ok, 0 restarts",
                "ok, 1 restart (last exit: exit status 1)",
                "unhealthy, 2 restarts",
                "not running, 3 restarts (last exit: signal 9)",
            ]
        );
    }

    #[test]
    fn node_fields_show_role_plan_and_services() {
        let mut n = node("host-1", NodeState::Attached, Some("clus100"), &[]);
        n.role = Some(qb_api::NodeRole::Master);
        let mut p = plan(4, PlanState::Applied, &[]);
        if let Some(r) = p.report.as_mut() {
            r.services = vec![
                service("etcd", true, true, 0, None),
                service("kube-apiserver", true, true, 1, Some("exit status 2")),
            ];
        }
        n.plan = Some(p);
        let out = node_fields(&n, NOW);
        assert!(
            out.contains(
                "Cluster:    clus100\n\
                 Role:       master\n\
                 Plan:       gen 4 applied\n\
                 Services:   etcd ok, 0 restarts\n\
                 \x20           kube-apiserver ok, 1 restart (last exit: exit status 2)\n\
                 Agent:      <none>"
            ),
            "{out}"
        );
    }

    #[test]
    fn cluster_detail_shows_state_roles_plans_and_services() {
        let mut c = cluster();
        c.id = serde_json::from_value(serde_json::json!("0190b5a4-8f4e-7c8b-9d0a-1b2c3d4e5f60"))
            .expect("id");
        c.state = ClusterState::Blocked;
        c.state_message =
            Some("preflight failed: host-2: port 2379/tcp: address in use".to_owned());
        let mut master = node("host-1", NodeState::Attached, Some("clus100"), &[]);
        master.role = Some(qb_api::NodeRole::Master);
        master.agent = agent(true, Some(datetime!(2024-05-01 11:59:58 UTC)));
        let mut p = plan(
            4,
            PlanState::Applying,
            &[
                ("artifacts", StepState::Done, None),
                ("service:etcd", StepState::Running, None),
            ],
        );
        if let Some(r) = p.report.as_mut() {
            r.services = vec![
                service("etcd", true, true, 0, None),
                service("kube-apiserver", false, false, 3, Some("exit status 1")),
            ];
        }
        p.kubernetes_version = Some("1.20.2+qb.1".parse().expect("version"));
        master.plan = Some(p);
        let mut worker = node("host-2", NodeState::Attached, Some("clus100"), &[]);
        worker.role = Some(qb_api::NodeRole::Worker);
        worker.plan = Some(plan(
            2,
            PlanState::Failed,
            &[(
                "artifacts",
                StepState::Failed,
                Some("download of kubelet: connection reset"),
            )],
        ));
        let fresh = node("host-3", NodeState::Attached, Some("clus100"), &[]);
        let detail = ClusterDetail {
            cluster: c,
            nodes: vec![master, worker, fresh],
            addons: vec![qb_api::AddonStatus {
                name: "qb-dns".to_owned(),
                version: Some("0.1.0".to_owned()),
                health: qb_api::AddonHealth::Progressing,
                message: Some("1 of 2 replicas ready, 2 of 2 updated".to_owned()),
                checked_at: NOW - time::Duration::seconds(4),
            }],
        };
        assert_eq!(
            cluster_detail(&detail, NOW),
            "Name:          clus100\n\
            ID:            0190b5a4-8f4e-7c8b-9d0a-1b2c3d4e5f60\n\
            State:         blocked — preflight failed: host-2: port 2379/tcp: address in use\n\
            Version:       1.20.2\n\
            Masters:       auto\n\
            Roles:         host-1=master\n\
            Pod CIDR:      10.20.0.0/16\n\
            Service CIDR:  10.21.0.0/16\n\
            Nodes:         3\n\
            Rollout:       on\n\
            Snapshots:     a snapshot every 720 minutes, the last 5 kept\n\
            Created:       2024-05-01T11:00:00Z (1h ago)\n\
            \n\
            NAME     STATE      ROLE     ONLINE   LAST-SEEN   AGENT   ADDRESSES          VERSION       PLAN\n\
            host-1   attached   master   yes      2s          0.1.0   10.0.0.5,fd00::5   1.20.2+qb.1   gen 4 applying (service:etcd running)\n\
            host-2   attached   worker   -        -           -       10.0.0.5,fd00::5   -             gen 2 failed: artifacts: download of kubelet: connection reset\n\
            host-3   attached   -        -        -           -       10.0.0.5,fd00::5   -             -\n\
            \n\
            NODE     SERVICE          STATUS        RESTARTS   LAST-EXIT\n\
            host-1   etcd             ok            0          -\n\
            host-1   kube-apiserver   not running   3          exit status 1\n\
            \n\
            ADD-ON   VERSION   HEALTH        CHECKED   MESSAGE\n\
            qb-dns   0.1.0     progressing   4s ago    1 of 2 replicas ready, 2 of 2 updated\n"
        );
    }

    #[test]
    fn bundles() {
        let bundle = Bundle {
            manifest: BundleManifest {
                kubernetes_version: "1.20.2".parse().expect("version"),
                artifacts: vec![
                    qb_api::BundleArtifact {
                        name: "etcd".to_owned(),
                        version: "3.4.23".to_owned(),
                        sha256: "ab".repeat(32),
                        size: 22 << 20,
                        file: None,
                    },
                    qb_api::BundleArtifact {
                        name: "kube-apiserver".to_owned(),
                        version: "1.20.2".to_owned(),
                        sha256: "cd".repeat(32),
                        size: 118_000_000,
                        file: None,
                    },
                ],
            },
            imported_at: datetime!(2024-05-01 10:00:00 UTC),
        };
        assert_eq!(
            bundles_table(std::slice::from_ref(&bundle), NOW),
            "VERSION   ARTIFACTS                            IMPORTED\n\
            1.20.2    etcd 3.4.23, kube-apiserver 1.20.2   2h ago\n"
        );
        assert_eq!(
            bundle_fields(&bundle, NOW),
            "Version:    1.20.2\n\
            Imported:   2024-05-01T10:00:00Z (2h ago)\n\
            Artifacts:  2\n\
            \n\
            NAME             VERSION   SIZE    SHA256\n\
            etcd             3.4.23    22Mi    abababababababababababababababababababababababababababababababab\n\
            kube-apiserver   1.20.2    113Mi   cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\n"
        );
        assert_eq!(
            bundle_artifacts(&bundle.manifest),
            "etcd 3.4.23, kube-apiserver 1.20.2"
        );
    }

    fn preflight(passed: bool) -> PreflightReport {
        let id = |_: &str| qb_api::NodeId::new();
        let check = |node: &str, name: &str, ok: bool, severity: Severity, detail: &str| {
            qb_api::NodeCheck {
                node: id(node),
                node_name: node.parse().expect("node"),
                check: qb_api::CheckResult {
                    name: name.to_owned(),
                    ok,
                    severity,
                    detail: detail.to_owned(),
                },
            }
        };
        let probe =
            |from: &str, to: &str, port: u16, latency_us: Option<u64>, error: Option<&str>| {
                MeshProbe {
                    from: from.parse().expect("node"),
                    to: to.parse().expect("node"),
                    port,
                    protocol: qb_api::Protocol::Tcp,
                    ok: error.is_none(),
                    latency_us,
                    error: error.map(str::to_owned),
                }
            };
        let mut checks = vec![
            check(
                "host-1",
                "memory",
                true,
                Severity::Error,
                "16.0 GiB, need 1.0 GiB",
            ),
            check(
                "host-2",
                "swap",
                false,
                Severity::Warning,
                "swap is on (2.0 GiB)",
            ),
            check(
                "host-2",
                "memory",
                true,
                Severity::Error,
                "16.0 GiB, need 1.0 GiB",
            ),
        ];
        let mut mesh = vec![
            probe("host-1", "host-2", 2379, Some(412), None),
            probe("host-1", "host-2", 10250, Some(1_250), None),
            probe("host-2", "host-1", 2379, Some(388), None),
            probe("host-2", "host-1", 10250, Some(15_020), None),
        ];
        let mut problems = Vec::new();
        if !passed {
            checks.push(check(
                "host-1",
                "port 2380/tcp",
                false,
                Severity::Error,
                "address in use",
            ));
            mesh[2] = probe("host-2", "host-1", 2379, None, Some("connection refused"));
            problems = vec![
                "host-1: port 2380/tcp: address in use".to_owned(),
                "host-2 cannot reach host-1 on 2379/tcp: connection refused".to_owned(),
            ];
        }
        PreflightReport {
            id: serde_json::from_value(serde_json::json!("0190b5a4-8f4e-7c8b-9d0a-1b2c3d4e5f60"))
                .expect("uuid"),
            cluster: ClusterRef {
                id: qb_api::ClusterId::new(),
                name: "clus100".parse().expect("name"),
            },
            started_at: datetime!(2024-05-01 11:57:00 UTC),
            duration_ms: 412,
            passed,
            problems,
            checks,
            mesh,
        }
    }

    #[test]
    fn preflight_reports() {
        let failed = preflight(false);
        // What both views of the failed preflight show between the headline and the network.
        const FAILED: &str = "\n\
            Problems:\n\
            \x20 - host-1: port 2380/tcp: address in use\n\
            \x20 - host-2 cannot reach host-1 on 2379/tcp: connection refused\n\
            \n\
            Failed checks (2 of 4 passed):\n\
            NODE     CHECK           SEVERITY   DETAIL\n\
            host-2   swap            warning    swap is on (2.0 GiB)\n\
            host-1   port 2380/tcp   error      address in use\n\
            \n\
            Network: 3 of 4 probes OK.\n\
            ";
        assert_eq!(
            preflight_report(&failed, false, None),
            format!(
                "Preflight of clus100 FAILED in 412 ms: 2 nodes, 4 probes.\n\
                {FAILED}\
                FROM     TO       PORT       ERROR\n\
                host-2   host-1   2379/tcp   connection refused\n"
            )
        );
        // --all --last: every cell with its latency, and when it ran.
        assert_eq!(
            preflight_report(&failed, true, Some(NOW)),
            format!(
                "Preflight of clus100 FAILED in 412 ms: 2 nodes, 4 probes. Run at 2024-05-01T11:57:00Z (3m ago).\n\
                {FAILED}\
                FROM     TO       PORT        RESULT               LATENCY\n\
                host-1   host-2   2379/tcp    ok                   0.41 ms\n\
                host-1   host-2   10250/tcp   ok                   1.25 ms\n\
                host-2   host-1   2379/tcp    connection refused   -\n\
                host-2   host-1   10250/tcp   ok                   15.0 ms\n"
            )
        );
        // Warnings do not fail a preflight, but are shown.
        assert_eq!(
            preflight_report(&preflight(true), false, None),
            "Preflight of clus100 passed in 412 ms: 2 nodes, 4 probes.\n\
            \n\
            Failed checks (2 of 3 passed):\n\
            NODE     CHECK   SEVERITY   DETAIL\n\
            host-2   swap    warning    swap is on (2.0 GiB)\n\
            \n\
            Network: 4 of 4 probes OK.\n"
        );
        // Agents that did not answer leave only problems.
        let mut silent = preflight(false);
        silent.checks.clear();
        silent.mesh.clear();
        silent.problems = vec!["host-1: the node's agent is not connected".to_owned()];
        assert_eq!(
            preflight_report(&silent, true, None),
            "Preflight of clus100 FAILED in 412 ms: 0 nodes, 0 probes.\n\
             \n\
             Problems:\n\
             \x20 - host-1: the node's agent is not connected\n"
        );
    }

    #[test]
    fn token_table_shows_status() {
        let token = |revoked: bool, expires: OffsetDateTime| Token {
            id: TokenId::new(),
            user: "admin".parse().expect("user"),
            role: Role::Admin,
            description: Some("ci pipeline".parse().expect("description")),
            created_at: datetime!(2024-04-01 00:00:00 UTC),
            expires_at: expires,
            last_used_at: Some(datetime!(2024-05-01 11:59:00 UTC)),
            revoked_at: revoked.then_some(datetime!(2024-04-02 00:00:00 UTC)),
        };
        let tokens = [
            token(false, datetime!(2024-06-01 00:00:00 UTC)),
            token(true, datetime!(2024-06-01 00:00:00 UTC)),
            token(false, datetime!(2024-04-30 00:00:00 UTC)),
        ];
        let out = tokens_table(&tokens, NOW);
        let statuses: Vec<&str> = out
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(3).unwrap_or_default())
            .collect();
        assert_eq!(statuses, ["active", "revoked", "expired"], "{out}");
        assert!(out.contains("ci pipeline"), "{out}");
        assert!(out.contains("1m ago"), "{out}");
    }

    #[test]
    fn bootstrap_token_table_shows_status_and_uses() {
        let token = |uses: u32, revoked: bool, expires: OffsetDateTime| BootstrapToken {
            id: qb_api::BootstrapTokenId::new(),
            description: (uses == 0).then(|| "rack 4".parse().expect("description")),
            created_at: datetime!(2024-05-01 10:00:00 UTC),
            expires_at: expires,
            max_uses: 3,
            uses,
            revoked_at: revoked.then_some(datetime!(2024-05-01 11:00:00 UTC)),
        };
        let later = datetime!(2024-05-02 10:00:00 UTC);
        let tokens = [
            token(0, false, later),
            token(1, true, later),
            token(2, false, datetime!(2024-05-01 11:00:00 UTC)),
            token(3, false, later),
        ];
        let out = bootstrap_tokens_table(&tokens, NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "STATUS", "USES", "DESCRIPTION", "EXPIRES", "AGE"]
        );
        let cells: Vec<(&str, &str)> = lines[1..]
            .iter()
            .map(|l| {
                let mut words = l.split_whitespace().skip(1);
                (
                    words.next().unwrap_or_default(),
                    words.next().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            cells,
            [
                ("active", "0/3"),
                ("revoked", "1/3"),
                ("expired", "2/3"),
                ("used-up", "3/3")
            ],
            "{out}"
        );
        assert!(
            lines[1].contains("rack 4") && lines[1].ends_with("2024-05-02T10:00:00Z   2h"),
            "{out}"
        );
        assert!(lines[2].contains("<none>"), "{out}");
    }

    #[test]
    fn users_and_events() {
        let user = User {
            id: UserId::new(),
            name: "alice".parse().expect("name"),
            role: Role::Operator,
            created_at: datetime!(2024-05-01 11:59:50 UTC),
        };
        let out = users_table(&[user], NOW);
        assert!(out.starts_with("NAME    ROLE       ID"), "{out}");
        assert!(out.trim_end().ends_with("10s"), "{out}");

        let event = Event {
            id: 7,
            at: datetime!(2024-05-01 11:00:00.123 UTC),
            actor: "user:alice".to_owned(),
            action: "node.authorized".to_owned(),
            object_kind: "node".to_owned(),
            object_id: "x".to_owned(),
            object_name: "host-1".to_owned(),
            detail: serde_json::json!({"from": "pending", "long": "y".repeat(100)}),
        };
        let out = events_table(&[event]);
        let row = out.lines().nth(1).expect("row");
        assert!(row.starts_with("7    2024-05-01T11:00:00Z   user:alice   node.authorized   node/host-1   {\"from\":\"pending\""), "{row}");
        assert!(row.ends_with('…'), "{row}");
    }

    #[test]
    fn ages_and_sizes() {
        let ago = |s: i64| age(NOW - time::Duration::seconds(s), NOW);
        assert_eq!(
            [
                ago(-5),
                ago(0),
                ago(59),
                ago(60),
                ago(3599),
                ago(3600),
                ago(47 * 3600)
            ],
            ["0s", "0s", "59s", "1m", "59m", "1h", "47h"]
        );
        assert_eq!(
            [ago(48 * 3600), ago(364 * 86400), ago(800 * 86400)],
            ["2d", "364d", "2y"]
        );
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023");
        assert_eq!(bytes(512 * 1024 * 1024), "512Mi");
        assert_eq!(bytes(16_743_890_944), "15.6Gi");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024 * 1024), "8Ti");
    }

    #[test]
    fn node_metrics_show_the_last_report_and_the_history() {
        let mut m = qb_api::NodeMetrics {
            node: qb_api::NodeId::new(),
            name: "host-0".parse().unwrap(),
            range: qb_api::MetricsRange::Hour,
            resolution_seconds: 60,
            latest: Some(qb_api::MetricsSample {
                at: NOW - time::Duration::seconds(4),
                cpu_percent: 12.5,
                load1: 0.5,
                load5: 0.25,
                load15: 0.125,
                memory_total_bytes: 8 << 30,
                memory_available_bytes: 6 << 30,
                disk_total_bytes: 100 << 30,
                disk_available_bytes: 40 << 30,
                uptime_seconds: 7200,
                etcd: Some(qb_api::EtcdSample {
                    has_leader: true,
                    is_leader: false,
                    db_size_bytes: 20 << 20,
                    db_in_use_bytes: 12 << 20,
                    leader_changes: 2,
                }),
            }),
            points: vec![qb_api::MetricsPoint {
                at: datetime!(2026-12-05 10:01 UTC),
                samples: 6,
                cpu_percent: 40.0,
                cpu_percent_max: 55.5,
                load1: 0.75,
                memory_used_bytes: 2 << 30,
                memory_total_bytes: 8 << 30,
                disk_used_bytes: 60 << 30,
                disk_total_bytes: 100 << 30,
            }],
        };
        assert_eq!(
            node_metrics(&m, NOW),
            "Node host-0: CPU 12.5%, load 0.50 0.25 0.12, memory 2Gi of 8Gi used, disk 60Gi of \
             100Gi used, up 2h (reported 4s ago)\n\
             etcd: a follower, database 20Mi (12Mi in use), 2 leader changes seen\n\n\
             TIME                   CPU AVG   CPU MAX   LOAD1   MEMORY USED   DISK USED\n\
             2026-12-05T10:01:00Z   40.0%     55.5%     0.75    2Gi/8Gi       60Gi/100Gi\n"
        );
        m.latest = None;
        m.points.clear();
        assert_eq!(
            node_metrics(&m, NOW),
            "Node host-0: no report from its agent now.\nNo history over the last 1h yet.\n"
        );
    }
}
