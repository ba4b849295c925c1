//! Webhooks: a POST of a JSON [`WebhookBody`], signed so the receiver knows it came from qb
//! and was not replayed:
//!
//! - `X-Qb-Timestamp`: seconds since the Unix epoch when it was signed;
//! - `X-Qb-Signature`: `sha256=` and the hex HMAC-SHA256, keyed with the channel's secret, of
//!   the timestamp, a `.`, and the body.
//!
//! Receivers check the signature and that the timestamp is recent, and tell repeats apart by
//! each alert's `id` and `state` (a message that timed out is sent again). Redirects are not
//! followed; 2xx is delivered, 408, 429 and 5xx are retried, any other answer is refused for
//! good.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use qb_api::{Alert, WebhookBody};
use qb_store::ChannelTarget;
use sha2::Sha256;

use super::SendError;

/// How long one POST may take, answer included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhooks {
    client: reqwest::Client,
}

impl Webhooks {
    pub fn new() -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qb-controller/", env!("CARGO_PKG_VERSION")));
        // HTTPS webhooks are checked against the system's trusted roots.
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            client: builder.build()?,
        })
    }

    pub async fn send(&self, channel: &ChannelTarget, alerts: &[Alert]) -> Result<(), SendError> {
        let body = serde_json::to_vec(&WebhookBody {
            channel: channel.channel.name.to_string(),
            alerts: alerts.to_vec(),
        })
        .map_err(|e| SendError::permanent(format!("encoding the body: {e}")))?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let secret = channel.secret.as_deref().unwrap_or_default();
        let answer = self
            .client
            .post(&channel.channel.target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Qb-Timestamp", timestamp.to_string())
            .header("X-Qb-Signature", signature(secret, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::retry(format!("POST failed: {:#}", anyhow::Error::new(e))))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("the webhook answered {status}");
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(SendError::retry(message))
        } else {
            Err(SendError::permanent(message))
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, keyed with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed apart, with Python's hmac module:
        // hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
