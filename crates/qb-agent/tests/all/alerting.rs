//! Alerts on a used cluster, delivered for real: Debian's Exim as the controller's SMTP server
//! (STARTTLS, AUTH) with a mailbox, and a webhook receiver. A crash-looping pod raises an
//! alert that reaches both within a minute; deleting the pod sends one "resolved" to each.

use std::time::{Duration, Instant};

use qb_test_support::exim::{DOMAIN, Exim};
use qb_test_support::webhook::Receiver;
use serde_json::{Value, json};

use crate::harness::{Agent, poll};
use crate::http::Api;
use crate::kubernetes::kubectl;

/// How long an alert may take from the pod's first crash to each receiver.
const DELIVERED: Duration = Duration::from_secs(60);
const SMTP_USER: &str = "qb-alerts";

/// A mailbox behind a real mail server, and a webhook receiver.
pub struct Receivers {
    pub exim: Exim,
    pub hook: Receiver,
    ca: tempfile::NamedTempFile,
    password: String,
}

impl Receivers {
    pub fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("the mail CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("the mail server's certificate");
        let password = crate::harness::random_bootstrap_secret();
        let exim = Exim::start(
            &["ops"],
            SMTP_USER,
            &password,
            &cert.pem(),
            &key.serialize_pem(),
        )
        .expect("Exim (exim4-daemon-light) is required for this test");
        let ca_file = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(ca_file.path(), ca.pem()).expect("writing the CA");
        Self {
            exim,
            hook: Receiver::start(&[]).expect("the webhook receiver"),
            ca: ca_file,
            password,
        }
    }

    /// The controller's SMTP settings, as environment.
    pub fn controller_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "QB_SMTP_URL",
                format!("smtp://{SMTP_USER}@127.0.0.1:{}", self.exim.addr.port()),
            ),
            ("QB_SMTP_PASSWORD", self.password.clone()),
            ("QB_SMTP_FROM", format!("qb <qb@{DOMAIN}>")),
            ("QB_SMTP_CA", self.ca.path().display().to_string()),
        ]
    }

    /// The e-mail subjects and webhook alerts about `object` so far: (subjects, states).
    fn about(&self, object: &str) -> (Vec<String>, Vec<String>) {
        let subjects = self
            .exim
            .messages("ops")
            .iter()
            .filter(|m| m.contains(object))
            .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ")))
            .map(str::to_owned)
            .collect();
        let states = self
            .hook
            .received()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .flat_map(|body| body["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["object_name"] == object)
            .map(|a| {
                format!(
                    "{} {}",
                    a["rule"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or("")
                )
            })
            .collect();
        (subjects, states)
    }
}

/// A pod of cluster `cluster` that crashes over and over: its alert reaches the API, the
/// mailbox and the webhook; once deleted, one "resolved" reaches each.
pub fn crash_loop_is_notified(api: &Api, admin: &Agent, cluster: &str, receivers: &Receivers) {
    api.post(
        "/notification-channels",
        &json!({"name": "ops-mail", "kind": "email", "target": format!("ops@{DOMAIN}")}),
    )
    .ok();
    api.post(
        "/notification-channels",
        &json!({"name": "ops-hook", "kind": "webhook", "target": receivers.hook.url("/qb")}),
    )
    .ok();
    let crasher = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {
            "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "qb.local/busybox:1",
                            "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", "echo giving up; exit 3"]}],
        },
    });
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&crasher.to_string()));
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    let object = format!("{cluster}/default/crasher");
    let alert = poll("the crash-looping pod's alert", DELIVERED, || {
        let firing = api.get("/alerts").ok();
        firing
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["rule"] == "pod_crash_looping" && a["object_name"] == object.as_str())
            .cloned()
            .ok_or_else(|| firing.to_string())
    });
    eprintln!(
        "crash-looping pod: alert firing {:?} after the pod was made: {}",
        started.elapsed(),
        alert["summary"]
    );
    let fired = |r: &Receivers| {
        let (subjects, states) = r.about(&object);
        if subjects
            .iter()
            .any(|s| s.contains("FIRING") && s.contains("pod_crash_looping"))
            && states.contains(&"pod_crash_looping firing".to_owned())
        {
            Ok(())
        } else {
            Err(format!("mail {subjects:?}, webhook {states:?}"))
        }
    };
    poll(
        "the alert in the mailbox and at the webhook",
        DELIVERED,
        || fired(receivers),
    );
    eprintln!(
        "crash-looping pod: e-mail and webhook received {:?} after the pod was made",
        started.elapsed()
    );
    cluster_health_shows_the_crashing_pod(api, cluster);

    // Fixed (the pod deleted): one "resolved" to each, and nothing more.
    let out = kubectl(admin, &["delete", "pod", "crasher", "--wait=false"], None);
    assert!(out.status.success(), "{out:?}");
    let deleted = Instant::now();
    poll(
        "the resolution in the mailbox and at the webhook",
        DELIVERED,
        || {
            let (subjects, states) = receivers.about(&object);
            if subjects.iter().any(|s| s.contains("RESOLVED"))
                && states.contains(&"pod_crash_looping resolved".to_owned())
            {
                Ok(())
            } else {
                Err(format!("mail {subjects:?}, webhook {states:?}"))
            }
        },
    );
    eprintln!(
        "crash-looping pod deleted: resolved by e-mail and webhook {:?} later",
        deleted.elapsed()
    );
    // Two more evaluations: still one message per change.
    std::thread::sleep(Duration::from_secs(10));
    let (subjects, states) = receivers.about(&object);
    assert_eq!(subjects.len(), 2, "one e-mail per change: {subjects:?}");
    assert_eq!(
        states,
        ["pod_crash_looping firing", "pod_crash_looping resolved"],
        "one webhook call per change"
    );
    let deliveries = api.get("/notification-deliveries").ok();
    assert!(
        deliveries
            .as_array()
            .into_iter()
            .flatten()
            .all(|d| d["status"] == "delivered"),
        "{deliveries}"
    );
}

