//! `qb user`.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, bail};
use qb_api::endpoints;
use qb_api::{CreateUser, SetPassword, User};

use super::{App, now};
use crate::cli::UserCommand;
use crate::output;

pub async fn run(app: &App, cmd: UserCommand) -> anyhow::Result<()> {
    let client = app.client()?;
    match cmd {
        UserCommand::Create { name, role } => {
            let body = CreateUser {
                name,
                role: role.into(),
            };
            let user: User = client
                .call_with(client.request(&endpoints::CREATE_USER, &[], &[]), &body)
                .await?;
            app.out.emit(&user, || {
                format!(
                    "User {} created with role {}.",
                    user.name,
                    user.role.as_str()
                )
            })
        }
        UserCommand::List => {
            let users: Vec<User> = client
                .call(client.request(&endpoints::LIST_USERS, &[], &[]))
                .await?;
            app.out
                .emit_list(&users, "users", || output::users_table(&users, now()))
        }
        UserCommand::SetPassword { name } => {
            let body = SetPassword {
                password: read_password(name.as_str())?,
            };
            let set = client.request(&endpoints::SET_PASSWORD, &[name.as_str()], &[]);
            let user: User = client.call_with(set, &body).await?;
            app.out.emit(&user, || {
                format!(
                    "Password of {} set; they can log in to the web UI.",
                    user.name
                )
            })
        }
    }
}

/// The new password: typed twice without echo on a terminal, else the first line of stdin.
fn read_password(user: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {user}: "))
            .context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            bail!("the two passwords differ; nothing changed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty; nothing changed");
    }
    Ok(password)
}
