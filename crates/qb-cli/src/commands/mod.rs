//! The commands: each reads the configuration and arguments, calls the controller, prints.

mod agent;
mod agent_package;
mod alert;
mod bundle;
pub(crate) mod cluster;
mod context;
mod events;
mod node;
mod notify;
mod session;
mod token;
mod user;

use std::path::PathBuf;

use anyhow::bail;
use time::OffsetDateTime;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::config::{self, Config};
use crate::output::{Format, Output};
use crate::tls::Trust;

/// What every command needs: where the configuration lives, what it says, how to print.
pub struct App {
    pub out: Output,
    pub config_path: PathBuf,
    pub config: Config,
    /// `--context`: the context to use instead of the current one (for `login`, the one to save).
    pub context: Option<String>,
}

impl App {
    /// A client for the selected context.
    pub fn client(&self) -> anyhow::Result<Client> {
        let ctx = self.config.resolve(self.context.as_deref())?;
        let trust = match ctx.pinned()? {
            Some(fingerprint) => Trust::Pinned(fingerprint),
            None if ctx.server.starts_with("https:") => bail!(
                "context {:?} pins no certificate for {}; run `qb login {}` again",
                ctx.name,
                ctx.server,
                ctx.server
            ),
            // Plain HTTP on loopback: no TLS, so nothing is ever verified.
            None => Trust::Probe,
        };
        Client::new(&ctx.server, trust, Some(ctx.token.clone()))
    }

    pub fn save_config(&self) -> anyhow::Result<()> {
        config::save(&self.config_path, &self.config)
    }

    pub fn table(&self) -> bool {
        self.out.format == Format::Table
    }
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "qb", &mut std::io::stdout());
        return Ok(());
    }
    let config_path = config::path(cli.config.as_deref())?;
    let config = config::load(&config_path)?;
    let mut app = App {
        out: Output { format: cli.output },
        config_path,
        config,
        context: cli.context,
    };
    match cli.command {
        Command::Login(args) => session::login(&mut app, args).await,
        Command::Whoami => session::whoami(&app).await,
        Command::Context(cmd) => context::run(&mut app, cmd),
        Command::Node(cmd) => node::run(&app, cmd).await,
        Command::Cluster(cmd) => cluster::run(&app, cmd).await,
        Command::Bundle(cmd) => bundle::run(&app, cmd).await,
        Command::Token(cmd) => token::run(&app, cmd).await,
        Command::User(cmd) => user::run(&app, cmd).await,
        Command::Events(args) => events::run(&app, args).await,
        Command::Alert(cmd) => alert::run(&app, cmd).await,
        Command::Notify(cmd) => notify::run(&app, cmd).await,
        Command::Agent(cmd) => agent::run(&app, cmd).await,
        Command::AgentPackage(cmd) => agent_package::run(&app, cmd).await,
        Command::Completion { .. } => Ok(()),
    }
}
