//! `qb alert`: alerts, silences and the tenant's own rules.

use qb_api::{Alert, CreateSilence, CreateThresholdRule, Silence, ThresholdRule, endpoints};

use super::App;
use crate::cli::AlertCommand;
use crate::output;

pub async fn run(app: &App, cmd: AlertCommand) -> anyhow::Result<()> {
    // Check arguments before touching the network.
    let silence = match &cmd {
        AlertCommand::Silence {
            rule,
            object,
            minutes,
            comment,
        } => {
            let new = CreateSilence {
                rule: rule.as_deref().map(str::parse).transpose()?,
                object_name: object.clone(),
                duration_minutes: *minutes,
                comment: comment.clone(),
            };
            new.validate()?;
            Some(new)
        }
        _ => None,
    };
    let rule = match &cmd {
        AlertCommand::AddRule {
            name,
            metric,
            above,
            for_minutes,
            severity,
        } => {
            let new = CreateThresholdRule {
                name: name.parse()?,
                metric: metric.parse()?,
                above: *above,
                for_minutes: *for_minutes,
                severity: Some(severity.parse()?),
            };
            new.validate()?;
            Some(new)
        }
        _ => None,
    };
    let client = app.client()?;
    match cmd {
        AlertCommand::List { all } => {
            let state = Some(if all { "all" } else { "firing" }.to_owned());
            let alerts: Vec<Alert> = client
                .call(client.request(&endpoints::LIST_ALERTS, &[], &[("state", state)]))
                .await?;
            let what = if all { "alerts" } else { "firing alerts" };
            app.out
                .emit_list(&alerts, what, || output::alerts_table(&alerts))
        }
        AlertCommand::Silence { .. } => {
            let new = silence.unwrap_or_else(|| unreachable!("checked above"));
            let made: Silence = client
                .call_with(client.request(&endpoints::CREATE_SILENCE, &[], &[]), &new)
                .await?;
            app.out.emit(&made, || {
                format!(
                    "Silence {} until {}.",
                    made.id,
                    output::timestamp(made.ends_at)
                )
            })
        }
        AlertCommand::Silences => {
            let silences: Vec<Silence> = client
                .call(client.request(&endpoints::LIST_SILENCES, &[], &[]))
                .await?;
            app.out
                .emit_list(&silences, "silences", || output::silences_table(&silences))
        }
        AlertCommand::Rules => {
            let rules: Vec<ThresholdRule> = client
                .call(client.request(&endpoints::LIST_ALERT_RULES, &[], &[]))
                .await?;
            app.out
                .emit_list(&rules, "alert rules", || output::rules_table(&rules))
        }
        AlertCommand::AddRule { .. } => {
            let new = rule.unwrap_or_else(|| unreachable!("checked above"));
            let made: ThresholdRule = client
                .call_with(
                    client.request(&endpoints::CREATE_ALERT_RULE, &[], &[]),
                    &new,
                )
                .await?;
            app.out.emit(&made, || {
                format!(
                    "Rule {}: hosts with {} above {}{} for {} minutes alert ({}).",
                    made.name,
                    made.metric.as_str(),
                    made.above,
                    made.metric.unit(),
                    made.for_minutes,
                    made.severity.as_str()
                )
            })
        }
        AlertCommand::RemoveRule { name } => {
            client
                .call_no_content(client.request(&endpoints::DELETE_ALERT_RULE, &[&name], &[]))
                .await?;
            if app.table() {
                println!("Rule {name} removed.");
            }
            Ok(())
        }
        AlertCommand::Unsilence { id } => {
            client
                .call_no_content(client.request(&endpoints::DELETE_SILENCE, &[&id], &[]))
                .await?;
            if app.table() {
                println!("Silence {id} ended.");
            }
            Ok(())
        }
    }
}
