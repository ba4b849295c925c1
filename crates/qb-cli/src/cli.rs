//! The command line: clap definitions and the parsing of kubectl-style arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use qb_api::{
    BootstrapTokenId, Cidr, CreateBootstrapToken, CreateKubeconfig, Description, KubernetesVersion,
    LabelChange, LabelKey, LabelValue, MasterCount, Name, NodeName, NodeRole, NodeState, Role,
    Selector, TokenId,
};

use crate::output::Format;

const GLOBAL: &str = "Global options";

/// qb: manage Kubernetes clusters on your own hosts through the qb controller.
#[derive(Debug, Parser)]
#[command(name = "qb", version, max_term_width = 100)]
pub struct Cli {
    /// Output format: tables for people, or the API's objects as JSON or YAML.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table, help_heading = GLOBAL)]
    pub output: Format,
    /// The context to use (default: the current one). With `login`, the name of the context to save.
    #[arg(long, global = true, value_name = "NAME", help_heading = GLOBAL)]
    pub context: Option<String>,
    /// The configuration file [default: $HOME/.config/qb/config.yaml].
    #[arg(long, global = true, value_name = "PATH", env = "QB_CONFIG", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a controller: pin its certificate, check the token, save a context.
    Login(LoginArgs),
    /// Manage the saved contexts (controllers and tokens).
    #[command(subcommand)]
    Context(ContextCommand),
    /// Show who the token of the current context acts as.
    Whoami,
    /// Inspect and manage hosts.
    #[command(subcommand, alias = "nodes")]
    Node(NodeCommand),
    /// Create, inspect and resize clusters.
    #[command(subcommand, alias = "clusters")]
    Cluster(ClusterCommand),
    /// Import and inspect release bundles: the Kubernetes binaries clusters are installed from.
    #[command(subcommand, alias = "bundles")]
    Bundle(BundleCommand),
    /// Manage API tokens, and the bootstrap tokens agents register hosts with.
    #[command(subcommand, alias = "tokens")]
    Token(TokenCommand),
    /// Upgrade the hosts' agents to the build this controller ships.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Download qb-agent packages preconfigured for this controller.
    #[command(subcommand, name = "agent-package", alias = "agent-packages")]
    AgentPackage(AgentPackageCommand),
    /// Manage users.
    #[command(subcommand, alias = "users")]
    User(UserCommand),
    /// Show the audit trail, oldest first.
    Events(EventsArgs),
    /// Alerts (a host offline, a disk nearly full, a cluster not healthy) and their silences.
    #[command(subcommand, alias = "alerts")]
    Alert(AlertCommand),
    /// Where alerts are sent when they fire and resolve (webhooks, e-mail), and what was sent.
    #[command(subcommand, alias = "notifications")]
    Notify(NotifyCommand),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// List alerts, newest first: the firing ones, or with --all resolved ones too.
    #[command(visible_alias = "ls")]
    List {
        /// Resolved alerts too.
        #[arg(long)]
        all: bool,
    },
    /// Keep alerts of a rule, of a node or cluster, or both, quiet for a while (they still fire
    /// and resolve, and notify no one).
    Silence {
        /// The rule (host_offline, disk_full, pod_crash_looping, no_leader, ...); every rule
        /// when left out.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(qb_api::AlertRule::ALL.map(qb_api::AlertRule::as_str)))]
        rule: Option<String>,
        /// The node or cluster, by name; every object when left out.
        #[arg(long)]
        object: Option<String>,
        /// How long, in minutes (at most 30 days).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=43200))]
        minutes: u32,
        /// Why.
        #[arg(long)]
        comment: String,
    },
    /// List the silences that have not ended.
    Silences,
    /// End a silence now.
    Unsilence {
        /// The silence's id.
        id: String,
    },
    /// List the tenant's own alert rules.
    Rules,
    /// Alert on each host whose CPU, memory, disk or load stays above a threshold.
    AddRule {
        /// The rule's name.
        name: String,
        #[arg(long, value_parser = ["cpu", "memory", "disk", "load"])]
        metric: String,
        /// The threshold: a percentage for cpu, memory and disk; a load for load.
        #[arg(long)]
        above: f64,
        /// For this many minutes in a row (1 to 60).
        #[arg(long = "for", value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(1..=60))]
        for_minutes: u32,
        #[arg(long, value_parser = ["warning", "critical"], default_value = "warning")]
        severity: String,
    },
    /// Remove one of the tenant's alert rules.
    RemoveRule { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// List the notification channels.
    #[command(visible_alias = "ls")]
    List,
    /// Send alerts to a webhook or to e-mail addresses from now on.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["webhook", "email"])))]
    Add {
        /// The channel's name.
        name: String,
        /// A webhook's URL; its bodies are signed with a secret printed once, now.
        #[arg(long)]
        webhook: Option<String>,
        /// E-mail addresses, comma-separated (the controller needs an SMTP server).
        #[arg(long)]
        email: Option<String>,
        /// Only alerts of this severity and above.
        #[arg(long, value_parser = ["warning", "critical"], default_value = "warning")]
        min_severity: String,
    },
    /// Remove a channel and its delivery log.
    #[command(visible_alias = "rm")]
    Remove { name: String },
    /// Send a test alert to a channel now, and say whether it arrived.
    Test { name: String },
    /// The delivery log, newest first: each alert change sent (or to be sent) to each channel.
    Log {
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The controller, e.g. https://qb.example.net:8443 (http:// only on loopback).
    pub url: String,
    /// API token; `-` reads it from stdin.
    #[arg(long, env = "QB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The expected certificate fingerprint (sha256:...), as the controller printed it.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    /// Trust the controller's certificate without asking (for scripts).
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the saved contexts.
    #[command(visible_alias = "ls")]
    List,
    /// Make a context the current one.
    Use { name: String },
    /// Forget a context and its token.
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Print the name of the current context.
    Current,
}

/// A node state, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Pending,
    Authorized,
    Attached,
    Detaching,
    Deauthorized,
}

impl From<StateArg> for NodeState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => Self::Pending,
            StateArg::Authorized => Self::Authorized,
            StateArg::Attached => Self::Attached,
            StateArg::Detaching => Self::Detaching,
            StateArg::Deauthorized => Self::Deauthorized,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(visible_alias = "ls")]
    List {
        /// Only nodes in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only nodes of this cluster (name or id).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Show one node.
    Show {
        /// Node name or id.
        node: String,
    },
    /// Set (`key=value`) or remove (`key-`) labels.
    Label {
        /// Node name or id.
        node: String,
        /// `key=value` to set, `key-` to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Admit pending nodes into the pool.
    Authorize {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Revoke nodes' identities; they must register again to come back. A node in a
    /// cluster must be detached first.
    Deauthorize {
        /// Node names or ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Forget a pending or deauthorized node.
    #[command(visible_alias = "rm")]
    Delete {
        /// Node name or id.
        node: String,
    },
    /// Check that a node's agent is connected and answers; prints the round trip.
    Ping {
        /// Node name or id.
        node: String,
    },
    /// Show a node's host metrics: its agent's last report, and their history by the minute
    /// (up to a day back) or by the hour (up to 30 days).
    Metrics {
        /// Node name or id.
        node: String,
        /// How far back.
        #[arg(long, default_value = "1h", value_parser = ["1h", "6h", "24h", "7d", "30d"])]
        range: String,
    },
    /// Print the end of a service's log on a node (etcd, containerd, kubelet, kube-apiserver,
    /// ..., or qb-agent, the agent's own), read by its agent; with --follow, keep printing
    /// what it logs.
    Logs {
        /// Node name or id.
        node: String,
        /// The service, as the node's plan names it, or qb-agent.
        service: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How much of the end to print first, in bytes.
        #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=24576))]
        bytes: u32,
        /// Instead of the end, everything written since this long ago (by the host's clock):
        /// 90s, 10m, 2h, 1d; at most 30d.
        #[arg(long, value_name = "DURATION", value_parser = parse_since, conflicts_with = "bytes")]
        since: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create an empty cluster.
    Create(CreateClusterArgs),
    /// List clusters.
    #[command(visible_alias = "ls")]
    List,
    /// Show a cluster and its nodes.
    Show {
        /// Cluster name or id.
        cluster: String,
    },
    /// Read the cluster's health from its API now: whether each Kubernetes node is Ready,
    /// whether the scheduler and the controller manager have a leader, and the pods that
    /// restart, wait or fail, with their restart counts and why they last stopped.
    Health {
        /// Cluster name or id.
        cluster: String,
    },
    /// Delete a cluster; with --force, its nodes return to the pool.
    #[command(visible_alias = "rm")]
    Delete {
        /// Cluster name or id.
        cluster: String,
        /// Delete even if the cluster still has nodes.
        #[arg(long)]
        force: bool,
    },
    /// Upgrade a cluster to another Kubernetes version (bundle), and wait until every node runs
    /// it. Nodes change one at a time, masters first, each once the one before is healthy
    /// again; the bundle must be imported (`qb bundle list`).
    Upgrade(UpgradeArgs),
    /// Pause a cluster's rollout of changes that restart services (an upgrade): nodes not
    /// given the change yet wait; a worker being drained stays cordoned.
    Pause {
        /// Cluster name or id.
        cluster: String,
    },
    /// Resume a cluster's paused rollout.
    Resume {
        /// Cluster name or id.
        cluster: String,
    },
    /// Change a cluster's settings.
    Set(SetClusterArgs),
    /// Take an etcd snapshot of the cluster now, and wait until it is stored.
    Backup {
        /// Cluster name or id.
        cluster: String,
        /// Return once asked for, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the cluster's etcd snapshots, newest first.
    Snapshots {
        /// Cluster name or id.
        cluster: String,
    },
    /// Attach nodes: COUNT from the pool, or the NODEs named.
    Attach(AttachArgs),
    /// Detach nodes; by default wait until they are back in the pool.
    Detach(DetachArgs),
    /// Check the nodes and the network between them: run preflight now and show the result.
    ///
    /// Every node checks itself (memory, kernel, clock, free ports, ...) and then probes every
    /// other node on the ports its role needs. Exits with status 1 when the preflight failed.
    Preflight(PreflightArgs),
    /// Print a kubeconfig for the cluster, or write it to a file: plain `kubectl` then reaches
    /// the cluster through the controller.
    ///
    /// The kubeconfig holds a new API token of yours (your user and role; the cluster's RBAC
    /// decides what it may do there), so keep it private. An admin can revoke it (`qb token
    /// revoke`).
    Kubeconfig(KubeconfigArgs),
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// How long the kubeconfig's token is valid, in hours [default: 24].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CreateKubeconfig::MAX_HOURS)))]
    pub expires_in_hours: Option<u32>,
    /// Write the kubeconfig to this file (mode 0600, replacing it) instead of printing it.
    /// (`-o` selects the output format.)
    #[arg(short = 'O', long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Show the newest preflight result instead of running one.
    #[arg(long)]
    pub last: bool,
    /// Show every probe of the network matrix with its latency, not only the failed ones.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Import a release bundle: check its files, upload the missing ones, register it.
    ///
    /// A bundle is a directory holding `bundle.json` and the files it names (a directory with a
    /// single bundle directory inside is accepted too), or a `.tar`/`.tar.gz` of one. Every file
    /// is checked against the size and SHA-256 in `bundle.json` before anything is uploaded.
    Import {
        /// The bundle directory or tarball.
        #[arg(value_name = "DIR|TARBALL")]
        path: PathBuf,
    },
    /// List the imported bundles.
    #[command(visible_alias = "ls")]
    List,
    /// Show one bundle and its artifacts.
    Show {
        /// The Kubernetes version of the bundle, e.g. 1.20.2.
        version: KubernetesVersion,
    },
}

#[derive(Debug, Args)]
pub struct SetClusterArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Taint masters so that workloads run on workers only (`true`), or let workloads run on
    /// masters too (`false`).
    #[arg(long, value_name = "BOOL")]
    pub taint_masters: Option<bool>,
    /// Minutes between scheduled etcd snapshots (0: none).
    #[arg(long, value_name = "MINUTES")]
    pub snapshot_interval: Option<u32>,
    /// How many scheduled snapshots to keep.
    #[arg(long, value_name = "COUNT")]
    pub snapshot_retention: Option<u32>,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// The version to move to, e.g. `1.20.2+qb.1`.
    #[arg(long = "version", value_name = "VERSION")]
    pub kubernetes_version: KubernetesVersion,
    /// Return once the upgrade is accepted; follow it with `qb cluster show`.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for every node, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct CreateClusterArgs {
    pub name: Name,
    /// Kubernetes version [default: the controller's newest].
    #[arg(long = "version", value_name = "VERSION")]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// Range pods get addresses from [default: 10.20.0.0/16].
    #[arg(long)]
    pub pod_cidr: Option<Cidr>,
    /// Range services get addresses from [default: 10.21.0.0/16].
    #[arg(long)]
    pub service_cidr: Option<Cidr>,
    /// Number of masters: `auto` or an odd number.
    #[arg(long, default_value = "auto")]
    pub masters: MasterCount,
    /// Give a node an explicit role: NODE=master or NODE=worker (repeatable).
    #[arg(long = "role", value_name = "NODE=ROLE", value_parser = parse_role_assignment)]
    pub roles: Vec<(NodeName, NodeRole)>,
    /// Taint masters (node-role.kubernetes.io/master:NoSchedule) so that workloads run on
    /// workers only [default: masters run workloads too].
    #[arg(long)]
    pub taint_masters: bool,
}

#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("which").required(true).args(["count", "nodes"])),
    override_usage = "qb cluster attach <CLUSTER> (--count <COUNT> [--selector <SELECTOR>] | <NODES>...)"
)]
pub struct AttachArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// Take this many authorized nodes from the pool.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: Option<u32>,
    /// With --count: only nodes whose labels match, e.g. `zone=a,!maintenance`.
    #[arg(long, requires = "count", conflicts_with = "nodes")]
    pub selector: Option<Selector>,
    /// The nodes to attach, by name.
    #[arg(conflicts_with = "count")]
    pub nodes: Vec<NodeName>,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Cluster name or id.
    pub cluster: String,
    /// The nodes to detach, by name.
    #[arg(required = true)]
    pub nodes: Vec<NodeName>,
    /// Return as soon as the controller accepted the request.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the nodes to return to the pool.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// Skip the quorum guard and the drain, and do not wait for the wipe of a host whose agent
    /// is offline (it wipes itself when it is back); etcd members are still removed.
    #[arg(long)]
    pub force: bool,
}

/// A role, as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    Operator,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Self::Admin,
            RoleArg::Operator => Self::Operator,
            RoleArg::Viewer => Self::Viewer,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// The user the token acts as [default: you].
        #[arg(long)]
        user: Option<Name>,
        /// What the token is for.
        #[arg(long)]
        description: Option<Description>,
        /// Lifetime in hours [default: 720].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8760))]
        expires_in_hours: Option<u32>,
    },
    /// List tokens.
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token at once.
    Revoke {
        /// The token's id (see `qb token list`).
        id: TokenId,
    },
    /// Manage bootstrap tokens, which agents use to register hosts.
    #[command(subcommand)]
    Bootstrap(BootstrapTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum BootstrapTokenCommand {
    /// Create a bootstrap token; its secret is printed once.
    Create {
        /// What the token is for.
        #[arg(long)]
        description: Option<Description>,
        /// Lifetime in hours [default: 24].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CreateBootstrapToken::MAX_HOURS)))]
        expires_in_hours: Option<u32>,
        /// How many hosts may register with it [default: 1].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CreateBootstrapToken::MAX_USES)))]
        max_uses: Option<u32>,
    },
    /// List bootstrap tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a bootstrap token at once; hosts not yet registered with it can no longer use it.
    Revoke {
        /// The token's id (see `qb token bootstrap list`).
        id: BootstrapTokenId,
    },
}

/// The kind of an agent package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PackageFormat {
    /// Debian, Ubuntu and derivatives.
    Deb,
    /// Fedora, RHEL, SUSE and derivatives.
    Rpm,
    /// Any distribution with systemd (or none): unpack and run install.sh.
    #[value(name = "tar.gz")]
    TarGz,
}

