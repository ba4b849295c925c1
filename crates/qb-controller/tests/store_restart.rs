//! The store's PostgreSQL restarted under load, as a crash and an operator would (an immediate
//! shutdown, two seconds down, a start that recovers from the log): while it is down the API
//! answers 503 with a clear message and the process stays up; once it is back everything works
//! again without restarting the controller (its engine leads again too), every change that was
//! acknowledged is there, and none that was refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::Controller;

/// Clients writing at once while the database restarts.
const WRITERS: usize = 4;
/// How long the database stays down.
const DOWN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_database_is_reconnected_and_nothing_acknowledged_is_lost() {
    let mut pg = qb_test_support::PgServer::start_durable().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let controller = Controller::start(dir.path(), &data, &pg.url());
    let (url, token) = (controller.url.clone(), controller.admin_token.clone());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Writers create users as fast as they are answered, each remembering what was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url, token, stop) =
                (client.clone(), url.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{i}");
                    i += 1;
                    let response = client
                        .post(format!("{url}/api/v1/users"))
                        .bearer_auth(&token)
                        .json(&json!({"name": name, "role": "viewer"}))
                        .send()
                        .await;
                    let answer = match response {
                        Ok(r) => (r.status(), r.json::<Value>().await.unwrap_or_default()),
                        Err(e) => panic!("{name}: no answer: {e}"),
                    };
                    answers.push((name, answer));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = tokio::task::spawn_blocking(move || {
        pg.restart_after(DOWN).unwrap();
        pg
    });
    let pg = restarted.await.unwrap();
    let back = Instant::now();
    // Writes work again on their own, within seconds.
    let mut first_write_after = None;
    let mut after = Vec::new();
    while back.elapsed() < Duration::from_secs(15) {
        let name = format!("after-{}", after.len());
        let answered = client
            .post(format!("{url}/api/v1/users"))
            .bearer_auth(&token)
            .json(&json!({"name": name, "role": "viewer"}))
            .send()
            .await
            .unwrap();
        if answered.status() == StatusCode::CREATED {
            first_write_after = Some(back.elapsed());
            after.push(name);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_write_after = first_write_after.unwrap_or_else(|| {
        panic!(
            "writes did not work again within 15 s of the database's return:\n{}",
            controller.log()
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = after;
    let mut refused = Vec::new();
    let mut in_doubt = Vec::new();
    for writer in writers {
        for (name, (status, answer)) in writer.await.unwrap() {
            match status {
                StatusCode::CREATED => acknowledged.push(name),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(answer["code"], "unavailable", "{answer}");
                    let detail = answer["detail"].as_str().unwrap_or_default();
                    assert!(detail.contains("database"), "{answer}");
                    // Lost as it committed: made or not, and the answer says so.
                    if detail.contains("may or may not have been made") {
                        in_doubt.push(name);
                    } else {
                        refused.push(name);
                    }
                }
                _ => panic!(
                    "{name} answered {status} while the database restarted: {answer}\n{}",
                    controller.log()
                ),
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "the database was down {DOWN:?}; no write was refused"
    );

    // What was acknowledged is there; nothing refused is.
    let mut names = controller.user_names(&client).await;
    names.sort();
    for name in &acknowledged {
        assert!(
            names.binary_search(name).is_ok(),
            "{name} was acknowledged and is lost"
        );
    }
    for name in &refused {
        assert!(
            names.binary_search(name).is_err(),
            "{name} was refused and is there"
        );
    }
    // The engine leads again on the database that came back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while controller
        .log()
        .matches("this replica runs the cluster engine")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the engine did not lead again:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !controller.log().contains("panicked"),
        "{}",
        controller.log()
    );
    eprintln!(
        "database down {DOWN:?}: {} writes acknowledged, {} refused with 503, {} in doubt (said so); writes back {:?} after the database",
        acknowledged.len(),
        refused.len(),
        in_doubt.len(),
        first_write_after
    );
    drop(pg);
}
