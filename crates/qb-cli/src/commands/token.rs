//! `qb token`.

use qb_api::{CreateToken, CreatedToken, Token};

use super::{App, now};
use crate::cli::TokenCommand;
use crate::output;

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
            let created: CreatedToken = client.post(client.url(&["tokens"], &[]), &body).await?;
            let t = &created.token;
            app.out.emit(&created, || {
                output::fields(&[
                    ("Token", t.id.to_string()),
                    ("User", t.user.to_string()),
                    ("Role", t.role.as_str().to_owned()),
                    ("Expires", output::timestamp(t.expires_at)),
                    ("Secret", created.secret.clone()),
                ])
            })?;
            eprintln!(
                "warning: this is the only time the secret is shown; store it now (the controller keeps only a hash)."
            );
            Ok(())
        }
        TokenCommand::List => {
            let tokens: Vec<Token> = client.list(&["tokens"], &[], None).await?;
            app.out
                .emit_list(&tokens, "tokens", || output::tokens_table(&tokens, now()))
        }
        TokenCommand::Revoke { id } => {
            let id = id.to_string();
            let token: Token = client.delete(client.url(&["tokens", &id], &[])).await?;
            app.out
                .emit(&token, || format!("Token {} revoked.", token.id))
        }
    }
}
