//! The controller's data directory on a full file system (a small tmpfs the test mounts, as
//! root): a write either lands or is refused with a clear 503, reads go on, the process stays up,
//! and once there is space again writes work without a restart; what was acknowledged is still
//! there after one, and nothing refused is.

use axum::http::StatusCode;
use qb_test_support::disk::{Tmpfs, fill};
use serde_json::{Value, json};

use crate::support::Controller;

/// Writes tried while the disk is full, at most: enough to fill whatever the database had
/// allocated before.
const MAX_WRITES: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("small"), "6m").unwrap();
    let data = small.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let database = qb_test_support::sqlite_url(&data);
    let controller = Controller::start(dir.path(), &data, &database);
    let client = reqwest::Client::new();
    let create = |name: String| {
        let request = client
            .post(format!("{}/api/v1/users", controller.url))
            .bearer_auth(&controller.admin_token)
            .json(&json!({"name": name, "role": "viewer"}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(create("before".to_owned()).await.0, StatusCode::CREATED);

    let filler = small.path().join("filler");
    fill(&filler).unwrap();
    let mut landed = vec!["before".to_owned()];
    let mut refused = Vec::new();
    for i in 0..MAX_WRITES {
        let name = format!("during-{i}");
        let (status, answer) = create(name.clone()).await;
        match status {
            StatusCode::CREATED => landed.push(name),
            StatusCode::SERVICE_UNAVAILABLE => {
                let detail = answer["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("no space left"), "{answer}");
                refused.push(name);
                if refused.len() == 5 {
                    break;
                }
            }
            _ => panic!(
                "a write on a full disk answered {status}: {answer}\n{}",
                controller.log()
            ),
        }
    }
    assert!(
        !refused.is_empty(),
        "{MAX_WRITES} writes on a full disk all landed"
    );
    println!(
        "on the full disk: {} writes landed (in space the database had), then {} refused",
        landed.len() - 1,
        refused.len()
    );
    // Reads go on.
    assert_eq!(users(&controller, &client).await, landed);

    std::fs::remove_file(&filler).unwrap();
    let (status, answer) = create("after".to_owned()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{answer}\n{}",
        controller.log()
    );
    landed.push("after".to_owned());
    assert_eq!(users(&controller, &client).await, landed);
    let log = controller.log();
    assert!(!log.contains("panicked"), "{log}");

    // What was acknowledged survives a restart.
    drop(controller);
    let controller = Controller::start(dir.path(), &data, &database);
    assert_eq!(users(&controller, &client).await, landed);
    assert!(refused.iter().all(|name| !landed.contains(name)));
}

/// The tenant's users made by the test, in order.
async fn users(controller: &Controller, client: &reqwest::Client) -> Vec<String> {
    let mut names = controller.user_names(client).await;
    names.retain(|name| name != "admin");
    let order = |name: &String| match name.strip_prefix("during-") {
        Some(i) => (1, i.parse::<usize>().unwrap()),
        None if name == "before" => (0, 0),
        None => (2, 0),
    };
    names.sort_by_key(order);
    names
}
