//! Secrets at rest as an operator meets them: the controller makes its key file (owner-only)
//! on first start and seals what it stores; `qb-controller secrets` shows and rotates the keys
//! while the controller runs, and the running controller opens what the new key sealed; a
//! replica started without the key file refuses to start, says why, and leaves nothing behind.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use hmac::{Hmac, Mac as _};
use qb_test_support::webhook::Receiver;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::Controller;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_seals_its_secrets_and_rotates_keys_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let database = qb_test_support::sqlite_url(dir.path());
    let controller = Controller::start(dir.path(), &data, &database);
    let key_file = data.join("secrets.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is the owner's only");
    let first_key = key_names(&key_file)[0].clone();
    // The agent CA and the plan signer.
    assert_eq!(
        controller.command(&["secrets", "status"]),
        format!("{first_key} (seals): 2 secret(s)\n")
    );

    // A webhook channel: its secret is stored sealed.
    let hook = Receiver::start(&[]).unwrap();
    let client = reqwest::Client::new();
    let made: Value = client
        .post(format!("{}/api/v1/notification-channels", controller.url))
        .bearer_auth(&controller.admin_token)
        .json(&json!({"name": "hook", "kind": "webhook", "target": hook.url("/qb")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = made["secret"]
        .as_str()
        .expect("the channel's secret")
        .to_owned();

    // A new key, and every secret resealed under it, while the controller runs.
    let added = controller.command(&["secrets", "new-key"]);
    let new_key = key_names(&key_file)[0].clone();
    assert!(added.contains(&format!("added key {new_key}")), "{added}");
    assert_eq!(key_names(&key_file), [new_key.clone(), first_key.clone()]);
    controller.command(&["secrets", "reseal"]);
    assert_eq!(
        controller.command(&["secrets", "status"]),
        format!("{new_key} (seals): 3 secret(s)\n{first_key}: 0 secret(s)\n")
    );

    // The running controller opens the channel's secret, now under the new key: the test
    // message it sends is signed with it.
    let token = controller.admin_token.clone();
    let test_message = |url: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            client
                .post(format!("{url}/api/v1/notification-channels/hook/test"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(test_message(controller.url.clone()).await, 204);
    let got = hook.received();
    assert_eq!(got.len(), 1);
    let timestamp = got[0].header("x-qb-timestamp").unwrap();
    assert_eq!(
        got[0].header("x-qb-signature"),
        Some(signature(&secret, timestamp, &got[0].body).as_str())
    );

    // The old key leaves the file; the controller restarts on the new one alone.
    drop(controller);
    let text = std::fs::read_to_string(&key_file).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&first_key))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&key_file, kept).unwrap();
    let controller = Controller::start(dir.path(), &data, &database);
    assert_eq!(test_message(controller.url.clone()).await, 204);
    assert_eq!(hook.received().len(), 2);

    // The database's files hold none of it.
    drop(controller);
    let mut files = String::new();
    for name in ["qb.db", "qb.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            files.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    assert!(files.contains("qb-sealed-v1:"));
    assert!(
        !files.contains("PRIVATE KEY"),
        "a private key in the database"
    );
    assert!(
        !files.contains(&secret),
        "the channel secret in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_key_file_refuses_to_start_and_says_why() {
    let pg = qb_test_support::PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = Controller::start(dir.path(), &dir.path().join("a"), &pg.url());

    let data = dir.path().join("b");
    let out = Command::new(env!("CARGO_BIN_EXE_qb-controller"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--database", &pg.url()])
        .args(["serve", "--insecure-http", "--listen", "127.0.0.1:0"])
        .args(["--agent-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let key = key_names(&dir.path().join("a").join("secrets.key"))[0].clone();
    for says in [
        "the database's secrets cannot be opened with",
        "there was no key file, so a new one was made (and removed again)",
        "--secrets-key-file",
        &format!("sealed with key {key:?}"),
    ] {
        assert!(stderr.contains(says), "{says:?} not in:\n{stderr}");
    }
    assert!(
        !data.join("secrets.key").exists(),
        "a useless key file is left"
    );

    // Given the first replica's key file (and its admin token), it starts.
    std::fs::copy(
        dir.path().join("a").join("secrets.key"),
        data.join("secrets.key"),
    )
    .unwrap();
    std::fs::write(data.join("admin-token"), &first.admin_token).unwrap();
    let second = Controller::start(dir.path(), &data, &pg.url());
    let users = second.user_names(&reqwest::Client::new()).await;
    assert_eq!(users, ["admin"]);
}

/// The names of the keys in a key file, first first.
fn key_names(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// The webhook's signature, computed apart from the controller's code.
fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