impl PackageFormat {
    /// The name in the API's path: `deb`, `rpm` or `tar.gz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deb => "deb",
            Self::Rpm => "rpm",
            Self::TarGz => "tar.gz",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Move the hosts' agents to the build this controller ships: one host first (the
    /// canary), then in batches; a host whose new agent fails its trial goes back to the build
    /// it ran, and the upgrade stops.
    #[command(subcommand)]
    Upgrade(AgentUpgradeCommand),
}

#[derive(Debug, Subcommand)]
pub enum AgentUpgradeCommand {
    /// Start the upgrade.
    Start {
        /// How many hosts upgrade at once after the canary [default: 1].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        batch: Option<u32>,
        /// How long a host's new agent has to reach the controller before the host goes back
        /// to the build it ran, in seconds [default: 120].
        #[arg(long, value_parser = clap::value_parser!(u32).range(10..=3600))]
        trial_seconds: Option<u32>,
    },
    /// Show where the upgrade is, host by host.
    Status,
    /// Start no more hosts (those upgrading finish).
    Pause,
    /// Go on with a paused upgrade.
    Resume,
    /// End the upgrade (hosts upgrading finish their trial); start another once ready.
    Stop,
}

#[derive(Debug, Subcommand)]
pub enum AgentPackageCommand {
    /// Download an agent package with a new bootstrap token inside (a secret: the file is
    /// written readable by you only).
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The package format.
    #[arg(long, value_enum)]
    pub format: PackageFormat,
    /// How many hosts may register with the package's bootstrap token [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CreateBootstrapToken::MAX_USES)))]
    pub max_uses: Option<u32>,
    /// How long the package's bootstrap token is valid, in hours [default: 24].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CreateBootstrapToken::MAX_HOURS)))]
    pub expires_in_hours: Option<u32>,
    /// Where to write the package: a file, or a directory to put it in under the controller's
    /// file name [default: that name, in the current directory]. (`-o` selects the output format.)
    #[arg(short = 'O', long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        name: Name,
        /// What the user may do: viewer reads, operator also changes nodes and clusters, admin
        /// also manages users and tokens.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List users.
    #[command(visible_alias = "ls")]
    List,
    /// Set a user's password for the web UI (admins: anyone's; everyone: their own). Asks for
    /// it twice on a terminal; otherwise reads one line from stdin. The user's web sessions end;
    /// their API tokens stay.
    SetPassword { name: Name },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events about this kind of object: node, cluster, user, token.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events about this object (name or id).
    #[arg(long)]
    pub object: Option<String>,
    /// Only actions starting with this, e.g. `node.` or `cluster.nodes_attached`.
    #[arg(long)]
    pub action: Option<String>,
    /// Show at most this many events (the oldest matching ones).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// `node=master` or `node=worker`.
pub fn parse_role_assignment(s: &str) -> Result<(NodeName, NodeRole), String> {
    let (node, role) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NODE=master or NODE=worker, got {s:?}"))?;
    let node: NodeName = node
        .parse()
        .map_err(|e: qb_api::InvalidValue| e.to_string())?;
    let role = match role {
        "master" => NodeRole::Master,
        "worker" => NodeRole::Worker,
        other => {
            return Err(format!(
                "invalid role {other:?} for node {node}: use master or worker"
            ));
        }
    };
    Ok((node, role))
}

/// The roles of `--role` flags, each node at most once.
pub fn roles_map(roles: &[(NodeName, NodeRole)]) -> anyhow::Result<BTreeMap<NodeName, NodeRole>> {
    let mut map = BTreeMap::new();
    for (node, role) in roles {
        if map.insert(node.clone(), *role).is_some() {
            anyhow::bail!("--role names node {node} more than once");
        }
    }
    Ok(map)
}

/// kubectl-style label arguments: `key=value` sets, `key-` removes; each key at most once.
pub fn parse_label_changes(args: &[String]) -> anyhow::Result<LabelChange> {
    let mut change = LabelChange::default();
    let mut seen = std::collections::BTreeSet::new();
    for arg in args {
        let key: LabelKey = if let Some((key, value)) = arg.split_once('=') {
            let key: LabelKey = key.parse()?;
            let value: LabelValue = value.parse()?;
            change.set.insert(key.clone(), value);
            key
        } else if let Some(key) = arg.strip_suffix('-') {
            let key: LabelKey = key.parse()?;
            change.remove.push(key.clone());
            key
        } else {
            anyhow::bail!(
                "invalid label argument {arg:?}: use key=value to set a label or key- to remove it"
            );
        };
        if !seen.insert(key.clone()) {
            anyhow::bail!("label {key} is given more than once");
        }
    }
    Ok(change)
}

/// A duration such as `90s`, `10m`, `2h` or `1d`, in seconds, at most 30 days.
fn parse_since(s: &str) -> Result<u64, String> {
    let unit = s.chars().last().ok_or("empty duration")?;
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => {
            return Err(format!(
                "{s:?}: give a number and a unit, s, m, h or d (e.g. 10m)"
            ));
        }
    };
    let n: u64 = s[..s.len() - 1]
        .parse()
        .map_err(|_| format!("{s:?}: give a number and a unit, s, m, h or d (e.g. 10m)"))?;
    let total = n.saturating_mul(seconds);
    if total > qb_api::LogQuery::MAX_SINCE_SECONDS {
        return Err(format!("{s:?}: at most 30d"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    /// Parses a command line; its words are separated by single spaces.
    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(line.split(' '))
    }

    fn rejects(lines: &[&str]) {
        for line in lines {
            assert!(parse(line).is_err(), "{line}");
        }
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_set_and_remove() {
        let change = parse_label_changes(&strings(&[
            "zone=a",
            "topology.kubernetes.io/rack=r-1",
            "gpu=",
            "old-",
        ]))
        .expect("valid");
        let set: Vec<(String, String)> = change
            .set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            set,
            [
                ("gpu", ""),
                ("topology.kubernetes.io/rack", "r-1"),
                ("zone", "a")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            change
                .remove
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["old"]
        );
        // `key-` where the key itself ends in '-' is not a valid key anyway.
        assert!(parse_label_changes(&strings(&["a--"])).is_err());
    }

    #[test]
    fn bad_labels_are_rejected() {
        for bad in [
            &["zone"][..],
            &["=a"],
            &["-"],
            &["a=b c"],
            &["Bad Key=1"],
            &["a=1", "a-"],
            &["a=1", "a=2"],
        ] {
            let err = parse_label_changes(&strings(bad)).expect_err("invalid");
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
        let err = parse_label_changes(&strings(&["a=1", "a-"])).expect_err("twice");
        assert_eq!(err.to_string(), "label a is given more than once");
    }

    #[test]
    fn roles_parse() {
        assert_eq!(
            parse_role_assignment("host-1.rack2=master"),
            Ok(("host-1.rack2".parse().expect("node"), NodeRole::Master))
        );
        assert!(parse_role_assignment("host-1=worker").is_ok());
        assert!(parse_role_assignment("host-1").is_err());
        assert!(parse_role_assignment("host-1=boss").is_err());
        assert!(parse_role_assignment("Host=master").is_err());
        let twice = [
            parse_role_assignment("a=master").expect("a"),
            parse_role_assignment("a=worker").expect("a"),
        ];
        assert!(roles_map(&twice).is_err());
    }

    #[test]
    fn cluster_create_parses_typed_values() {
        let cli = parse(
            "qb cluster create clus100 --version 1.20.2 --pod-cidr 10.30.0.0/16 --masters 3 \
             --role a=master --role b=worker -o json",
        )
        .expect("parse");
        assert_eq!(cli.output, Format::Json);
        let Command::Cluster(ClusterCommand::Create(args)) = cli.command else {
            panic!("wrong command: {:?}", cli.command)
        };
        assert_eq!(args.name.as_str(), "clus100");
        assert_eq!(args.masters, MasterCount::Count(3));
        assert_eq!(args.roles.len(), 2);
        assert!(args.service_cidr.is_none());

        rejects(&[
            "qb cluster create Bad_Name",
            "qb cluster create c --masters 2",
            "qb cluster create c --pod-cidr 10.0.0.1/16",
            "qb cluster create c --version v1.20",
            "qb cluster create c --role a=boss",
        ]);
    }

    #[test]
    fn attach_takes_a_count_or_names() {
        assert!(parse("qb cluster attach c --count 3 --selector zone=a").is_ok());
        assert!(parse("qb cluster attach c n1 n2").is_ok());
        rejects(&[
            "qb cluster attach c",
            "qb cluster attach c --count 3 n1",
            "qb cluster attach c --selector zone=a n1",
            "qb cluster attach c --count 0",
        ]);
    }

    #[test]
    fn bootstrap_tokens_parse_with_limits() {
        let cli = Cli::try_parse_from([
            "qb",
            "token",
            "bootstrap",
            "create",
            "--description",
            "rack 4",
            "--expires-in-hours",
            "720",
            "--max-uses",
            "10000",
        ])
        .expect("parse");
        let Command::Token(TokenCommand::Bootstrap(BootstrapTokenCommand::Create {
            description,
            expires_in_hours,
            max_uses,
        })) = cli.command
        else {
            panic!("not bootstrap create: {:?}", cli.command);
        };
        assert_eq!(
            description.map(|d| d.to_string()).as_deref(),
            Some("rack 4")
        );
        assert_eq!((expires_in_hours, max_uses), (Some(720), Some(10_000)));
        assert!(parse("qb token bootstrap ls").is_ok());
        assert!(parse("qb token bootstrap revoke 0190b5a4-8f4e-7c8b-9d0a-1b2c3d4e5f60").is_ok());
        rejects(&[
            "qb token bootstrap create --max-uses 0",
            "qb token bootstrap create --max-uses 10001",
            "qb token bootstrap create --expires-in-hours 0",
            "qb token bootstrap create --expires-in-hours 721",
            "qb token bootstrap revoke not-a-uuid",
        ]);
        // API tokens are unchanged.
        assert!(parse("qb token create --expires-in-hours 8760").is_ok());
    }

    #[test]
    fn agent_package_download_parses() {
        let cli = parse(
            "qb agent-package download --format tar.gz --max-uses 5 -O /tmp/x.tgz -o json --force",
        )
        .expect("parse");
        assert_eq!(cli.output, Format::Json);
        let Command::AgentPackage(AgentPackageCommand::Download(args)) = cli.command else {
            panic!("not a download: {:?}", cli.command);
        };
        assert_eq!(args.format, PackageFormat::TarGz);
        assert_eq!(args.format.as_str(), "tar.gz");
        assert_eq!((args.max_uses, args.expires_in_hours), (Some(5), None));
        assert_eq!(args.output_file, Some(PathBuf::from("/tmp/x.tgz")));
        assert!(args.force);
        for (arg, format) in [("deb", PackageFormat::Deb), ("rpm", PackageFormat::Rpm)] {
            let cli = parse(&format!("qb agent-package download --format {arg}")).expect("parse");
            assert!(matches!(
                cli.command,
                Command::AgentPackage(AgentPackageCommand::Download(DownloadArgs { format: f, .. })) if f == format
            ));
            assert_eq!(format.as_str(), arg);
        }
        rejects(&[
            "qb agent-package download",
            "qb agent-package download --format zip",
            "qb agent-package download --format tgz",
            "qb agent-package download --format deb --max-uses 0",
            "qb agent-package download --format deb -o x.deb",
        ]);
    }

    #[test]
    fn cluster_kubeconfig_parses() {
        let cli = parse("qb cluster kubeconfig prod --expires-in-hours 8760 -O kube/config")
            .expect("parse");
        let Command::Cluster(ClusterCommand::Kubeconfig(args)) = cli.command else {
            panic!("not a kubeconfig: {:?}", cli.command);
        };
        assert_eq!(args.cluster, "prod");
        assert_eq!(args.expires_in_hours, Some(8760));
        assert_eq!(args.output_file, Some(PathBuf::from("kube/config")));
        let cli = parse("qb clusters kubeconfig prod -o json").expect("parse");
        assert_eq!(cli.output, Format::Json);
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Kubeconfig(KubeconfigArgs {
                expires_in_hours: None,
                output_file: None,
                ..
            }))
        ));
        rejects(&[
            "qb cluster kubeconfig",
            "qb cluster kubeconfig prod --expires-in-hours 0",
            "qb cluster kubeconfig prod --expires-in-hours 8761",
            // -o is the output format, not the file.
            "qb cluster kubeconfig prod -o kubeconfig.yaml",
        ]);
    }

    #[test]
    fn node_logs_parse() {
        let cli = parse("qb node logs n1 etcd -f --bytes 100").expect("parse");
        assert!(
            matches!(cli.command, Command::Node(NodeCommand::Logs { node, service, follow: true, bytes: 100, since: None })
            if node == "n1" && service == "etcd")
        );
        assert!(parse("qb node logs n1").is_err());
        let cli = parse("qb node logs n1 kubelet --since 10m").expect("parse");
        assert!(
            matches!(
                cli.command,
                Command::Node(NodeCommand::Logs {
                    since: Some(600),
                    ..
                })
            ),
            "{cli:?}"
        );
        assert!(parse("qb node logs n1 kubelet --since 2h -f").is_ok());
        for bad in ["10", "m", "-1m", "31d", "10 m", "1w"] {
            assert!(
                parse(&format!("qb node logs n1 kubelet --since {bad}")).is_err(),
                "{bad}"
            );
        }
        assert!(parse("qb node logs n1 etcd --bytes 0").is_err());
    }

    #[test]
    fn node_metrics_parses_its_range() {
        let cli = parse("qb node metrics n1 --range 24h").expect("parse");
        assert!(
            matches!(cli.command, Command::Node(NodeCommand::Metrics { node, range })
            if node == "n1" && range == "24h")
        );
        let cli = parse("qb node metrics n1").expect("parse");
        assert!(
            matches!(cli.command, Command::Node(NodeCommand::Metrics { range, .. }) if range == "1h")
        );
        assert!(parse("qb node metrics n1 --range 2h").is_err());
    }

    #[test]
    fn alert_commands_parse() {
        let cli =
            parse("qb alert silence --rule disk_full --object n2 --minutes 90 --comment moving")
                .expect("parse");
        assert!(
            matches!(cli.command, Command::Alert(AlertCommand::Silence { rule: Some(r), object: Some(o), minutes: 90, .. })
            if r == "disk_full" && o == "n2")
        );
        assert!(parse("qb alert silence --rule loud --minutes 5 --comment x").is_err());
        assert!(parse("qb alert silence --rule disk_full --minutes 0 --comment x").is_err());
        assert!(matches!(
            parse("qb alerts ls --all").expect("parse").command,
            Command::Alert(AlertCommand::List { all: true })
        ));
    }

    #[test]
    fn alert_rule_commands_parse() {
        let cli =
            parse("qb alert add-rule hot --metric cpu --above 90 --for 10 --severity critical")
                .expect("parse");
        assert!(
            matches!(cli.command, Command::Alert(AlertCommand::AddRule { name, metric, above, for_minutes: 10, severity })
            if name == "hot" && metric == "cpu" && above == 90.0 && severity == "critical")
        );
        assert!(parse("qb alert add-rule hot --metric swap --above 1 --for 1").is_err());
        assert!(parse("qb alert add-rule hot --metric cpu --above 90 --for 61").is_err());
        assert!(matches!(
            parse("qb alert remove-rule hot").expect("parse").command,
            Command::Alert(AlertCommand::RemoveRule { name }) if name == "hot"
        ));
    }

    #[test]
    fn notify_commands_parse() {
        let cli =
            parse("qb notify add hook --webhook https://hooks.example.com/qb").expect("parse");
        assert!(
            matches!(cli.command, Command::Notify(NotifyCommand::Add { name, webhook: Some(w), email: None, min_severity })
            if name == "hook" && w == "https://hooks.example.com/qb" && min_severity == "warning")
        );
        let cli = parse("qb notify add pager --email ops@example.com --min-severity critical")
            .expect("parse");
        assert!(
            matches!(cli.command, Command::Notify(NotifyCommand::Add { email: Some(e), min_severity, .. })
            if e == "ops@example.com" && min_severity == "critical")
        );
        // One target, exactly.
        assert!(parse("qb notify add x").is_err());
        assert!(parse("qb notify add x --webhook https://a.example --email a@b.example").is_err());
        assert!(parse("qb notify add x --email a@b.example --min-severity loud").is_err());
        assert!(matches!(
            parse("qb notifications log --channel hook").expect("parse").command,
            Command::Notify(NotifyCommand::Log { channel: Some(c) }) if c == "hook"
        ));
    }

    #[test]
    fn node_ping_parses() {
        let cli = parse("qb node ping n1").expect("parse");
        assert!(matches!(cli.command, Command::Node(NodeCommand::Ping { node }) if node == "n1"));
        assert!(parse("qb node ping").is_err());
    }

    #[test]
    fn bundle_commands_parse() {
        let cli = parse("qb bundle import ./k8s-1.20.2").expect("parse");
        assert!(matches!(
            cli.command,
            Command::Bundle(BundleCommand::Import { path }) if path == Path::new("./k8s-1.20.2")
        ));
        assert!(parse("qb bundles ls -o json").is_ok());
        let cli = parse("qb bundle show 1.20.2").expect("parse");
        assert!(matches!(
            cli.command,
            Command::Bundle(BundleCommand::Show { version }) if version.to_string() == "1.20.2"
        ));
        rejects(&["qb bundle import", "qb bundle show v1.20", "qb bundle show"]);
    }

    #[test]
    fn preflight_and_forced_detach_parse() {
        let cli = parse("qb cluster preflight clus100").expect("parse");
        let Command::Cluster(ClusterCommand::Preflight(args)) = cli.command else {
            panic!("not a preflight: {:?}", cli.command);
        };
        assert_eq!(
            (args.cluster.as_str(), args.last, args.all),
            ("clus100", false, false)
        );
        let cli = parse("qb cluster preflight c --last --all").expect("parse");
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Preflight(PreflightArgs {
                last: true,
                all: true,
                ..
            }))
        ));
        assert!(parse("qb cluster preflight").is_err());

        let cli = parse("qb cluster detach c n1 --force").expect("parse");
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Detach(DetachArgs { force: true, .. }))
        ));
        let cli = parse("qb cluster detach c n1").expect("parse");
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Detach(DetachArgs { force: false, .. }))
        ));
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse("qb node list --context prod -o yaml --state pending").expect("parse");
        assert_eq!(cli.context.as_deref(), Some("prod"));
        assert_eq!(cli.output, Format::Yaml);
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::List {
                state: Some(StateArg::Pending),
                ..
            })
        ));
        assert!(parse("qb node list --state gone").is_err());
    }
}
