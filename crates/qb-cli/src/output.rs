//! Rendering: the API's objects as JSON or YAML, or as human tables.
//!
//! Table renderers are pure functions of the objects and the current time, so they are tested
//! without a controller.

use std::io::Write;

use anyhow::Context as _;
use comfy_table::{Table, presets};
use qb_api::{Cluster, ClusterDetail, Event, Labels, Node, Token, User, Whoami};
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

pub fn nodes_table(nodes: &[Node], now: OffsetDateTime) -> String {
    table(
        &[
            "NAME",
            "STATE",
            "CLUSTER",
            "OS",
            "ARCH",
            "CPUS",
            "MEMORY",
            "ADDRESSES",
            "LABELS",
            "AGE",
        ],
        nodes.iter().map(|n| {
            vec![
                n.name.to_string(),
                n.state.as_str().to_owned(),
                n.cluster
                    .as_ref()
                    .map_or_else(|| NONE.to_owned(), |c| c.name.to_string()),
                or_none(n.facts.os.clone()),
                or_none(n.facts.arch.clone()),
                n.facts.cpus.to_string(),
                bytes(n.facts.memory_bytes),
                or_none(
                    n.facts
                        .addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                labels(&n.labels),
                age(n.created_at, now),
            ]
        }),
    )
}

pub fn node_fields(n: &Node, now: OffsetDateTime) -> String {
    let when = |t: OffsetDateTime| format!("{} ({} ago)", timestamp(t), age(t, now));
    fields(&[
        ("Name", n.name.to_string()),
        ("ID", n.id.to_string()),
        ("State", n.state.as_str().to_owned()),
        (
            "Cluster",
            n.cluster
                .as_ref()
                .map_or_else(|| NONE.to_owned(), |c| c.name.to_string()),
        ),
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
    ])
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
        ClusterRef, ClusterState, MasterCount, NodeFacts, NodeState, Role, TokenId, UserId,
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

    #[test]
    fn node_table_has_the_documented_columns() {
        let nodes = vec![
            node(
                "host-1",
                NodeState::Attached,
                Some("clus100"),
                &[("rack", "r1"), ("zone", "a")],
            ),
            node("host-2.rack2", NodeState::Pending, None, &[]),
        ];
        let out = nodes_table(&nodes, NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "STATE",
                "CLUSTER",
                "OS",
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
        for (line, expected) in lines[1..].iter().zip([
            [
                "attached",
                "clus100",
                "x86_64",
                "8",
                "16Gi",
                "10.0.0.5,fd00::5",
                "rack=r1,zone=a",
                "3d",
            ],
            [
                "pending",
                "<none>",
                "x86_64",
                "8",
                "16Gi",
                "10.0.0.5,fd00::5",
                "<none>",
                "3d",
            ],
        ]) {
            for cell in expected {
                assert!(
                    line.split_whitespace().any(|c| c == cell),
                    "{cell} missing in {line:?}"
                );
            }
        }
        // Columns line up: every row's STATE starts where the header's does.
        let col = lines[0].find("STATE").expect("STATE");
        assert_eq!(lines[1].find("attached"), Some(col));
        assert_eq!(lines[2].find("pending"), Some(col));
        assert!(out.lines().all(|l| l == l.trim_end()), "trailing blanks");
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
