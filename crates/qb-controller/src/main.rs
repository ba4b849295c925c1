//! `qb-controller`: serves the qb API, and a few commands for the controller's operator.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qb_api::{CreateToken, Name};
use std::sync::Arc;
use std::time::Duration;

use qb_controller::agents::Agents;
use qb_controller::agents::endpoint::AgentEndpoint;
use qb_controller::agents::packages::Packaging;
use qb_controller::agents::peers::Peers;
use qb_controller::artifacts::ArtifactStore;
use qb_controller::engine::Engine;
use qb_controller::kubeconfig::{self, PublicEndpoint};
use qb_controller::notify::{Mail, MailSettings, Notifier};
use qb_controller::workloads::Workloads;
use qb_controller::{AppState, bootstrap, router, serve, tls};
use qb_store::{Actor, Keyring, Store};

#[derive(Parser)]
#[command(name = "qb-controller", version, about = "The qb management plane")]
struct Cli {
    /// Where the controller keeps its state: the SQLite database, TLS identity, first admin token.
    #[arg(long, env = "QB_DATA_DIR", default_value = "qb-data", global = true)]
    data_dir: PathBuf,
    /// The database: `postgres://...` to share one PostgreSQL among replicas; default: SQLite
    /// in the data directory.
    #[arg(long, env = "QB_DATABASE_URL", global = true)]
    database: Option<String>,
    /// The keys that seal the secrets kept in the database (private keys, signing keys,
    /// channel secrets); created with a new key when missing. Every replica needs the same
    /// file. Default: `secrets.key` in the data directory.
    #[arg(long, env = "QB_SECRETS_KEY_FILE", global = true)]
    secrets_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(Box<ServeArgs>),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print a new admin token for a tenant, e.g. when every admin token has expired.
    AdminToken {
        #[arg(long, default_value = bootstrap::FIRST_TENANT)]
        tenant: String,
        #[arg(long, default_value = bootstrap::FIRST_ADMIN)]
        user: Name,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        expires_in_hours: u32,
    },
    /// The secrets kept in the database, sealed under the key file's keys.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// How many stored secrets each key seals.
    Status,
    /// Put a new key first in the key file: it seals what is written from now on. The other
    /// keys stay, to open what they sealed. Give every replica the new file, then `reseal`.
    NewKey,
    /// Seal every stored secret under the key file's first key (only data keys are wrapped
    /// again). Once no secret is sealed under an old key, its line may leave the file.
    Reseal,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant with an admin user, and print that admin's first token.
    Create {
        name: Name,
        #[arg(long, default_value = bootstrap::FIRST_ADMIN)]
        admin: Name,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:7443.
    #[arg(long, env = "QB_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Serve plain HTTP instead of TLS. Only allowed on a loopback address.
    #[arg(long)]
    insecure_http: bool,
    /// PEM certificate chain to serve instead of the generated one.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS names or addresses for the generated certificate (first start only).
    #[arg(long)]
    tls_san: Vec<String>,
    /// The API's URL as users reach it, written into kubeconfigs, e.g.
    /// https://qb.example.net:7443 (its host should be in the certificate); default: the
    /// listening URL.
    #[arg(long, env = "QB_PUBLIC_URL")]
    public_url: Option<String>,
    /// Address of the agent endpoint, where agents register and hold their channel (mutual
    /// TLS), e.g. 0.0.0.0:7444.
    #[arg(long, env = "QB_AGENT_LISTEN", default_value = "127.0.0.1:7444")]
    agent_listen: SocketAddr,
    /// The agent endpoint's URL as hosts reach it, written into agent packages; its host is in
    /// the endpoint's certificate. Default: https://<agent-listen>.
    #[arg(long, env = "QB_AGENT_URL")]
    agent_url: Option<String>,
    /// Extra DNS names or addresses for the agent endpoint's certificate.
    #[arg(long)]
    agent_san: Vec<String>,
    /// Other replicas' agent endpoints (repeat the flag), written into agent packages: agents
    /// move to one of them when the replica they use does not answer.
    #[arg(long, env = "QB_OTHER_AGENT_URLS", value_delimiter = ',')]
    other_agent_url: Vec<String>,
    /// With PostgreSQL: where the other replicas reach this one's agent endpoint (to relay work
    /// for the agents it holds). Default: https://<agent-listen>, unless it listens on every
    /// address.
    #[arg(long, env = "QB_PEER_URL")]
    peer_url: Option<String>,
    /// How often agents heartbeat; an agent silent for three intervals is offline.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_seconds: u64,
    /// How often the host metrics of heartbeats are written to the store (one batch for all
    /// agents; a minute's figures may come in several writes, which add up).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    metrics_flush_seconds: u64,
    /// The qb-agent executable that agent packages ship. Default: `qb-agent` beside this
    /// program.
    #[arg(long, env = "QB_AGENT_BINARY")]
    agent_binary: Option<PathBuf>,
    /// The SMTP server e-mail notifications go through: smtp://[USER@]HOST[:587] (STARTTLS,
    /// required) or smtps://[USER@]HOST[:465] (TLS). Without it, e-mail channels are refused.
    #[arg(long, env = "QB_SMTP_URL", requires = "smtp_from")]
    smtp_url: Option<String>,
    /// A file holding the SMTP password of --smtp-url's user (or set QB_SMTP_PASSWORD).
    #[arg(long, requires = "smtp_url")]
    smtp_password_file: Option<PathBuf>,
    /// The sender of e-mail notifications, e.g. "qb <alerts@example.com>".
    #[arg(long, env = "QB_SMTP_FROM", requires = "smtp_url")]
    smtp_from: Option<String>,
    /// A PEM CA certificate to trust for the SMTP server, beside the system's roots.
    #[arg(long, env = "QB_SMTP_CA", requires = "smtp_url")]
    smtp_ca: Option<PathBuf>,
    /// Lifetime of node certificates; agents renew them at 70-90 % of it.
    #[arg(long, env = "QB_NODE_CERT_SECONDS", default_value_t = 86400, value_parser = clap::value_parser!(i64).range(10..=31_536_000))]
    node_cert_seconds: i64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    create_private_dir(&cli.data_dir)?;
    let url = match &cli.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", cli.data_dir.join("qb.db").display()),
    };
    let key_file = cli
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| cli.data_dir.join("secrets.key"));
    if let Some(Command::Secrets(SecretsCommand::NewKey)) = &cli.command {
        let name = Keyring::add_key(&key_file)?;
        println!(
            "added key {name} first in {}; it seals what is written from now on. Copy the file to every replica, then run `qb-controller secrets reseal`.",
            key_file.display()
        );
        return Ok(());
    }
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    let (keyring, created) = match &cli.command {
        // Only the server makes the key file, on its first start.
        _ if serving => Keyring::load_or_create(&key_file)?,
        Some(Command::Secrets(_)) => (Keyring::load(&key_file)?, false),
        // Tenants and admin tokens touch no sealed secret: no key file is made for them.
        _ if key_file.exists() => (Keyring::load(&key_file)?, false),
        _ => (Keyring::ephemeral(), false),
    };
    if created {
        tracing::info!(file = %key_file.display(), "created the secrets key file with a new key; keep a copy apart from the database's backups");
    }
    let store = Store::open(&url, keyring)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    if serving || matches!(cli.command, Some(Command::Secrets(SecretsCommand::Reseal))) {
        reseal(&store, &key_file, created).await?;
    }
    match cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(ServeArgs::parse_from(["serve"]))))
    {
        Command::Serve(args) => serve_api(store, &cli.data_dir, *args).await,
        Command::Tenant(TenantCommand::Create { name, admin }) => {
            let (tenant, user) = store.create_tenant(&name, &admin).await?;
            let created = qb_controller::app::mint_token(
                &store,
                tenant.id,
                &user.name,
                None,
                CreateToken::DEFAULT_HOURS,
                &Actor::controller(),
            )
            .await?;
            eprintln!("created tenant {name} with admin user {admin}; its token (shown once):");
            println!("{}", created.secret);
            Ok(())
        }
        Command::AdminToken {
            tenant,
            user,
            expires_in_hours,
        } => {
            let tenant = store.tenant_by_name(&tenant).await?;
            let created = qb_controller::app::mint_token(
                &store,
                tenant.id,
                &user,
                None,
                expires_in_hours,
                &Actor::controller(),
            )
            .await?;
            println!("{}", created.secret);
            Ok(())
        }
        Command::Secrets(SecretsCommand::Status) => {
            let status = store.sealed_status().await?;
            let names = store.keyring().names();
            for (i, name) in names.iter().enumerate() {
                let count = status.by_key.get(name).copied().unwrap_or(0);
                let role = if i == 0 { " (seals)" } else { "" };
                println!("{name}{role}: {count} secret(s)");
            }
            for (name, count) in status.by_key.iter().filter(|(n, _)| !names.contains(n)) {
                println!("{name} (not in the key file): {count} secret(s)");
            }
            if status.not_sealed > 0 {
                println!("not sealed: {} secret(s)", status.not_sealed);
            }
            Ok(())
        }
        Command::Secrets(SecretsCommand::Reseal | SecretsCommand::NewKey) => Ok(()),
    }
}

