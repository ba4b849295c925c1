//! `qb context`: the saved controllers.

use anyhow::{anyhow, bail};
use serde::Serialize;

use super::App;
use crate::cli::ContextCommand;
use crate::output;

/// A context as listed: never with its token.
#[derive(Serialize)]
struct ContextView<'a> {
    name: &'a str,
    server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
    current: bool,
}

pub fn run(app: &mut App, cmd: ContextCommand) -> anyhow::Result<()> {
    match cmd {
        ContextCommand::List => {
            let current = app.config.current_context.as_deref();
            let views: Vec<ContextView<'_>> = app
                .config
                .contexts
                .iter()
                .map(|c| ContextView {
                    name: &c.name,
                    server: &c.server,
                    fingerprint: c.fingerprint.as_deref(),
                    current: current == Some(c.name.as_str()),
                })
                .collect();
            app.out.emit_list(&views, "contexts", || {
                output::table(
                    &["CURRENT", "NAME", "SERVER", "FINGERPRINT"],
                    views.iter().map(|v| {
                        vec![
                            if v.current { "*" } else { "" }.to_owned(),
                            v.name.to_owned(),
                            v.server.to_owned(),
                            v.fingerprint.unwrap_or(output::NONE).to_owned(),
                        ]
                    }),
                )
            })
        }
        ContextCommand::Use { name } => {
            if app.config.find(&name).is_none() {
                bail!("no context named {name:?}; see `qb context list`");
            }
            app.config.current_context = Some(name.clone());
            app.save_config()?;
            app.out
                .emit(&name, || format!("Switched to context {name:?}."))
        }
        ContextCommand::Delete { name } => {
            let was_current = app.config.current_context.as_deref() == Some(name.as_str());
            if !app.config.remove(&name) {
                bail!("no context named {name:?}; see `qb context list`");
            }
            app.save_config()?;
            app.out.emit(&name, || {
                let mut s = format!("Deleted context {name:?}.");
                if was_current {
                    s.push_str(" No context is current now; pick one with `qb context use NAME`.");
                }
                s
            })
        }
        ContextCommand::Current => {
            let name = app.config.current_context.clone().ok_or_else(|| {
                anyhow!("no current context; pick one with `qb context use NAME`")
            })?;
            app.out.emit(&name, || name.clone())
        }
    }
}
