//! `qb-agent`: the qb node agent. Registers the host with its controller, then keeps one
//! outbound, mutually authenticated channel to it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use qb_agent::{config, host, run};

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
    /// Run the agent (the default).
    Run,
    /// Print the facts the agent reports about this host, as JSON.
    Facts,
    /// Check the configuration file and exit.
    CheckConfig,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command.unwrap_or(Command::Run) {
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
        Command::Run => {
            let config = config::Config::load(&cli.config)?;
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
