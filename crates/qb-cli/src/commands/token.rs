//! `qb token`.

use qb_api::endpoints;
use qb_api::{
    BootstrapToken, CreateBootstrapToken, CreateToken, CreatedBootstrapToken, CreatedToken, Token,
};
use serde::Serialize;

use super::{App, now};
use crate::cli::{BootstrapTokenCommand, TokenCommand};
use crate::client::Client;
use crate::output;

/// Prints a created token, then warns that its secret is shown this once.
fn emit_created<T: Serialize>(
    app: &App,
    created: &T,
    fields: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    app.out.emit(created, fields)?;
    eprintln!(
        "warning: this is the only time the secret is shown; store it now (the controller keeps only a hash)."
    );
    Ok(())
}

pub async fn run(app: &App, cmd: TokenCommand) -> anyhow::Result<()> {
    let client = app.client()?;
    match cmd {
        TokenCommand::Create {
            user,
            description,
            expires_in_hours,
        } => {
            let body = CreateToken {
                user,
                description,
                expires_in_hours,
            };
            let created: CreatedToken = client
                .call_with(client.request(&endpoints::CREATE_TOKEN, &[], &[]), &body)
                .await?;
            let t = &created.token;
            emit_created(app, &created, || {
                output::fields(&[
                    ("Token", t.id.to_string()),
                    ("User", t.user.to_string()),
                    ("Role", t.role.as_str().to_owned()),
                    ("Expires", output::timestamp(t.expires_at)),
                    ("Secret", created.secret.clone()),
                ])
            })
        }
        TokenCommand::List => {
            let tokens: Vec<Token> = client.list(&endpoints::LIST_TOKENS, &[], None).await?;
            app.out
                .emit_list(&tokens, "tokens", || output::tokens_table(&tokens, now()))
        }
        TokenCommand::Revoke { id } => {
            let id = id.to_string();
            let token: Token = client
                .call(client.request(&endpoints::REVOKE_TOKEN, &[&id], &[]))
                .await?;
            app.out
                .emit(&token, || format!("Token {} revoked.", token.id))
        }
        TokenCommand::Bootstrap(cmd) => bootstrap(app, &client, cmd).await,
    }
}

/// `qb token bootstrap`.
async fn bootstrap(app: &App, client: &Client, cmd: BootstrapTokenCommand) -> anyhow::Result<()> {
    match cmd {
        BootstrapTokenCommand::Create {
            description,
            expires_in_hours,
            max_uses,
        } => {
            let body = CreateBootstrapToken {
                description,
                expires_in_hours,
                max_uses,
            };
            let created: CreatedBootstrapToken = client
                .call_with(
                    client.request(&endpoints::CREATE_BOOTSTRAP_TOKEN, &[], &[]),
                    &body,
                )
                .await?;
            let t = &created.token;
            emit_created(app, &created, || {
                output::fields(&[
                    ("Token", t.id.to_string()),
                    (
                        "Description",
                        t.description
                            .as_ref()
                            .map_or_else(|| output::NONE.to_owned(), ToString::to_string),
                    ),
                    ("Max uses", t.max_uses.to_string()),
                    ("Expires", output::timestamp(t.expires_at)),
                    ("Secret", created.secret.clone()),
                ])
            })
        }
        BootstrapTokenCommand::List => {
            let tokens: Vec<BootstrapToken> = client
                .list(&endpoints::LIST_BOOTSTRAP_TOKENS, &[], None)
                .await?;
            app.out.emit_list(&tokens, "bootstrap tokens", || {
                output::bootstrap_tokens_table(&tokens, now())
            })
        }
        BootstrapTokenCommand::Revoke { id } => {
            let id = id.to_string();
            let token: BootstrapToken = client
                .call(client.request(&endpoints::REVOKE_BOOTSTRAP_TOKEN, &[&id], &[]))
                .await?;
            app.out
                .emit(&token, || format!("Bootstrap token {} revoked.", token.id))
        }
    }
}
