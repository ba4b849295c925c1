//! Notifications end to end, with real receivers: a webhook server the test runs and Debian's
//! Exim as the SMTP server (STARTTLS with a CA the test makes, AUTH, a Maildir per mailbox).
//! Channels are made per tenant (operators only, bad input refused), a test message goes out
//! on demand, each alert change reaches each channel once (what is due at once in one
//! message), a refused webhook is retried and a 4xx one given up on, webhook bodies are
//! signed, and nothing reaches another tenant.

use axum::http::{Method, StatusCode};
use hmac::{Hmac, Mac as _};
use qb_api::{AlertRule, AlertSeverity};
use qb_controller::notify::{Mail, MailSettings, Notifier, send_due};
use qb_store::{Store, WantedAlert};
use qb_test_support::exim::{DOMAIN, Exim};
use qb_test_support::webhook::Receiver;
use serde_json::{Value, json};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

use crate::support::{App, on_both_stores};

on_both_stores!(alerts_reach_webhooks_and_mailboxes_once_per_change_and_tenant);

const SMTP_USER: &str = "alerts";
const SMTP_PASSWORD: &str = "pw-{$not}-expanded";
/// How long Exim may take to deliver a message it accepted.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn wanted(rule: AlertRule, severity: AlertSeverity, node: &str) -> WantedAlert {
    WantedAlert {
        rule,
        severity,
        object_kind: "node",
        object_id: format!("{node}-id"),
        object_name: node.to_owned(),
        summary: format!("{node}: {}", rule.as_str()),
    }
}

/// A CA, and a certificate for 127.0.0.1 it issued with its key: (CA PEM, cert PEM, key PEM).
fn mail_server_identity() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test mail CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The webhook's signature, computed here apart from the controller's code.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn subject(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
}

