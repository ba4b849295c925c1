//! `qb-controller`: serves the qb API, and a few commands for the controller's operator.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qb_api::{CreateToken, Name};
use qb_controller::{AppState, bootstrap, reconcile, router, serve, tls};
use qb_store::{Actor, Store};

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
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
    let store = Store::open(&url)
        .await
        .with_context(|| format!("opening the database {}", redact(&url)))?;
    match cli
        .command
        .unwrap_or(Command::Serve(ServeArgs::parse_from(["serve"])))
    {
        Command::Serve(args) => serve_api(store, &cli.data_dir, args).await,
        Command::Tenant(TenantCommand::Create { name, admin }) => {
            let (tenant, user) = store.create_tenant(&name, &admin).await?;
            let created = qb_controller::api::mint_token(
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
            let created = qb_controller::api::mint_token(
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
    }
}

async fn serve_api(store: Store, data_dir: &Path, args: ServeArgs) -> Result<()> {
    if args.insecure_http && !args.listen.ip().is_loopback() {
        bail!(
            "--insecure-http is only allowed on a loopback address, not {}",
            args.listen
        );
    }
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
    let mut out = std::io::stdout().lock();
    if let Some(path) = &first_token {
        writeln!(
            out,
            "First start: created tenant \"{}\" with admin user \"{}\".",
            bootstrap::FIRST_TENANT,
            bootstrap::FIRST_ADMIN
        )?;
        writeln!(
            out,
            "Its API token is in {} (readable only by you); it is not shown again. Log in with:",
            path.display()
        )?;
        writeln!(
            out,
            "  qb login {url} --token \"$(cat {})\"",
            path.display()
        )?;
    }
    writeln!(out, "listening on {url}")?;
    if let Some(identity) = &identity {
        writeln!(out, "certificate fingerprint {}", identity.fingerprint)?;
    }
    out.flush()?;
    drop(out);

    let state = AppState::new(store);
    tokio::spawn(reconcile::run(state.clone()));
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