/// Seals what is stored plain (a database from before secrets were sealed) and moves every
/// secret to the first key. A key file made just now for a database whose secrets another key
/// sealed is removed again: it could never open them.
async fn reseal(store: &Store, key_file: &Path, created: bool) -> Result<()> {
    match store.reseal().await {
        Ok(done) => {
            if done.sealed > 0 || done.rewrapped > 0 {
                tracing::info!(
                    sealed = done.sealed,
                    rewrapped = done.rewrapped,
                    "sealed the stored secrets under the key file's first key"
                );
            }
            Ok(())
        }
        Err(e @ qb_store::StoreError::Sealed { .. }) => {
            if created {
                let _ = std::fs::remove_file(key_file);
            }
            let hint = if created {
                "there was no key file, so a new one was made (and removed again)"
            } else {
                "the key file lacks that key"
            };
            Err(anyhow::Error::new(e)).with_context(|| {
                format!(
                    "the database's secrets cannot be opened with {} ({hint}); give this controller the key file of the replica that sealed them, with --secrets-key-file",
                    key_file.display()
                )
            })
        }
        Err(e) => Err(e.into()),
    }
}

async fn serve_api(store: Store, data_dir: &Path, args: ServeArgs) -> Result<()> {
    if args.insecure_http && !args.listen.ip().is_loopback() {
        bail!(
            "--insecure-http is only allowed on a loopback address, not {}",
            args.listen
        );
    }
    let public_url = args
        .public_url
        .as_deref()
        .map(kubeconfig::parse_public_url)
        .transpose()
        .context("--public-url")?;
    let first_token = bootstrap::first_start(&store, data_dir).await?;
    let identity = if args.insecure_http {
        None
    } else {
        let given = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
        Some(tls::load_or_generate(
            given,
            &data_dir.join("tls"),
            &args.tls_san,
        )?)
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if identity.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    let public_url = match public_url {
        Some(public_url) => public_url,
        None => {
            if addr.ip().is_unspecified() {
                tracing::warn!(
                    %url,
                    "kubeconfigs point at the listening address, which users cannot reach; set --public-url"
                );
            }
            url.clone()
        }
    };
    // An https URL on a controller serving TLS is taken to reach it directly: kubeconfigs trust
    // the served certificate. Otherwise TLS ends in front of the controller, and clients use their
    // own trusted roots.
    let public = Arc::new(PublicEndpoint {
        ca_pem: identity
            .as_ref()
            .filter(|_| public_url.starts_with("https://"))
            .map(|i| i.cert_pem.clone()),
        url: public_url,
    });
    let notifier = Arc::new(Notifier::new(
        mail_settings(&args)?.as_ref().map(Mail::new).transpose()?,
    )?);
    let agents = Arc::new(Agents::new(Duration::from_secs(args.heartbeat_seconds)));
    tokio::spawn(agents.metrics().clone().run(
        store.clone(),
        Duration::from_secs(args.metrics_flush_seconds),
    ));
    let ca = Arc::new(qb_controller::agents::ca::load_or_create(&store).await?);
    let artifacts_dir = data_dir.join("artifacts");
    let artifacts = ArtifactStore::open(&artifacts_dir)
        .with_context(|| format!("opening the artifact store {}", artifacts_dir.display()))?;
    let engine = Arc::new(Engine::load(store.clone(), agents.clone(), artifacts, &ca).await?);

    let endpoint = AgentEndpoint {
        store: store.clone(),
        agents: agents.clone(),
        ca: ca.clone(),
        node_cert_lifetime: time::Duration::seconds(args.node_cert_seconds),
        wake: engine.wake.clone(),
        artifacts: engine.artifacts.clone(),
    };
    let agent_listener = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("listening for agents on {}", args.agent_listen))?;
    let agent_addr = agent_listener.local_addr()?;
    let agent_url = args
        .agent_url
        .clone()
        .unwrap_or_else(|| format!("https://{agent_addr}"));
    let Some((agent_host, _)) = qb_controller::https_host_port(&agent_url) else {
        bail!("--agent-url must be an https:// URL with a host, not {agent_url:?}");
    };
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), agent_host];
    if !args.agent_listen.ip().is_unspecified() {
        sans.push(args.agent_listen.ip().to_string());
    }
    sans.extend(args.agent_san.iter().cloned());
    let peer_url = match (&args.peer_url, store.backend()) {
        (_, qb_store::Backend::Sqlite) => None,
        (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
        (None, _) if !args.agent_listen.ip().is_unspecified() => {
            Some(format!("https://{agent_addr}"))
        }
        (None, _) => bail!(
            "with PostgreSQL, say with --peer-url how the other replicas reach this one's agent endpoint (it listens on {agent_addr})"
        ),
    };
    if let Some(url) = &peer_url {
        match qb_controller::https_host_port(url) {
            Some((host, _)) => sans.push(host),
            None => bail!("--peer-url must be an https:// URL with a host, not {url:?}"),
        }
    }
    for url in &args.other_agent_url {
        if qb_controller::https_host_port(url).is_none() {
            bail!("--other-agent-url must be an https:// URL with a host, not {url:?}");
        }
    }
    sans.sort();
    sans.dedup();
    let agent_tls = endpoint.tls_config(&sans)?;
    if let Some(peer_url) = &peer_url {
        let replica = uuid::Uuid::now_v7().to_string();
        let certificate = ca.issue_replica_cert(&replica, time::Duration::days(365))?;
        let peers = Arc::new(Peers::new(
            store.clone(),
            replica.clone(),
            peer_url.clone(),
            ca.cert_pem(),
            &certificate,
        )?);
        agents.set_peers(peers.clone());
        tokio::spawn(peers.run());
        tracing::info!(replica, peer_url, "replica on a shared database");
    }
    tokio::spawn(endpoint.serve(agent_listener, agent_tls));
    // Everything an operator (or a test) needs to know, in one block. A closed stdout must not
    // stop the controller, so write errors are ignored here.
    let mut lines = Vec::new();
    if let Some(path) = &first_token {
        lines.push(format!(
            "First start: created tenant \"{}\" with admin user \"{}\".",
            bootstrap::FIRST_TENANT,
            bootstrap::FIRST_ADMIN
        ));
        lines.push(format!(
            "Its API token is in {} (readable only by you); it is not shown again. Log in with:",
            path.display()
        ));
        lines.push(format!(
            "  qb login {url} --token \"$(cat {})\"",
            path.display()
        ));
    }
    lines.push(format!(
        "agent endpoint on https://{agent_addr} (agents use {agent_url})"
    ));
    lines.push(format!("agent CA pin {}", ca.pin()));
    lines.push(format!("listening on {url}"));
    if let Some(identity) = &identity {
        lines.push(format!("certificate fingerprint {}", identity.fingerprint));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", lines.join("\n")).and_then(|()| out.flush());
    drop(out);

    let agent_binary = args.agent_binary.clone().or_else(|| {
        let beside = std::env::current_exe().ok()?.with_file_name("qb-agent");
        beside.exists().then_some(beside)
    });
    if agent_binary.is_none() {
        tracing::warn!(
            "no qb-agent binary found beside the controller: agent packages are unavailable (see --agent-binary)"
        );
    }
    let mut state = AppState::new(engine.clone());
    state.public = Some(public);
    state.notifier = notifier.clone();
    state.packaging = agent_binary.map(|agent_binary| {
        Arc::new(Packaging {
            agent_url: agent_url.clone(),
            other_agent_urls: args.other_agent_url.clone(),
            ca_pin: ca.pin(),
            agent_binary,
        })
    });
    tokio::spawn(lead(store.clone(), engine.clone(), notifier));
    serve::serve(
        listener,
        router(state),
        identity.map(|i| i.config),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

/// The SMTP settings the flags give, when they name a server.
fn mail_settings(args: &ServeArgs) -> Result<Option<MailSettings>> {
    let Some(url) = &args.smtp_url else {
        return Ok(None);
    };
    let password = match &args.smtp_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --smtp-password-file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        None => std::env::var("QB_SMTP_PASSWORD").ok(),
    };
    let ca_pem = match &args.smtp_ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("reading --smtp-ca {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Some(MailSettings {
        url: url.clone(),
        password,
        from: args.smtp_from.clone().unwrap_or_default(),
        ca_pem,
    }))
}

