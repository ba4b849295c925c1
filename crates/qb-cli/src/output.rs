//! Rendering: the API's objects as JSON or YAML, or as human tables.
//!
//! Table renderers are pure functions of the objects and the current time, so they are tested
//! without a controller.

use std::io::Write;

use anyhow::Context as _;
use comfy_table::{Table, presets};
use qb_api::{
    BootstrapToken, Cluster, ClusterDetail, Event, Labels, Node, NodeAgent, Token, User, Whoami,
};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// A node's addresses for a table cell: the first few, then how many more.
fn addresses_cell(addresses: &[std::net::IpAddr]) -> String {
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

/// The node list. The OS and kernel are in `qb node show`, to keep it narrow.
pub fn nodes_table(nodes: &[Node], now: OffsetDateTime) -> String {
    table(
        &[
            "NAME",
            "STATE",
            "CLUSTER",
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
                agent_online(agent).to_owned(),
                agent_last_seen(agent, now),
                agent.map_or_else(|| "-".to_owned(), |a| a.version.clone()),
                or_none(n.facts.arch.clone()),
                n.facts.cpus.to_string(),
                bytes(n.facts.memory_bytes),
                addresses_cell(&n.facts.addresses),
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
    ];
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
        .map(|(node, role)| {
            format!(
                "{node}={}",
                if *role == qb_api::NodeRole::Master {
                    "master"
                } else {
                    "worker"
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = fields(&[
        ("Name", c.name.to_string()),
        ("ID", c.id.to_string()),
        ("State", c.state.as_str().to_owned()),
        ("Version", c.kubernetes_version.to_string()),
        ("Masters", c.masters.to_string()),
        ("Roles", or_none(roles)),
        ("Pod CIDR", c.pod_cidr.to_string()),
        ("Service CIDR", c.service_cidr.to_string()),
        ("Nodes", c.node_count.to_string()),
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
        out.push_str(&nodes_table(&d.nodes, now));
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
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else {
        "active"
    }
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
                or_none(
                    t.description
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
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
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else if t.uses >= t.max_uses {
        "used-up"
    } else {
        "active"
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
                or_none(
                    t.description
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                timestamp(t.expires_at),
                age(t.created_at, now),
            ]
        }),
    )
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
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
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.parse().expect("key"), v.parse().expect("value")))
                .collect(),
            agent: None,
            created_at: datetime!(2024-04-28 12:00:00 UTC),
            updated_at: datetime!(2024-05-01 11:59:30 UTC),
        }
    }

    fn agent(online: bool, seen: Option<OffsetDateTime>) -> Option<NodeAgent> {
        Some(NodeAgent {
            version: "0.1.0".to_owned(),
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
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "STATE",
                "CLUSTER",
                "ONLINE",
                "LAST-SEEN",
                "AGENT",
                "ARCH",
                "CPUS",
                "MEMORY",
                "ADDRESSES",
                "LABELS",
                "AGE"
            ]
        );
        assert!(lines[0].starts_with("NAME   "), "{out}");
        assert!(lines[1].starts_with("host-1 "), "{out}");
        let rows: Vec<Vec<&str>> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec![
                    "host-1",
                    "attached",
                    "clus100",
                    "yes",
                    "5s",
                    "0.1.0",
                    "x86_64",
                    "8",
                    "16Gi",
                    "10.0.0.5,fd00::5",
                    "rack=r1,zone=a",
                    "3d",
                ],
                vec![
                    "host-2.rack2",
                    "pending",
                    "<none>",
                    "-",
                    "-",
                    "-",
                    "x86_64",
                    "8",
                    "16Gi",
                    "10.0.0.5,fd00::5",
                    "<none>",
                    "3d",
                ],
                vec![
                    "host-3",
                    "authorized",
                    "<none>",
                    "no",
                    "24h",
                    "0.1.0",
                    "x86_64",
                    "8",
                    "16Gi",
                    "10.0.0.5,fd00::5,+2",
                    "<none>",
                    "3d",
                ],
                vec![
                    "host-4",
                    "pending",
                    "<none>",
                    "no",
                    "-",
                    "0.1.0",
                    "x86_64",
                    "8",
                    "16Gi",
                    "10.0.0.5,fd00::5",
                    "<none>",
                    "3d",
                ],
            ],
            "{out}"
        );
        // Columns line up: every row's STATE and ONLINE start where the header's do.
        for column in ["STATE", "ONLINE", "LAST-SEEN"] {
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
                "Cluster:    c1\nAgent:      0.1.0\nOnline:     yes\n\
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
            state: ClusterState::Pending,
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
        let detail = ClusterDetail {
            cluster: cluster(),
            nodes: vec![node("host-1", NodeState::Attached, Some("clus100"), &[])],
        };
        let out = cluster_detail(&detail, NOW);
        assert!(out.contains("Roles:         host-1=master\n"), "{out}");
        assert!(out.contains("\n\nNAME "), "{out}");
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
}
