//! Notifications: the replica that runs the engine sends the deliveries the store queued when
//! alerts fired or resolved, to webhooks ([`webhook`]) and e-mail addresses ([`email`]).
//!
//! Everything due for one channel at once goes in one message (a host losing its rack is one
//! e-mail listing the hosts, not a storm of them), and a channel gets at most one message
//! every [`PACE`]: what changes meanwhile waits for the next. A message that fails is retried with
//! growing pauses, up to [`MAX_ATTEMPTS`]; one refused for good (a 4xx answer, a permanent
//! SMTP error) is not. Channels are sent to concurrently, so a slow webhook holds up no other.

pub mod email;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use qb_api::{Alert, ChannelKind};
use qb_store::{ChannelTarget, DeliveryOutcome, DueDelivery, Store};
use time::OffsetDateTime;

pub use email::{Mail, MailSettings};

/// How often due deliveries are looked for.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// The most deliveries read at once, and in one message.
const BATCH: u32 = 500;
const PER_MESSAGE: usize = 100;
/// Messages in flight at once.
const CONCURRENT: usize = 8;
/// The least time between two messages to one channel: what changes meanwhile waits and goes
/// in the next one.
pub const PACE: time::Duration = time::Duration::seconds(10);
/// Attempts before a delivery is given up on: about half an hour of retries.
pub const MAX_ATTEMPTS: u32 = 10;
/// The pause after the first failure; it doubles after each, up to [`MAX_PAUSE`].
const FIRST_PAUSE: time::Duration = time::Duration::seconds(5);
const MAX_PAUSE: time::Duration = time::Duration::minutes(10);
/// How long finished deliveries stay in the log.
const KEEP: time::Duration = time::Duration::days(30);

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// Trying again cannot help (the receiver refused it for good).
    pub permanent: bool,
}

impl SendError {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// What sends: an HTTP client for webhooks, and the SMTP server when one is configured.
pub struct Notifier {
    webhooks: webhook::Webhooks,
    mail: Option<Mail>,
    /// When each channel last got a message (by channel id), for [`PACE`].
    delivered: std::sync::Mutex<HashMap<String, OffsetDateTime>>,
}

impl Notifier {
    pub fn new(mail: Option<Mail>) -> anyhow::Result<Self> {
        Ok(Self {
            webhooks: webhook::Webhooks::new()?,
            mail,
            delivered: std::sync::Mutex::default(),
        })
    }

    /// Whether `channel` may get a message at `now`: [`PACE`] after its last one.
    fn paced(&self, channel: &str, now: OffsetDateTime) -> bool {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .is_none_or(|last| now - *last >= PACE)
    }

    fn mark_delivered(&self, channel: &str, now: OffsetDateTime) {
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        // Forget channels long quiet (deleted ones among them).
        delivered.retain(|_, last| now - *last < PACE * 10);
        delivered.insert(channel.to_owned(), now);
    }

    /// Whether e-mail channels can be served.
    pub fn has_mail(&self) -> bool {
        self.mail.is_some()
    }

    /// Sends `alerts` to `channel` in one message.
    pub async fn send(&self, channel: &ChannelTarget, alerts: &[Alert]) -> Result<(), SendError> {
        match channel.channel.kind {
            ChannelKind::Webhook => self.webhooks.send(channel, alerts).await,
            ChannelKind::Email => match &self.mail {
                Some(mail) => mail.send(&channel.channel, alerts).await,
                None => Err(SendError::retry(
                    "this controller has no SMTP server (start it with --smtp-url)",
                )),
            },
        }
    }
}

/// The pause before attempt `attempts + 1`, after `attempts` failures.
pub fn pause_after(attempts: u32) -> time::Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_PAUSE * 2_i32.pow(doublings)).min(MAX_PAUSE)
}

/// What to record after a message of deliveries that had failed `attempts` times before.
fn outcome(result: Result<(), SendError>, attempts: u32, now: OffsetDateTime) -> DeliveryOutcome {
    match result {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(e) if e.permanent || attempts + 1 >= MAX_ATTEMPTS => {
            DeliveryOutcome::Failed { error: e.message }
        }
        Err(e) => DeliveryOutcome::Retry {
            error: e.message,
            next: now + pause_after(attempts + 1),
        },
    }
}

