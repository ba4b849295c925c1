//! Controller replicas: which are alive, which holds each agent, which runs the engine.

use qb_api::NodeId;
use qb_store::Backend;
use time::{Duration, OffsetDateTime};

use crate::TestDb;

on_both_backends!(
    sessions_name_the_live_replica_that_holds_each_agent,
    one_replica_leads_until_it_lets_go,
);

async fn sessions_name_the_live_replica_that_holds_each_agent(db: TestDb) {
    let now = OffsetDateTime::now_utc();
    let (n1, n2) = (NodeId::new(), NodeId::new());
    db.replica_alive("a", "https://a:7444", now).await.unwrap();
    db.replica_alive("b", "https://b:7444", now).await.unwrap();
    db.agent_session_opened(n1, "a", now).await.unwrap();
    db.agent_session_opened(n2, "b", now).await.unwrap();

    let seen_by_b = db
        .remote_sessions("b", now - Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(seen_by_b.len(), 1, "B's own agents are not remote to it");
    assert_eq!(seen_by_b[&n1], "https://a:7444");
    assert_eq!(
        db.live_replicas("b", now - Duration::seconds(5))
            .await
            .unwrap(),
        ["https://a:7444"]
    );

    // The agent moves to B before A notices its channel closed: A's late close changes nothing.
    db.agent_session_opened(n1, "b", now).await.unwrap();
    db.agent_session_closed(n1, "a").await.unwrap();
    let seen_by_a = db
        .remote_sessions("a", now - Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(seen_by_a.len(), 2, "{seen_by_a:?}");
    assert!(seen_by_a.values().all(|url| url == "https://b:7444"));

    // A replica that stopped refreshing itself holds nothing, and is forgotten later.
    db.agent_session_opened(n2, "a", now).await.unwrap();
    let later = now + Duration::seconds(10);
    db.replica_alive("b", "https://b:7444", later)
        .await
        .unwrap();
    let seen_by_b = db
        .remote_sessions("b", later - Duration::seconds(5))
        .await
        .unwrap();
    assert!(seen_by_b.is_empty(), "A is gone: {seen_by_b:?}");
    db.forget_replicas(later - Duration::seconds(5))
        .await
        .unwrap();
    db.replica_alive("a", "https://a:7444", later)
        .await
        .unwrap();
    let seen_by_b = db
        .remote_sessions("b", later - Duration::seconds(5))
        .await
        .unwrap();
    assert!(
        seen_by_b.is_empty(),
        "A's sessions went with it: {seen_by_b:?}"
    );
}

async fn one_replica_leads_until_it_lets_go(db: TestDb) {
    let mut first = db
        .try_lead()
        .await
        .unwrap()
        .expect("the first replica leads");
    assert!(first.holds().await);
    if db.backend() == Backend::Sqlite {
        // One controller alone on its file: it always leads.
        return;
    }
    let second = db.open_again().await;
    assert!(second.try_lead().await.unwrap().is_none(), "two leaders");
    drop(first);
    let mut taken = None;
    for _ in 0..50 {
        taken = second.try_lead().await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut taken = taken.expect("the lead is free once its holder let go");
    assert!(taken.holds().await);
    assert!(db.try_lead().await.unwrap().is_none());
}