/// The cluster's health, read from its API through the controller, shows the crashing pod with
/// its restarts and why it last stopped, every Kubernetes node Ready and the control plane led.
fn cluster_health_shows_the_crashing_pod(api: &Api, cluster: &str) {
    let health = poll(
        "the crashing pod in the cluster's health",
        DELIVERED,
        || {
            let health = api.get(&format!("/clusters/{cluster}/health")).ok();
            let crasher = health["attention"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["namespace"] == "default" && p["name"] == "crasher");
            match crasher {
                Some(p) if p["containers"][0]["last_exit"]["exit_code"] == 3 => Ok(health.clone()),
                _ => Err(health.to_string()),
            }
        },
    );
    let crasher = health["attention"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "crasher")
        .expect("the crashing pod");
    let app = &crasher["containers"][0];
    assert_eq!(app["name"], "app", "{crasher}");
    assert_eq!(app["last_exit"]["reason"], "Error", "{crasher}");
    assert!(app["restarts"].as_u64() >= Some(1), "{crasher}");
    assert!(health["pods"]["total"].as_u64() >= Some(3), "{health}");
    let nodes = health["nodes"].as_array().expect("nodes");
    assert!(
        !nodes.is_empty() && nodes.iter().all(|n| n["ready"] == true),
        "every Kubernetes node Ready: {health}"
    );
    let leaders: Vec<(&str, bool)> = health["leaders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (l["component"].as_str().unwrap_or(""), l["current"] == true))
        .collect();
    assert_eq!(
        leaders,
        [("kube-scheduler", true), ("kube-controller-manager", true)],
        "{health}"
    );
    eprintln!(
        "cluster health: {} pods, crasher restarted {} times, last exit {} ({})",
        health["pods"]["total"],
        app["restarts"],
        app["last_exit"]["reason"],
        app["last_exit"]["exit_code"]
    );
}
