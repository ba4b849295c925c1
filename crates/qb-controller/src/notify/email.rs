//! E-mail through the operator's SMTP server, always encrypted: `smtp://host[:587]` upgrades
//! with STARTTLS (and fails when the server does not offer it), `smtps://host[:465]` speaks
//! TLS from the start. The server's certificate is checked against the system's roots and an
//! optional extra CA; the user name comes from the URL, the password from a file or the
//! environment (never from the URL, which `ps` shows).

use std::time::Duration;

use anyhow::{Context as _, bail};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use qb_api::{Alert, AlertState, Channel};

use super::{SendError, headline};

/// How long one conversation with the server may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// How to reach the SMTP server, as the controller's flags give it.
#[derive(Clone, Default)]
pub struct MailSettings {
    /// `smtp://[user@]host[:port]` or `smtps://[user@]host[:port]`.
    pub url: String,
    pub password: Option<String>,
    /// The sender, e.g. `qb <alerts@example.com>`.
    pub from: String,
    /// PEM of a CA to trust beside the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

pub struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl Mail {
    pub fn new(settings: &MailSettings) -> anyhow::Result<Self> {
        let url = url::Url::parse(&settings.url)
            .with_context(|| format!("--smtp-url {:?} is not a URL", settings.url))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .context("--smtp-url needs a host: smtp://mail.example.com")?
            .to_owned();
        if url.password().is_some() {
            bail!(
                "--smtp-url must not carry the password (every user of the machine sees a program's arguments); give it with --smtp-password-file or QB_SMTP_PASSWORD"
            );
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            bail!(
                "--smtp-url is smtp://[user@]host[:port] or smtps://..., with nothing after the port"
            );
        }
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(pem) = &settings.ca_pem {
            tls = tls.add_root_certificate(
                Certificate::from_pem(pem).context("reading the CA of --smtp-ca")?,
            );
        }
        let tls = tls
            .build_rustls()
            .context("setting up TLS toward the SMTP server")?;
        let (port, tls) = match url.scheme() {
            "smtp" => (url.port().unwrap_or(587), Tls::Required(tls)),
            "smtps" => (url.port().unwrap_or(465), Tls::Wrapper(tls)),
            other => bail!(
                "--smtp-url's scheme is smtp (STARTTLS) or smtps (TLS), not {other:?}: qb sends no mail in the clear"
            ),
        };
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        let user = percent_decode(url.username());
        match (user.is_empty(), &settings.password) {
            (false, Some(password)) => {
                transport = transport.credentials(Credentials::new(user, password.clone()));
            }
            (false, None) => bail!(
                "--smtp-url names user {user:?}; give the password with --smtp-password-file or QB_SMTP_PASSWORD"
            ),
            (true, Some(_)) => {
                bail!("a password is given but --smtp-url names no user: smtp://USER@host")
            }
            (true, None) => {}
        }
        let from: Mailbox = settings
            .from
            .parse()
            .with_context(|| format!("--smtp-from {:?} is not an e-mail address", settings.from))?;
        Ok(Self {
            transport: transport.build(),
            from,
            server: format!("{host}:{port}"),
        })
    }

    /// Sends `alerts` to the channel's addresses in one message.
    pub async fn send(&self, channel: &Channel, alerts: &[Alert]) -> Result<(), SendError> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject(alerts));
        for address in qb_api::email_addresses(&channel.target) {
            let to: Mailbox = address.parse().map_err(|e| {
                SendError::permanent(format!("{address:?} is not an e-mail address: {e}"))
            })?;
            message = message.to(to);
        }
        let message = message
            .header(ContentType::TEXT_PLAIN)
            .body(body(channel.name.as_str(), alerts))
            .map_err(|e| SendError::permanent(format!("writing the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let permanent = e.is_permanent();
                let message = format!(
                    "sending through {}: {:#}",
                    self.server,
                    anyhow::Error::new(e)
                );
                if permanent {
                    Err(SendError::permanent(message))
                } else {
                    Err(SendError::retry(message))
                }
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `[qb] FIRING critical host_offline on node host-1`, or for several alerts
/// `[qb] 3 alerts: 2 firing, 1 resolved`.
pub fn subject(alerts: &[Alert]) -> String {
    match alerts {
        [one] => format!("[qb] {}", headline(one)),
        many => {
            let firing = many
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .count();
            format!(
                "[qb] {} alerts: {firing} firing, {} resolved",
                many.len(),
                many.len() - firing
            )
        }
    }
}

/// The plain-text body: each alert's headline, summary and times.
pub fn body(channel: &str, alerts: &[Alert]) -> String {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut out = String::new();
    for a in alerts {
        out.push_str(&headline(a));
        out.push('\n');
        out.push_str(&format!("  {}\n", a.summary));
        out.push_str(&format!("  fired at {}", rfc3339(a.fired_at)));
        if let Some(resolved) = a.resolved_at {
            out.push_str(&format!(", resolved at {}", rfc3339(resolved)));
        }
        if a.silenced {
            out.push_str(" (silenced)");
        }
        out.push_str(&format!("\n  alert {}\n\n", a.id));
    }
    out.push_str(&format!(
        "Sent by qb to notification channel {channel}. `qb alert list` shows what is firing now.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, password: Option<&str>) -> MailSettings {
        MailSettings {
            url: url.to_owned(),
            password: password.map(str::to_owned),
            from: "qb <alerts@example.com>".to_owned(),
            ca_pem: None,
        }
    }

    #[test]
    fn smtp_settings_are_checked_before_any_mail_is_sent() {
        for ok in [
            settings("smtp://mail.example.com", None),
            settings(
                "smtps://alerts%40example.com@mail.example.com:465",
                Some("pw"),
            ),
            settings("smtp://alerts@127.0.0.1:2525", Some("pw")),
        ] {
            Mail::new(&ok).unwrap_or_else(|e| panic!("{}: {e:#}", ok.url));
        }
        for (bad, says) in [
            (settings("mail.example.com", None), "not a URL"),
            (settings("http://mail.example.com", None), "not \"http\""),
            (
                settings("smtp://u:pw@mail.example.com", None),
                "must not carry the password",
            ),
            (
                settings("smtp://u@mail.example.com", None),
                "give the password",
            ),
            (
                settings("smtp://mail.example.com", Some("pw")),
                "names no user",
            ),
            (
                settings("smtp://mail.example.com/x", None),
                "nothing after the port",
            ),
        ] {
            let err = format!("{:#}", Mail::new(&bad).err().unwrap());
            assert!(err.contains(says), "{}: {err}", bad.url);
        }
        let mut bad_from = settings("smtp://mail.example.com", None);
        bad_from.from = "not an address".into();
        assert!(format!("{:#}", Mail::new(&bad_from).err().unwrap()).contains("--smtp-from"));
    }

    #[test]
    fn user_names_are_percent_decoded() {
        assert_eq!(percent_decode("alerts%40example.com"), "alerts@example.com");
        assert_eq!(percent_decode("a+b"), "a+b");
    }
}