/// Runs the cluster engine while this replica holds the lead (always, on SQLite); another
/// replica takes over within seconds when this one stops or loses its database connection.
/// Replicas that do not lead pass their wake-ups on through the database.
async fn lead(store: Store, engine: Arc<Engine>, notifier: Arc<Notifier>) {
    const CHECK: Duration = Duration::from_secs(2);
    loop {
        let mut leadership = match store.try_lead().await {
            Ok(Some(leadership)) => leadership,
            Ok(None) => {
                let deadline = tokio::time::Instant::now() + CHECK;
                while let Ok(()) = tokio::time::timeout_at(deadline, engine.wake.notified()).await {
                    if let Err(e) = store.wake_engine().await {
                        tracing::warn!(error = %e, "could not wake the engine's replica; it looks again within seconds anyway");
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the database who runs the engine");
                tokio::time::sleep(CHECK).await;
                continue;
            }
        };
        tracing::info!("this replica runs the cluster engine");
        let running = tokio::spawn(engine.clone().run());
        let listening = tokio::spawn(hear_wakes(store.clone(), engine.clone()));
        let workloads = Arc::new(Workloads::default());
        let watching = tokio::spawn(qb_controller::workloads::run(
            store.clone(),
            engine.agents.clone(),
            workloads.clone(),
        ));
        let alerting = tokio::spawn(qb_controller::alerts::run(
            store.clone(),
            engine.agents.clone(),
            workloads,
        ));
        let notifying = tokio::spawn(qb_controller::notify::run(store.clone(), notifier.clone()));
        let pruning = tokio::spawn(qb_controller::audit::run(store.clone()));
        let upgrading = tokio::spawn(qb_controller::agent_upgrades::run(engine.clone()));
        let snapshotting = tokio::spawn(qb_controller::snapshots::run(engine.clone()));
        while leadership.holds().await {
            tokio::time::sleep(CHECK).await;
        }
        running.abort();
        listening.abort();
        alerting.abort();
        watching.abort();
        notifying.abort();
        pruning.abort();
        upgrading.abort();
        snapshotting.abort();
        tracing::warn!(
            "lost the database connection that held the engine's lead; stopped the engine"
        );
    }
}

/// Wakes the engine whenever another replica says there is work (PostgreSQL only).
async fn hear_wakes(store: Store, engine: Arc<Engine>) {
    loop {
        match store.engine_wakes().await {
            Ok(None) => return,
            Ok(Some(mut wakes)) => loop {
                if let Err(e) = wakes.next().await {
                    tracing::warn!(error = %e, "lost the engine's wake-ups; listening again");
                    break;
                }
                engine.wake.notify_one();
            },
            Err(e) => tracing::warn!(error = %e, "cannot listen for the engine's wake-ups"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}