/// Groups due deliveries into messages: per channel, at most [`PER_MESSAGE`] each.
fn messages(due: Vec<DueDelivery>) -> Vec<Vec<DueDelivery>> {
    let mut by_channel: BTreeMap<String, Vec<DueDelivery>> = BTreeMap::new();
    for d in due {
        by_channel
            .entry(d.channel.channel.id.clone())
            .or_default()
            .push(d);
    }
    by_channel
        .into_values()
        .flat_map(|mut all| {
            let mut out = Vec::new();
            while all.len() > PER_MESSAGE {
                let rest = all.split_off(PER_MESSAGE);
                out.push(std::mem::replace(&mut all, rest));
            }
            out.push(all);
            out
        })
        .collect()
}

/// Sends what is due, every few seconds, until aborted (when this replica stops leading).
pub async fn run(store: Store, notifier: Arc<Notifier>) {
    let mut last_prune = None;
    loop {
        if let Err(e) = send_due(&store, &notifier, OffsetDateTime::now_utc()).await {
            tracing::warn!(error = %e, "could not read the notifications due; trying again shortly");
        }
        let now = OffsetDateTime::now_utc();
        if last_prune.is_none_or(|t| now - t > time::Duration::HOUR) {
            match store.prune_deliveries(now - KEEP).await {
                Ok(n) if n > 0 => {
                    tracing::info!(deliveries = n, "forgot old notification deliveries")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune old notification deliveries"),
            }
            last_prune = Some(now);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Sends every message due by `now` and records each outcome (retries counted from `now`).
pub async fn send_due(
    store: &Store,
    notifier: &Notifier,
    now: OffsetDateTime,
) -> qb_store::Result<()> {
    let due = store.due_deliveries(now, BATCH).await?;
    if due.is_empty() {
        return Ok(());
    }
    let ready: Vec<Vec<DueDelivery>> = messages(due)
        .into_iter()
        .filter(|m| notifier.paced(&m[0].channel.channel.id, now))
        .collect();
    let results = futures_util::stream::iter(ready)
        .map(|message| async move {
            let alerts: Vec<Alert> = message.iter().map(|d| d.alert.clone()).collect();
            let channel = &message[0].channel;
            let result = notifier.send(channel, &alerts).await;
            let attempts = message.iter().map(|d| d.attempts).max().unwrap_or(0);
            match &result {
                Ok(()) => tracing::info!(
                    channel = %channel.channel.name, kind = channel.channel.kind.as_str(),
                    alerts = alerts.len(), "notification sent"
                ),
                Err(e) => tracing::warn!(
                    channel = %channel.channel.name, kind = channel.channel.kind.as_str(),
                    alerts = alerts.len(), attempt = attempts + 1, permanent = e.permanent,
                    error = %e, "notification not delivered"
                ),
            }
            if result.is_ok() {
                notifier.mark_delivered(&channel.channel.id, now);
            }
            let ids: Vec<String> = message.iter().map(|d| d.id.clone()).collect();
            (ids, outcome(result, attempts, now))
        })
        .buffer_unordered(CONCURRENT)
        .collect::<Vec<_>>()
        .await;
    for (ids, outcome) in results {
        store.finish_deliveries(&ids, &outcome, now).await?;
    }
    Ok(())
}

/// One line per alert: what a person reads first.
pub fn headline(alert: &Alert) -> String {
    let state = match alert.state {
        qb_api::AlertState::Firing => "FIRING",
        qb_api::AlertState::Resolved => "RESOLVED",
    };
    format!(
        "{state} {} {} on {} {}",
        alert.severity.as_str(),
        alert.rule.as_str(),
        alert.object_kind,
        alert.object_name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_five_seconds_up_to_ten_minutes() {
        let secs: Vec<i64> = (1..=9).map(|n| pause_after(n).whole_seconds()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        let total: i64 = (1..MAX_ATTEMPTS)
            .map(|n| pause_after(n).whole_seconds())
            .sum();
        assert!((20 * 60..=40 * 60).contains(&total), "{total} s of retries");
    }

    #[test]
    fn failures_retry_until_the_last_attempt_or_a_permanent_refusal() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(outcome(Ok(()), 3, now), DeliveryOutcome::Delivered);
        assert_eq!(
            outcome(Err(SendError::retry("503")), 0, now),
            DeliveryOutcome::Retry {
                error: "503".into(),
                next: now + time::Duration::seconds(5)
            }
        );
        assert_eq!(
            outcome(Err(SendError::retry("503")), MAX_ATTEMPTS - 1, now),
            DeliveryOutcome::Failed {
                error: "503".into()
            }
        );
        assert_eq!(
            outcome(Err(SendError::permanent("404")), 0, now),
            DeliveryOutcome::Failed {
                error: "404".into()
            }
        );
    }
}
