//! `qb notify`: notification channels and their delivery log.

use qb_api::{Channel, ChannelKind, CreateChannel, CreatedChannel, Delivery, endpoints};

use super::App;
use crate::cli::NotifyCommand;
use crate::output;

pub async fn run(app: &App, cmd: NotifyCommand) -> anyhow::Result<()> {
    // Check arguments before touching the network.
    let new = match &cmd {
        NotifyCommand::Add {
            name,
            webhook,
            email,
            min_severity,
        } => {
            let (kind, target) = match (webhook, email) {
                (Some(url), _) => (ChannelKind::Webhook, url.clone()),
                (None, Some(addresses)) => (ChannelKind::Email, addresses.clone()),
                (None, None) => unreachable!("clap requires one"),
            };
            let new = CreateChannel {
                name: name.parse()?,
                kind,
                target,
                min_severity: Some(min_severity.parse()?),
            };
            new.validate()?;
            Some(new)
        }
        _ => None,
    };
    let client = app.client()?;
    match cmd {
        NotifyCommand::List => {
            let channels: Vec<Channel> = client
                .call(client.request(&endpoints::LIST_CHANNELS, &[], &[]))
                .await?;
            app.out.emit_list(&channels, "notification channels", || {
                output::channels_table(&channels)
            })
        }
        NotifyCommand::Add { .. } => {
            let new = new.unwrap_or_else(|| unreachable!("checked above"));
            let made: CreatedChannel = client
                .call_with(client.request(&endpoints::CREATE_CHANNEL, &[], &[]), &new)
                .await?;
            app.out.emit(&made, || match &made.secret {
                Some(secret) => format!(
                    "Channel {} made. Its bodies are signed with this secret, shown only now \
                     (header X-Qb-Signature: sha256=HMAC-SHA256 of \"<X-Qb-Timestamp>.<body>\"):\n{secret}",
                    made.channel.name
                ),
                None => format!("Channel {} made.", made.channel.name),
            })
        }
        NotifyCommand::Remove { name } => {
            client
                .call_no_content(client.request(&endpoints::DELETE_CHANNEL, &[&name], &[]))
                .await?;
            if app.table() {
                println!("Channel {name} removed.");
            }
            Ok(())
        }
        NotifyCommand::Test { name } => {
            client
                .call_no_content(client.request(&endpoints::TEST_CHANNEL, &[&name], &[]))
                .await?;
            if app.table() {
                println!("A test alert reached channel {name}.");
            }
            Ok(())
        }
        NotifyCommand::Log { channel } => {
            let deliveries: Vec<Delivery> = client
                .call(client.request(&endpoints::LIST_DELIVERIES, &[], &[("channel", channel)]))
                .await?;
            app.out.emit_list(&deliveries, "deliveries", || {
                output::deliveries_table(&deliveries)
            })
        }
    }
}
