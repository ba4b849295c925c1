//! Tables of alerts, silences, alert rules, notification channels and deliveries.

use qb_api::Alert;
use qb_api::{AlertState, Channel, Delivery, DeliveryStatus, Silence, ThresholdRule};

use super::{table, timestamp, truncate};

pub fn alerts_table(alerts: &[Alert]) -> String {
    table(
        &["FIRED", "STATE", "SEVERITY", "RULE", "OBJECT", "SUMMARY"],
        alerts.iter().map(|a| {
            let state = match (a.state, a.silenced) {
                (AlertState::Firing, true) => "firing (silenced)".to_owned(),
                (AlertState::Firing, false) => "firing".to_owned(),
                (AlertState::Resolved, _) => format!(
                    "resolved {}",
                    a.resolved_at.map(timestamp).unwrap_or_default()
                ),
            };
            vec![
                timestamp(a.fired_at),
                state,
                a.severity.as_str().to_owned(),
                a.rule.as_str().to_owned(),
                format!("{}/{}", a.object_kind, a.object_name),
                a.summary.clone(),
            ]
        }),
    )
}

pub fn silences_table(silences: &[Silence]) -> String {
    table(
        &["ID", "RULE", "OBJECT", "UNTIL", "BY", "COMMENT"],
        silences.iter().map(|s| {
            vec![
                s.id.clone(),
                s.rule.map_or("(any)", |r| r.as_str()).to_owned(),
                s.object_name.clone().unwrap_or_else(|| "(any)".to_owned()),
                timestamp(s.ends_at),
                s.created_by.clone(),
                truncate(&s.comment, 60),
            ]
        }),
    )
}

pub fn rules_table(rules: &[ThresholdRule]) -> String {
    table(
        &["NAME", "WHEN", "SEVERITY", "BY"],
        rules.iter().map(|r| {
            vec![
                r.name.to_string(),
                format!(
                    "{} above {}{} for {} min",
                    r.metric.as_str(),
                    r.above,
                    r.metric.unit(),
                    r.for_minutes
                ),
                r.severity.as_str().to_owned(),
                r.created_by.clone(),
            ]
        }),
    )
}

pub fn channels_table(channels: &[Channel]) -> String {
    table(
        &["NAME", "KIND", "MIN SEVERITY", "TARGET", "BY"],
        channels.iter().map(|c| {
            vec![
                c.name.to_string(),
                c.kind.as_str().to_owned(),
                c.min_severity.as_str().to_owned(),
                truncate(&c.target, 60),
                c.created_by.clone(),
            ]
        }),
    )
}

pub fn deliveries_table(deliveries: &[Delivery]) -> String {
    table(
        &[
            "AT",
            "CHANNEL",
            "CHANGE",
            "STATUS",
            "ATTEMPTS",
            "SUMMARY",
            "LAST ERROR",
        ],
        deliveries.iter().map(|d| {
            let status = match (d.status, d.next_attempt_at) {
                (DeliveryStatus::Pending, Some(next)) if d.attempts > 0 => {
                    format!("retry at {}", timestamp(next))
                }
                (status, _) => status.as_str().to_owned(),
            };
            vec![
                timestamp(d.created_at),
                d.channel.to_string(),
                d.transition.as_str().to_owned(),
                status,
                d.attempts.to_string(),
                truncate(&d.summary, 50),
                truncate(d.last_error.as_deref().unwrap_or(""), 60),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn alerts_and_silences_tables() {
        let alert = |state, silenced, resolved_at| Alert {
            id: "a1".into(),
            rule: qb_api::AlertRule::HostOffline,
            severity: qb_api::AlertSeverity::Critical,
            state,
            object_kind: "node".into(),
            object_id: "n1-id".into(),
            object_name: "n1".into(),
            summary: "the agent of n1 (in cluster web) is offline".into(),
            fired_at: datetime!(2026-12-05 10:00 UTC),
            resolved_at,
            silenced,
        };
        assert_eq!(
            alerts_table(&[
                alert(AlertState::Firing, true, None),
                alert(
                    AlertState::Resolved,
                    false,
                    Some(datetime!(2026-12-05 10:05 UTC))
                ),
            ]),
            "FIRED                  STATE                           SEVERITY   RULE           OBJECT    SUMMARY\n\
             2026-12-05T10:00:00Z   firing (silenced)               critical   host_offline   node/n1   the agent of n1 (in cluster web) is offline\n\
             2026-12-05T10:00:00Z   resolved 2026-12-05T10:05:00Z   critical   host_offline   node/n1   the agent of n1 (in cluster web) is offline\n"
        );
        let delivery = Delivery {
            id: "d1".into(),
            channel: "hook".parse().unwrap(),
            alert_id: "a1".into(),
            transition: AlertState::Firing,
            summary: "the agent of n1 is offline".into(),
            status: qb_api::DeliveryStatus::Pending,
            attempts: 1,
            last_error: Some("the webhook answered 503 Service Unavailable".into()),
            created_at: datetime!(2026-12-05 10:00 UTC),
            next_attempt_at: Some(datetime!(2026-12-05 10:00:05 UTC)),
            delivered_at: None,
        };
        assert_eq!(
            deliveries_table(&[delivery]),
            "AT                     CHANNEL   CHANGE   STATUS                          ATTEMPTS   SUMMARY                      LAST ERROR\n\
             2026-12-05T10:00:00Z   hook      firing   retry at 2026-12-05T10:00:05Z   1          the agent of n1 is offline   the webhook answered 503 Service Unavailable\n"
        );
        let silence = Silence {
            id: "s1".into(),
            rule: None,
            object_name: Some("n2".into()),
            comment: "moving data".into(),
            created_by: "user:op".into(),
            created_at: datetime!(2026-12-05 10:00 UTC),
            ends_at: datetime!(2026-12-05 12:00 UTC),
        };
        assert_eq!(
            silences_table(&[silence]),
            "ID   RULE    OBJECT   UNTIL                  BY        COMMENT\n\
             s1   (any)   n2       2026-12-05T12:00:00Z   user:op   moving data\n"
        );
    }
}