async fn alerts_reach_webhooks_and_mailboxes_once_per_change_and_tenant(store: Store) {
    let (ca, cert, key) = mail_server_identity();
    let exim = Exim::start(&["ops", "oncall"], SMTP_USER, SMTP_PASSWORD, &cert, &key)
        .expect("Exim (exim4-daemon-light) is required for this test");
    let mail = Mail::new(&MailSettings {
        url: format!("smtp://{SMTP_USER}@127.0.0.1:{}", exim.addr.port()),
        password: Some(SMTP_PASSWORD.to_owned()),
        from: format!("qb <qb@{DOMAIN}>"),
        ca_pem: Some(ca.into_bytes()),
    })
    .unwrap();
    let notifier = Notifier::new(Some(mail)).unwrap();
    let app = App::new(store.clone()).await.with_notifier(notifier);
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    // a's webhook refuses its first message for now; b's takes everything.
    let hook_a = Receiver::start(&[503]).unwrap();
    let hook_b = Receiver::start(&[]).unwrap();

    // Operators make channels; viewers may only look; bad input changes nothing.
    let webhook = json!({"name": "hook", "kind": "webhook", "target": hook_a.url("/qb")});
    let (status, _) = app
        .post(&a.viewer, "/api/v1/notification-channels", webhook.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"name": "x", "kind": "webhook", "target": "ftp://example.com/"}),
        json!({"name": "x", "kind": "webhook", "target": "https://user:pw@example.com/"}),
        json!({"name": "x", "kind": "webhook", "target": "https://"}),
        json!({"name": "x", "kind": "email", "target": "ops"}),
        json!({"name": "x", "kind": "email", "target": "ops@mail.test, <bad>@x.y"}),
        json!({"name": "x", "kind": "pager", "target": "ops@mail.test"}),
        json!({"name": "Bad Name", "kind": "email", "target": "ops@mail.test"}),
        json!({"name": "x", "kind": "email", "target": "ops@mail.test", "min_severity": "loud"}),
    ] {
        let (status, problem) = app
            .post(&a.operator, "/api/v1/notification-channels", bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let (status, made) = app
        .post(
            &a.operator,
            "/api/v1/notification-channels",
            webhook.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("qbwh_") && secret.len() > 64, "{secret}");
    let (status, _) = app
        .post(&a.operator, "/api/v1/notification-channels", webhook)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let pager = json!({"name": "pager", "kind": "email", "min_severity": "critical",
                       "target": format!("ops@{DOMAIN}, oncall@{DOMAIN}")});
    let (status, made) = app
        .post(&a.operator, "/api/v1/notification-channels", pager)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["secret"], Value::Null);
    let (status, _) = app
        .post(
            &b.operator,
            "/api/v1/notification-channels",
            json!({"name": "hook", "kind": "webhook", "target": hook_b.url("/b")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, listed) = app.get(&a.viewer, "/api/v1/notification-channels").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hook", "pager"]);
    assert!(
        !listed.to_string().contains(&secret),
        "a listing shows the secret"
    );

    // A test message on demand: delivered to both mailboxes through STARTTLS and AUTH.
    let (status, problem) = app
        .call(
            &a.operator,
            Method::POST,
            "/api/v1/notification-channels/pager/test",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{problem}\n{}", exim.log());
    for mailbox in ["ops", "oncall"] {
        let messages = exim.wait_for(mailbox, 1, WAIT).unwrap();
        assert_eq!(messages.len(), 1, "{mailbox}: {messages:?}");
        assert!(messages[0].contains("a test of notification channel pager"));
    }
    assert!(
        exim.log().contains("X=TLS") && exim.log().contains("A=plain:alerts"),
        "not encrypted and authenticated:\n{}",
        exim.log()
    );
    // A test to a webhook nobody serves says why it failed.
    let gone = Receiver::start(&[]).unwrap();
    let gone_url = gone.url("/x");
    drop(gone);
    app.post(
        &a.operator,
        "/api/v1/notification-channels",
        json!({"name": "nobody", "kind": "webhook", "target": gone_url}),
    )
    .await;
    let (status, problem) = app
        .call(
            &a.operator,
            Method::POST,
            "/api/v1/notification-channels/nobody/test",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("POST failed"));
    let (status, _) = app
        .delete(&a.operator, "/api/v1/notification-channels/nobody")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Two alerts fire in tenant a: the webhook wants both, the pager the critical one.
    let now = OffsetDateTime::now_utc();
    let offline = wanted(AlertRule::HostOffline, AlertSeverity::Critical, "n1");
    let disk = wanted(AlertRule::DiskFull, AlertSeverity::Warning, "n2");
    store
        .sync_alerts(a.id, &[offline, disk.clone()], now)
        .await
        .unwrap();
    send_due(&store, &app.state.notifier, now).await.unwrap();
    let ops = exim.wait_for("ops", 2, WAIT).unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(
        subject(&ops[1]),
        "[qb] FIRING critical host_offline on node n1"
    );
    assert!(ops[1].contains("n1: host_offline"), "{}", ops[1]);
    assert_eq!(exim.wait_for("oncall", 2, WAIT).unwrap().len(), 2);
    // The webhook said 503: retried 5 s later, not before.
    assert_eq!(hook_a.received().len(), 1);
    send_due(&store, &app.state.notifier, now + Duration::seconds(4))
        .await
        .unwrap();
    assert_eq!(hook_a.received().len(), 1);
    send_due(&store, &app.state.notifier, now + Duration::seconds(6))
        .await
        .unwrap();
    let got = hook_a.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503, 200]
    );
    let delivered = &got[1];
    assert_eq!(
        (delivered.method.as_str(), delivered.path.as_str()),
        ("POST", "/qb")
    );
    assert_eq!(delivered.header("content-type"), Some("application/json"));
    let timestamp = delivered.header("x-qb-timestamp").unwrap();
    assert_eq!(
        delivered.header("x-qb-signature"),
        Some(expected_signature(&secret, timestamp, &delivered.body).as_str())
    );
    let body: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(body["channel"], "hook");
    let mut alerts: Vec<(&str, &str)> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["object_name"].as_str().unwrap(),
                x["state"].as_str().unwrap(),
            )
        })
        .collect();
    alerts.sort();
    assert_eq!(
        alerts,
        [("n1", "firing"), ("n2", "firing")],
        "one message for both"
    );
    assert!(hook_b.received().is_empty(), "tenant b got a's alerts");

    // The delivery log, per tenant and channel.
    let (_, log) = app.get(&a.viewer, "/api/v1/notification-deliveries").await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3, "{log:?}");
    for d in log {
        assert_eq!(d["status"], "delivered", "{d}");
        let (attempts, error) = match d["channel"].as_str().unwrap() {
            "hook" => (2, json!("the webhook answered 503 Service Unavailable")),
            _ => (1, Value::Null),
        };
        assert_eq!(
            (d["attempts"].as_u64().unwrap(), &d["last_error"]),
            (attempts, &error)
        );
    }
    let (_, pager_log) = app
        .get(&a.viewer, "/api/v1/notification-deliveries?channel=pager")
        .await;
    assert_eq!(pager_log.as_array().unwrap().len(), 1);
    let (status, _) = app
        .get(&a.viewer, "/api/v1/notification-deliveries?channel=Bad!")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, none) = app.get(&b.viewer, "/api/v1/notification-deliveries").await;
    assert_eq!(none, json!([]));

    // n1 comes back: one "resolved" to each channel that had its firing, nothing else.
    let later = now + Duration::minutes(1);
    store
        .sync_alerts(a.id, std::slice::from_ref(&disk), later)
        .await
        .unwrap();
    send_due(&store, &app.state.notifier, later).await.unwrap();
    send_due(&store, &app.state.notifier, later + Duration::minutes(1))
        .await
        .unwrap();
    let ops = exim.wait_for("ops", 3, WAIT).unwrap();
    assert_eq!(ops.len(), 3);
    assert_eq!(
        subject(&ops[2]),
        "[qb] RESOLVED critical host_offline on node n1"
    );
    let got = hook_a.received();
    assert_eq!(got.len(), 3);
    let body: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            &body["alerts"][0]["object_name"],
            &body["alerts"][0]["state"]
        ),
        (&json!("n1"), &json!("resolved"))
    );
    // The same state again sends nothing.
    store
        .sync_alerts(a.id, std::slice::from_ref(&disk), later)
        .await
        .unwrap();
    send_due(&store, &app.state.notifier, later + Duration::hours(1))
        .await
        .unwrap();
    // (Had a message gone out, Exim would have delivered it by now.)
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        (exim.messages("ops").len(), hook_a.received().len()),
        (3, 3)
    );

    // A channel gets at most one message every 10 s: what fires meanwhile waits for the next.
    let soon = later + Duration::seconds(3);
    let n3 = wanted(AlertRule::HostOffline, AlertSeverity::Critical, "n3");
    store.sync_alerts(a.id, &[disk, n3], soon).await.unwrap();
    send_due(&store, &app.state.notifier, soon).await.unwrap();
    assert_eq!(hook_a.received().len(), 3, "sent within 10 s of the last");
    send_due(&store, &app.state.notifier, later + Duration::seconds(11))
        .await
        .unwrap();
    assert_eq!(hook_a.received().len(), 4);
    assert_eq!(exim.wait_for("ops", 4, WAIT).unwrap().len(), 4);

    // A webhook that answers 404 is given up on at once.
    let refusing = Receiver::start(&[404]).unwrap();
    app.post(
        &b.operator,
        "/api/v1/notification-channels",
        json!({"name": "refusing", "kind": "webhook", "target": refusing.url("/")}),
    )
    .await;
    let at = later + Duration::hours(2);
    store
        .sync_alerts(
            b.id,
            &[wanted(
                AlertRule::ClusterUnhealthy,
                AlertSeverity::Critical,
                "c1",
            )],
            at,
        )
        .await
        .unwrap();
    send_due(&store, &app.state.notifier, at).await.unwrap();
    send_due(&store, &app.state.notifier, at + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(refusing.received().len(), 1);
    assert_eq!(hook_b.received().len(), 1, "b's own webhook has b's alert");
    let (_, log) = app
        .get(
            &b.viewer,
            "/api/v1/notification-deliveries?channel=refusing",
        )
        .await;
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(log[0]["last_error"], "the webhook answered 404 Not Found");
}

/// Without an SMTP server, e-mail channels are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_channels_need_an_smtp_server() {
    let (store, _guard) = crate::support::sqlite_store().await;
    let app = App::new(store).await;
    let a = app.tenant("a").await;
    let (status, problem) = app
        .post(
            &a.operator,
            "/api/v1/notification-channels",
            json!({"name": "pager", "kind": "email", "target": "ops@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"].as_str().unwrap().contains("--smtp-url"),
        "{problem}"
    );
    let (_, listed) = app.get(&a.viewer, "/api/v1/notification-channels").await;
    assert_eq!(listed, json!([]));
}
