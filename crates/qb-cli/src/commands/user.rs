//! `qb user`.

use qb_api::{CreateUser, User};

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
            let user: User = client.post(client.url(&["users"], &[]), &body).await?;
            app.out.emit(&user, || {
                format!(
                    "User {} created with role {}.",
                    user.name,
                    user.role.as_str()
                )
            })
        }
        UserCommand::List => {
            let users: Vec<User> = client.get(client.url(&["users"], &[])).await?;
            app.out
                .emit_list(&users, "users", || output::users_table(&users, now()))
        }
    }
}
