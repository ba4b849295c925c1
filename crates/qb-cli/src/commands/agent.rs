//! `qb agent upgrade`: move the hosts' agents to the build the controller ships.

use qb_api::endpoints;
use qb_api::{AgentUpgrade, StartAgentUpgrade};

use super::App;
use crate::cli::{AgentCommand, AgentUpgradeCommand};
use crate::output;

pub async fn run(app: &App, cmd: AgentCommand) -> anyhow::Result<()> {
    let client = app.client()?;
    let AgentCommand::Upgrade(cmd) = cmd;
    let upgrade: AgentUpgrade = match cmd {
        AgentUpgradeCommand::Start {
            batch,
            trial_seconds,
        } => {
            let body = StartAgentUpgrade {
                batch_size: batch,
                trial_seconds,
            };
            client
                .call_with(
                    client.request(&endpoints::START_AGENT_UPGRADE, &[], &[]),
                    &body,
                )
                .await?
        }
        AgentUpgradeCommand::Status => {
            client
                .call(client.request(&endpoints::GET_AGENT_UPGRADE, &[], &[]))
                .await?
        }
        AgentUpgradeCommand::Pause => {
            client
                .call(client.request(&endpoints::PAUSE_AGENT_UPGRADE, &[], &[]))
                .await?
        }
        AgentUpgradeCommand::Resume => {
            client
                .call(client.request(&endpoints::RESUME_AGENT_UPGRADE, &[], &[]))
                .await?
        }
        AgentUpgradeCommand::Stop => {
            client
                .call(client.request(&endpoints::STOP_AGENT_UPGRADE, &[], &[]))
                .await?
        }
    };
    app.out.emit(&upgrade, || render(&upgrade))
}

/// The upgrade, then a row per host.
pub fn render(upgrade: &AgentUpgrade) -> String {
    let mut fields = vec![
        ("Build", short_build(&upgrade.build)),
        ("Version", upgrade.version.clone()),
        ("State", upgrade.state.as_str().to_owned()),
    ];
    if let Some(message) = &upgrade.message {
        fields.push(("Message", message.clone()));
    }
    fields.extend([
        ("Batch", upgrade.batch_size.to_string()),
        ("Trial", format!("{} s", upgrade.trial_seconds)),
        ("Started", output::timestamp(upgrade.started_at)),
    ]);
    let hosts = output::table(
        &["HOST", "STATE", "BUILD", "MESSAGE"],
        upgrade.nodes.iter().map(|n| {
            vec![
                n.name.to_string(),
                n.state.as_str().to_owned(),
                n.build.as_deref().map(short_build).unwrap_or_default(),
                n.message.clone().unwrap_or_default(),
            ]
        }),
    );
    format!("{}\n{hosts}", output::fields(&fields))
}

/// A build by the first 12 digits of its SHA-256, as git shortens commits.
fn short_build(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}
