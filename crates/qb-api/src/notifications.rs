//! Notifications: where a tenant's alerts go when they fire and when they resolve (a webhook,
//! e-mail addresses), and the log of every delivery.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{AlertSeverity, Name};

/// How a channel delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// An HTTP POST of a JSON body, signed with HMAC-SHA256 (header `X-Qb-Signature`).
    Webhook,
    /// A message through the controller's SMTP server.
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
        }
    }
}

/// Where a tenant's alerts go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Channel {
    pub id: String,
    pub name: Name,
    pub kind: ChannelKind,
    /// The webhook's URL, or the e-mail addresses, comma-separated.
    pub target: String,
    /// Alerts of this severity and above are sent.
    pub min_severity: AlertSeverity,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A new channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    pub name: Name,
    pub kind: ChannelKind,
    /// A webhook's `http://` or `https://` URL, or up to 10 e-mail addresses separated by
    /// commas.
    #[schema(min_length = 1, max_length = 2048)]
    pub target: String,
    /// Send alerts of this severity and above (default: every alert).
    #[serde(default)]
    pub min_severity: Option<AlertSeverity>,
}

/// A channel just made: its webhook's signing secret is shown once, here, and never again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedChannel {
    pub channel: Channel,
    /// The HMAC-SHA256 key of a webhook's `X-Qb-Signature`; absent for e-mail.
    pub secret: Option<String>,
}

impl CreateChannel {
    pub const MAX_TARGET: usize = 2048;
    pub const MAX_RECIPIENTS: usize = 10;

    /// Checks the target's shape: a webhook's URL, or e-mail addresses. (The controller parses
    /// both again with the parsers that will use them.)
    pub fn validate(&self) -> Result<(), crate::InvalidValue> {
        let bad = |m: String| Err(crate::InvalidValue(m));
        let target = self.target.trim();
        if target.is_empty() || target.len() > Self::MAX_TARGET {
            return bad(format!(
                "target must be 1 to {} characters",
                Self::MAX_TARGET
            ));
        }
        if target.chars().any(char::is_control) {
            return bad("target must not hold control characters".to_owned());
        }
        match self.kind {
            ChannelKind::Webhook => {
                if !(target.starts_with("https://") || target.starts_with("http://")) {
                    return bad(format!(
                        "a webhook's target is an http:// or https:// URL, not {}",
                        crate::quote(target)
                    ));
                }
            }
            ChannelKind::Email => {
                let addresses = email_addresses(target);
                if addresses.len() > Self::MAX_RECIPIENTS {
                    return bad(format!(
                        "at most {} e-mail addresses, not {}",
                        Self::MAX_RECIPIENTS,
                        addresses.len()
                    ));
                }
                if let Some(a) = addresses.iter().find(|a| !looks_like_address(a)) {
                    return bad(format!(
                        "{} is not an e-mail address (name@example.com)",
                        crate::quote(a)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The addresses of an e-mail channel's target, trimmed.
pub fn email_addresses(target: &str) -> Vec<&str> {
    target.split(',').map(str::trim).collect()
}

fn looks_like_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && a.len() <= 254
        && !a.contains(|c: char| c.is_whitespace() || "<>()[]\\,;:\"".contains(c))
}

/// Where one alert's change of state stands on its way to one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not sent yet, or sent and refused and to be tried again at `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up on after the last attempt, or refused for good (a 4xx answer).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One alert's change of state (fired or resolved) sent, or to be sent, to one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub channel: Name,
    pub alert_id: String,
    /// `firing` (it fired) or `resolved`.
    pub transition: crate::AlertState,
    pub summary: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

/// Which deliveries to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this channel's (by name).
    #[param(value_type = Option<crate::Name>)]
    pub channel: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// What a webhook receives: one POST per channel carries every change due at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookBody {
    /// The channel's name.
    pub channel: String,
    pub alerts: Vec<crate::Alert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(kind: ChannelKind, target: &str) -> CreateChannel {
        CreateChannel {
            name: "ops".parse().unwrap(),
            kind,
            target: target.to_owned(),
            min_severity: None,
        }
    }

    #[test]
    fn targets_are_checked_by_kind() {
        use ChannelKind::{Email, Webhook};
        for (kind, ok) in [
            (Webhook, "https://hooks.example.com/qb"),
            (Webhook, "http://127.0.0.1:9000/x?y=1"),
            (Email, "ops@example.com"),
            (Email, "ops@example.com, oncall+qb@team.example.org"),
        ] {
            assert_eq!(channel(kind, ok).validate(), Ok(()), "{ok}");
        }
        for (kind, bad, says) in [
            (Webhook, "ftp://example.com", "http:// or https://"),
            (Webhook, "", "1 to 2048"),
            (Webhook, "https://x\n.example.com", "control"),
            (Email, "ops", "not an e-mail address"),
            (Email, "ops@localhost", "not an e-mail address"),
            (Email, "Ops <ops@example.com>", "not an e-mail address"),
            (Email, "a@b.c,,d@e.f", "\"\" is not"),
            (
                Email,
                &["a@b.c"; 11].join(","),
                "at most 10 e-mail addresses",
            ),
        ] {
            let err = channel(kind, bad).validate().unwrap_err().0;
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let long = format!("https://example.com/{}", "x".repeat(2048));
        assert!(channel(Webhook, &long).validate().is_err());
    }
}
