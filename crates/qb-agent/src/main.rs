//! `qb-agent`: the qb node agent. Registers the host with its controller, then keeps one
//! outbound, mutually authenticated channel to it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use qb_agent::{balancer, builds, config, host, logs, run};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser)]
#[command(name = "qb-agent", version, about = "The qb node agent")]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        env = "QB_AGENT_CONFIG",
        default_value = "/etc/qb-agent/config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default): a small supervisor that runs the agent's build and tries
    /// new ones (see `qb_agent::builds`).
    Run,
    /// The agent itself, as its supervisor runs it (stdin: the supervisor's pipe).
    #[command(hide = true)]
    Work,
    /// Print the facts the agent reports about this host, as JSON.
    Facts,
    /// Check the configuration file and exit.
    CheckConfig,
    /// Run the node's API balancer (the agent runs it as a service of its own, so that it
    /// outlives the agent).
    #[command(hide = true)]
    ApiBalancer {
        /// Its settings, which the agent writes.
        #[arg(long)]
        settings: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let config = match command {
        Command::Run | Command::Work => Some(config::Config::load(&cli.config)?),
        _ => None,
    };
    // Running, the agent also keeps its log beside the services', where the controller can
    // read it (`qb node logs NODE qb-agent`).
    // (Its supervisor logs to stderr only: the service manager's journal.)
    let own_log = match (&config, &command) {
        (Some(config), Command::Work) => {
            Some(logs::open_own(&config.log_dir).with_context(|| {
                format!("opening the agent's log in {}", config.log_dir.display())
            })?)
        }
        _ => None,
    };
    let file_layer = own_log.map(|file| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_env("QB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(file_layer)
        .init();
    match command {
        Command::Facts => {
            println!(
                "{}",
                serde_json::to_string_pretty(&host::facts(None, None))?
            );
            Ok(())
        }
        Command::CheckConfig => {
            config::Config::load(&cli.config)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::ApiBalancer { settings } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(balancer::serve(&settings))?)
        }
        Command::Run => {
            let config = config.context("the configuration was loaded")?;
            builds::supervise(&cli.config, &config.state_dir)
        }
        Command::Work => {
            let config = config.context("the configuration was loaded")?;
            builds::exit_with_supervisor();
            // One thread: the agent is small and mostly waits.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::select! {
                    result = run::run(config) => result,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
    }
}
