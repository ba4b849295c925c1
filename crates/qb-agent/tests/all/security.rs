//! What the agent endpoint refuses, and what a refusal leaves behind (nothing). Agents and the
//! controller's agent endpoint run on 127.0.0.1.

use std::time::Duration;

use hyper::HeaderMap;
use hyper::body::Bytes;
use qb_agent_proto::{AgentMessage, ControllerMessage, HostMetrics, RENEW_PATH, encode};
use qb_store::{Actor, NewSecret, Store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::channel::{Channel, Conn, End, NodeCert, runtime};
use crate::engine::import_etcd_bundle;
use crate::harness::{Agent, AgentConfig, Controller, SHORT, poll, random_bootstrap_secret};
use crate::http::{Api, online, state};

const LOCAL: &str = "127.0.0.1";

/// Waits for `name` to exist with its agent online; the node.
fn online_node(api: &Api, name: &str) -> Value {
    poll(&format!("{name} registered and online"), SHORT * 3, || {
        let reply = api.get(&format!("/nodes/{name}"));
        if reply.status == 200 && online(&reply.body) {
            Ok(reply.body)
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    })
}

fn names(api: &Api) -> Vec<String> {
    let mut names: Vec<String> = api
        .nodes()
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_agent_with_the_wrong_ca_pin_refuses_the_controller() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let mut config = AgentConfig::new(&controller, &token.secret, "impostor-victim");
    config.ca_pins = vec![format!("sha256:{}", hex::encode([7u8; 32]))];
    let mut agent = Agent::start(&config, None);
    let line = agent.proc.log.wait_for(&["could not register"], SHORT * 2);
    assert!(
        line.contains("TLS") && line.contains("CA pin"),
        "the agent should say the TLS check against its CA pin failed: {line}"
    );
    assert!(agent.proc.is_running(), "it keeps retrying with backoff");
    assert!(api.nodes().is_empty(), "{:?}", api.nodes());
    // The token never reached the controller: TLS failed before any request was sent.
    let tokens = api.bootstrap_tokens();
    assert_eq!(tokens[0]["uses"], 0, "{tokens:?}");
    assert_eq!(controller.proc.log.count("agent registered"), 0);
    assert!(!agent.state_dir.join("identity.json").exists());
}

#[test]
fn refused_bootstrap_tokens_register_nothing() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();

    // Used up: one use, taken by a first host.
    let once = api.bootstrap_token(1, 1);
    let _first = Agent::start(&AgentConfig::new(&controller, &once.secret, "first"), None);
    online_node(&api, "first");

    // Revoked before use.
    let revoked = api.bootstrap_token(5, 1);
    let gone = api
        .delete(&format!("/bootstrap-tokens/{}", revoked.id))
        .ok();
    assert!(gone["revoked_at"].is_string(), "{gone}");

    // Expired: the API only makes tokens that live at least an hour, so put one that expired an
    // hour ago straight into the controller's database, as the API would have stored it.
    let expired = random_bootstrap_secret();
    runtime().block_on(async {
        let store = Store::open_sqlite(&controller.database(), controller.keyring())
            .await
            .expect("open the controller's database");
        let tenant = store.tenant_by_name("default").await.expect("tenant");
        store
            .create_bootstrap_token(
                tenant.id,
                NewSecret {
                    secret: expired.clone(),
                    hash: hex::encode(Sha256::digest(expired.as_bytes())),
                },
                None,
                time::OffsetDateTime::now_utc() - time::Duration::hours(1),
                5,
                &Actor::controller(),
            )
            .await
            .expect("insert an expired bootstrap token");
        store.close().await;
    });

    let cases = [
        (
            "unknown",
            random_bootstrap_secret(),
            "the bootstrap token is unknown to this controller",
        ),
        (
            "revoked",
            revoked.secret.clone(),
            "the bootstrap token was revoked",
        ),
        (
            "expired",
            expired.clone(),
            "the bootstrap token has expired",
        ),
        (
            "second",
            once.secret.clone(),
            "the bootstrap token has been used as many times as it allows",
        ),
    ];
    let agents: Vec<Agent> = cases
        .iter()
        .map(|(name, secret, _)| Agent::start(&AgentConfig::new(&controller, secret, name), None))
        .collect();
    for ((name, _, reason), agent) in cases.iter().zip(&agents) {
        let line = agent
            .proc
            .log
            .wait_for(&["registration refused: "], SHORT * 2);
        assert!(
            line.contains(&format!("registration refused: {reason}")),
            "{name}: expected the reason {reason:?}, got: {line}"
        );
        assert!(!agent.state_dir.join("identity.json").exists(), "{name}");
    }
    // No node was created, and no refused attempt counted a use.
    assert_eq!(names(&api), ["first"]);
    for node in ["unknown", "revoked", "expired", "second"] {
        api.get(&format!("/nodes/{node}")).problem(404, "not_found");
    }
    let tokens = api.bootstrap_tokens();
    let uses = |id: &str| {
        tokens
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["uses"].clone())
    };
    assert_eq!(uses(&once.id), Some(json!(1)), "{tokens:?}");
    assert_eq!(uses(&revoked.id), Some(json!(0)), "{tokens:?}");
    let expired_row = tokens
        .iter()
        .find(|t| t["id"] != once.id.as_str() && t["id"] != revoked.id.as_str())
        .expect("the expired token is listed");
    assert_eq!(expired_row["uses"], 0);
    assert_eq!(controller.proc.log.count("agent registered"), 1);
}

#[test]
fn the_same_machine_registering_again_is_the_same_node() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(3, 1);
    let config = AgentConfig::new(&controller, &token.secret, "reborn");
    let mut first = Agent::start(&config, None);
    let node = online_node(&api, "reborn");
    api.post("/nodes/reborn/authorize", &json!({})).ok();
    first.proc.stop();

    // Same host (machine id), its state directory lost, while the node is in the pool: refused,
    // with a message that says what to do. A token and a machine id do not take over a node.
    let mut second = Agent::start(&config, None);
    second
        .proc
        .log
        .wait_for(&["could not register", "deauthorize it first"], SHORT * 2);
    assert_eq!(names(&api), ["reborn"], "no duplicate node");
    assert_eq!(state(&api.node("reborn")), "authorized");
    second.proc.stop();

    // Once the operator deauthorizes it, the reinstalled host registers again as the same node,
    // pending until authorized again.
    api.post("/nodes/reborn/deauthorize", &json!({})).ok();
    let third = Agent::start(&config, None);
    third
        .proc
        .log
        .wait_for(&["registered with the controller"], SHORT * 2);
    let again = online_node(&api, "reborn");
    assert_eq!(again["id"], node["id"], "the same node, not a new one");
    assert_eq!(third.node_id().as_deref(), node["id"].as_str());
    assert_eq!(names(&api), ["reborn"], "no duplicate node");
    assert_eq!(
        state(&again),
        "pending",
        "a re-registered host needs authorizing again"
    );
    controller
        .proc
        .log
        .wait_for(&["agent registered", "again=true"], SHORT);
    assert_eq!(controller.proc.log.count("again=true"), 1);
    assert_eq!(controller.proc.log.count("again=false"), 1);
}

/// Opens a channel with `cert`, expecting the controller to refuse it: status and problem.
fn refused_channel(controller: &Controller, cert: &NodeCert) -> (u16, Value) {
    runtime().block_on(async {
        let mut conn = Conn::open(controller.agent_addr, &controller.pin, Some(cert)).await;
        match conn.channel().await {
            Ok(_) => (200, json!("the controller opened the channel")),
            Err(refusal) => refusal,
        }
    })
}

#[test]
fn a_stolen_certificate_is_refused_after_deauthorization() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "victim");
    let mut agent = Agent::start(&config, None);
    let node = online_node(&api, "victim");
    // The thief copies node.key and identity.json; the host itself goes away.
    let stolen = NodeCert::steal(&agent.state_dir);
    assert_eq!(node["id"].as_str(), Some(stolen.node_id.as_str()));
    agent.proc.stop();

    let rt = runtime();
    rt.block_on(async {
        // While the node is in good standing, the copy works: that is what makes it worth
        // stealing, and proves this client speaks the protocol.
        let mut channel = Channel::open(controller.agent_addr, &controller.pin, &stolen).await;
        match channel.recv(SHORT).await.expect("a welcome") {
            ControllerMessage::Welcome { node_id, .. } => {
                assert_eq!(node_id.to_string(), stolen.node_id);
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    });

    let deauthorized = api.post("/nodes/victim/deauthorize", &json!({})).ok();
    assert_eq!(state(&deauthorized), "deauthorized");

    // The channel's own connection says so and closes; so does the HTTP/2 one of protocol 1.
    let (told, end) = runtime().block_on(async {
        let mut channel = Channel::open(controller.agent_addr, &controller.pin, &stolen).await;
        channel.until_end(SHORT).await
    });
    assert!(
        matches!(told.as_slice(), [ControllerMessage::Deauthorized]),
        "{told:?}"
    );
    assert_eq!(end, End::Clean);
    let (status, problem) = refused_channel(&controller, &stolen);
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("certificate_refused")),
        "{problem}"
    );
    // Nor can the thief trade it for a fresh certificate.
    rt.block_on(async {
        let mut conn = Conn::open(controller.agent_addr, &controller.pin, Some(&stolen)).await;
        let csr = qb_pki::new_key_and_csr("victim").expect("CSR");
        let (status, problem) = conn
            .post(RENEW_PATH, &json!({ "csr_pem": csr.csr_pem }))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("certificate_refused")),
            "{problem}"
        );
    });
    // Both refusals are logged (the log arrives through a pipe, a moment later).
    poll(
        "two refusals in the controller's log",
        SHORT,
        || match controller.proc.log.count("refused an agent certificate") {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} logged")),
        },
    );
    let node = api.node("victim");
    assert_eq!(state(&node), "deauthorized");
    assert!(!online(&node));

    // The owner reinstalls the host and registers it again with a new token (same machine id,
    // new key): the node comes back, pending. The stolen certificate must stay dead.
    let token = api.bootstrap_token(1, 1);
    let mut reinstalled = config.clone();
    reinstalled.bootstrap_token = Some(token.secret);
    let _host = Agent::start(&reinstalled, None);
    let node = online_node(&api, "victim");
    assert_eq!(node["id"].as_str(), Some(stolen.node_id.as_str()));
    assert_eq!(state(&node), "pending");
    let (status, problem) = refused_channel(&controller, &stolen);
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("certificate_refused")),
        "a certificate revoked by deauthorization was accepted again after the host \
         re-registered: {problem}"
    );
}

/// The certificate an agent saved: what it presents on its next connection.
fn saved_certificate(agent: &Agent) -> String {
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(agent.state_dir.join("identity.json")).expect("identity.json"),
    )
    .expect("identity.json is JSON");
    identity["cert_pem"].as_str().expect("cert_pem").to_owned()
}

/// A node certificate is renewed over the agent's link before it expires (here it lives 20 s),
/// without the channel noticing; once the first one has expired, the host connects with the
/// renewal.
#[test]
fn a_node_certificate_is_renewed_before_it_expires() {
    const LIFETIME: Duration = Duration::from_secs(20);
    let controller = Controller::start_with_env(
        LOCAL,
        &[("QB_NODE_CERT_SECONDS", LIFETIME.as_secs().to_string())],
    );
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "renewer");
    let agent = Agent::start(&config, None);
    let issued = std::time::Instant::now();
    online_node(&api, "renewer");
    let first = saved_certificate(&agent);
    agent
        .proc
        .log
        .wait_for(&["renewed the node certificate"], LIFETIME + SHORT);
    assert_ne!(saved_certificate(&agent), first, "the renewal is saved");
    assert_eq!(
        agent.proc.log.count("lost the controller"),
        0,
        "the channel went on through the renewal"
    );
    // Past the first certificate's end, a fresh start presents the renewal and is let in.
    std::thread::sleep(
        (issued + LIFETIME + Duration::from_secs(1))
            .saturating_duration_since(std::time::Instant::now()),
    );
    let agent = Agent::restart(agent, &config);
    agent
        .proc
        .log
        .wait_for(&["connected to the controller"], SHORT);
    let pinged = api.post("/nodes/renewer/ping", &json!({})).ok();
    assert!(pinged["round_trip_ms"].as_f64().is_some(), "{pinged}");
}

/// The documented way back after deauthorization is a new bootstrap token and a restart. That
/// must also work for an agent that was not running when it was deauthorized: it learns it
/// from the refusal of its old certificate, and the new token is not one it was revoked with.
#[test]
fn an_agent_deauthorized_while_down_registers_again_with_a_new_token() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "sleeper");
    let mut agent = Agent::start(&config, None);
    let node = online_node(&api, "sleeper");
    agent.proc.stop();
    api.post("/nodes/sleeper/deauthorize", &json!({})).ok();

    // The operator installs a new token and starts it: it finds its old certificate refused,
    // forgets it, and registers with the new token.
    let token = api.bootstrap_token(1, 1);
    let mut renewed = config.clone();
    renewed.bootstrap_token = Some(token.secret);
    let again = Agent::restart(agent, &renewed);
    let node_again = poll("sleeper to register again", SHORT * 2, || {
        let node = api.node("sleeper");
        if state(&node) == "pending" && online(&node) {
            Ok(node)
        } else {
            Err(format!(
                "{}/online={}; agent log:\n{}",
                state(&node),
                online(&node),
                again.proc.log.tail(6)
            ))
        }
    });
    assert_eq!(node_again["id"], node["id"]);
}

#[test]
fn another_tenant_can_neither_see_nor_reach_a_node() {
    let controller = Controller::start(LOCAL);
    let a = controller.api();
    let b = controller.api_as(&controller.create_tenant("b"));
    assert_eq!(b.get("/whoami").ok()["tenant"], "b");

    let token = a.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "alpha");
    let mut agent = Agent::start(&config, None);
    let node = online_node(&a, "alpha");
    let id = node["id"].as_str().expect("id").to_owned();
    a.post("/nodes/alpha/ping", &json!({})).ok();

    // B sees nothing and reaches nothing: 404 by name and by id, for reads and actions alike.
    assert!(b.nodes().is_empty(), "{:?}", b.nodes());
    for key in ["alpha", id.as_str()] {
        b.get(&format!("/nodes/{key}")).problem(404, "not_found");
        for action in ["ping", "authorize", "deauthorize", "labels"] {
            b.post(&format!("/nodes/{key}/{action}"), &json!({}))
                .problem(404, "not_found");
        }
    }
    let after = online_node(&a, "alpha");
    assert_eq!(state(&after), "pending", "B's attempts changed nothing");

    // A's certificate names A's node, whatever else exists.
    let cert = NodeCert::steal(&agent.state_dir);
    agent.proc.stop();
    let tenant_a = a.get("/whoami").ok()["tenant_id"].clone();
    assert_eq!(tenant_a, cert.tenant_id.as_str());
    let welcome = |cert: NodeCert| {
        let addr = controller.agent_addr;
        let pin = controller.pin.clone();
        runtime().block_on(async move {
            let mut channel = Channel::open(addr, &pin, &cert).await;
            match channel.recv(SHORT).await.expect("a welcome") {
                ControllerMessage::Welcome { node_id, state, .. } => {
                    (node_id.to_string(), state.as_str().to_owned())
                }
                other => panic!("expected a welcome, got {other:?}"),
            }
        })
    };
    assert_eq!(welcome(cert.clone()), (id.clone(), "pending".to_owned()));

    // The same host registering with B's token becomes B's own, separate node; A's is untouched.
    let b_token = b.bootstrap_token(1, 1);
    let mut in_b = config.clone();
    in_b.bootstrap_token = Some(b_token.secret);
    let _agent_b = Agent::start(&in_b, None);
    let b_node = online_node(&b, "alpha");
    assert_ne!(b_node["id"], node["id"]);
    assert_eq!(a.nodes().len(), 1);
    assert_eq!(a.node("alpha")["id"], node["id"]);
    assert_eq!(b.nodes().len(), 1);
    b.get(&format!("/nodes/{id}")).problem(404, "not_found");
    a.get(&format!("/nodes/{}", b_node["id"].as_str().expect("id")))
        .problem(404, "not_found");
    assert_eq!(welcome(cert), (id, "pending".to_owned()));
}

/// A frame: four bytes of length, big-endian, then the payload.
fn frame(payload: &[u8], claimed_len: u32) -> Vec<u8> {
    let mut bytes = claimed_len.to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn hostile_frames_close_the_channel_and_store_nothing() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let mut agent = Agent::start(
        &AgentConfig::new(&controller, &token.secret, "target"),
        None,
    );
    let before = online_node(&api, "target");
    let cert = NodeCert::steal(&agent.state_dir);
    agent.proc.stop();
    poll("target offline once its agent stopped", SHORT * 2, || {
        let node = api.node("target");
        if online(&node) {
            Err(node.to_string())
        } else {
            Ok(())
        }
    });
    let before = (before["facts"].clone(), before["agent"]["version"].clone());

    // What a message that *would* change the node looks like.
    let mut evil_facts = before.0.clone();
    evil_facts["hostname"] = json!("evil");
    evil_facts["os"] = json!("EvilOS");
    let evil_hello = |padding: usize| {
        let mut facts = evil_facts.clone();
        facts["kernel"] = json!("k".repeat(padding));
        json!({ "type": "hello", "agent_version": "evil", "facts": facts })
    };
    let oversized = serde_json::to_vec(&evil_hello(70 * 1024)).expect("JSON");
    assert!(oversized.len() > qb_agent_proto::MAX_FRAME_BYTES);
    // (A field it does not know, the controller ignores: a newer agent may add optional ones.)
    let missing_field = {
        let mut hello = evil_hello(0);
        hello
            .as_object_mut()
            .expect("an object")
            .remove("facts")
            .expect("facts");
        serde_json::to_vec(&hello).expect("JSON")
    };
    let unknown_type =
        serde_json::to_vec(&json!({ "type": "shell", "cmd": "rm -rf /", "facts": evil_facts }))
            .expect("JSON");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized (length prefix > 64 KiB)",
            frame(&oversized, u32::try_from(oversized.len()).expect("len")),
        ),
        ("a length prefix of 4 GiB", frame(b"{}", u32::MAX)),
        ("invalid JSON", {
            let junk = b"{\"type\": \"hello\", nope";
            frame(junk, junk.len() as u32)
        }),
        (
            "unknown message type",
            frame(&unknown_type, unknown_type.len() as u32),
        ),
        (
            "a required field missing",
            frame(&missing_field, missing_field.len() as u32),
        ),
    ];

    let rt = runtime();
    let check_nothing_changed = |what: &str| {
        assert!(api.healthy(), "after {what}: healthz");
        let node = api.node("target");
        assert_eq!(
            (node["facts"].clone(), node["agent"]["version"].clone()),
            before,
            "after {what}: the node changed"
        );
        assert!(!online(&node), "after {what}: a closed channel is offline");
    };
    // Both ways of holding a channel: its own connection, and protocol 1's HTTP/2 stream.
    let open = |http2: bool| {
        let (addr, pin, cert) = (controller.agent_addr, controller.pin.clone(), cert.clone());
        async move {
            if http2 {
                let mut conn = Conn::open(addr, &pin, Some(&cert)).await;
                conn.channel().await.expect("the channel opens")
            } else {
                Channel::open(addr, &pin, &cert).await
            }
        }
    };
    for ((what, bytes), http2) in cases.iter().flat_map(|case| [(case, false), (case, true)]) {
        let what = &format!("{what} (HTTP/2: {http2})");
        let ends = rt.block_on(async {
            let mut channel = open(http2).await;
            assert!(
                matches!(
                    channel.recv(SHORT).await,
                    Ok(ControllerMessage::Welcome { .. })
                ),
                "{what}: welcome first"
            );
            channel.send(bytes.clone()).await;
            let (messages, end) = channel.until_end(SHORT).await;
            assert!(messages.is_empty(), "{what}: {messages:?}");
            end
        });
        if http2 {
            assert_eq!(ends, End::Clean, "{what}: the channel should end cleanly");
        } else {
            // A connection closed with our bytes unread ends in a TCP reset rather than a
            // clean close; either way it ended, which is what matters.
            assert!(
                matches!(ends, End::Clean | End::Reset(_)),
                "{what}: {ends:?}"
            );
        }
        check_nothing_changed(what);
    }
    // The controller logs a broken channel as it closes it: the last line may trail the close.
    poll("every broken channel logged", SHORT, || {
        match controller.proc.log.count("agent broke the protocol") {
            n if n == 2 * cases.len() => Ok(()),
            n => Err(format!("{n} of {} logged", 2 * cases.len())),
        }
    });

    // The controller still serves channels: a well-behaved client gets in, stays in past
    // 64 KiB of traffic (the frame limit is per frame, not per channel), and answers a push.
    rt.block_on(async {
        let mut channel = open(false).await;
        assert!(matches!(
            channel.recv(SHORT).await,
            Ok(ControllerMessage::Welcome { .. })
        ));
        let facts: qb_api::NodeFacts =
            serde_json::from_value(before.0.clone()).expect("facts parse");
        let version = before.1.as_str().expect("version").to_owned();
        channel
            .send(encode(&AgentMessage::Hello {
                agent_version: version,
                facts,
                build: None,
                rolled_back: None,
            }))
            .await;
        let heartbeat = encode(&AgentMessage::Heartbeat {
            facts: None,
            metrics: HostMetrics::default(),
        });
        let mut sent = 0;
        while sent <= 2 * qb_agent_proto::MAX_FRAME_BYTES {
            channel.send(heartbeat.clone()).await;
            sent += heartbeat.len();
        }
        let api = api.clone();
        let pinged = tokio::task::spawn_blocking(move || {
            poll("target online on a good channel", SHORT, || {
                let node = api.node("target");
                if online(&node) {
                    Ok(())
                } else {
                    Err(node.to_string())
                }
            });
            api.post("/nodes/target/ping", &json!({}))
        });
        let id = match channel.recv(SHORT).await.expect("the ping is pushed") {
            ControllerMessage::Instruction { id, .. } => id,
            other => panic!("expected the ping, got {other:?}"),
        };
        channel
            .send(encode(&AgentMessage::Done { instruction: id }))
            .await;
        let reply = pinged.await.expect("ping").ok();
        assert!(reply["round_trip_ms"].as_f64().is_some(), "{reply}");
    });
    assert_eq!(
        controller.proc.log.count("agent broke the protocol"),
        2 * cases.len(),
        "the good channel was not taken for a bad one"
    );
}

/// A channel that stays silent past the grace period (three heartbeats: 3 s here) is closed, so
/// a dead link holds neither the node online nor the controller's memory; one that speaks
/// stays, and a sign of life asked for is given.
#[test]
fn a_silent_channel_is_closed_after_the_grace_period() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let mut agent = Agent::start(&AgentConfig::new(&controller, &token.secret, "quiet"), None);
    let before = online_node(&api, "quiet");
    let cert = NodeCert::steal(&agent.state_dir);
    agent.proc.stop();
    let facts: qb_api::NodeFacts = serde_json::from_value(before["facts"].clone()).expect("facts");
    let version = before["agent"]["version"]
        .as_str()
        .expect("version")
        .to_owned();
    let (talking, end, silent_for) = runtime().block_on(async {
        let mut channel = Channel::open(controller.agent_addr, &controller.pin, &cert).await;
        assert!(matches!(
            channel.recv(SHORT).await,
            Ok(ControllerMessage::Welcome { .. })
        ));
        channel
            .send(encode(&AgentMessage::Hello {
                agent_version: version,
                facts,
                build: None,
                rolled_back: None,
            }))
            .await;
        // A sign of life, asked for, comes back.
        channel.send(encode(&AgentMessage::KeepAlive)).await;
        assert_eq!(channel.recv(SHORT).await, Ok(ControllerMessage::KeepAlive));
        // Six seconds of heartbeats, one a second: twice the grace period, still open.
        let heartbeat = encode(&AgentMessage::Heartbeat {
            facts: None,
            metrics: HostMetrics::default(),
        });
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            channel.send(heartbeat.clone()).await;
        }
        let talking = channel.ends_within(Duration::from_millis(100)).await.1;
        let silent = std::time::Instant::now();
        let (_, end) = channel.until_end(SHORT).await;
        (talking, end, silent.elapsed())
    });
    assert_eq!(talking, None, "a channel that heartbeats stays open");
    assert_eq!(end, End::Clean);
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(5)).contains(&silent_for),
        "closed after {silent_for:?} of silence"
    );
    controller
        .proc
        .log
        .wait_for(&["silent past the grace period"], SHORT);
}

/// The channel's own connection is for nodes alone: one without a node certificate is closed
/// before any channel opens, and nothing is said on it.
#[test]
fn a_channel_connection_without_a_node_certificate_is_closed_unheard() {
    let controller = Controller::start(LOCAL);
    let (seen, _end) = runtime().block_on(async {
        let mut channel = Channel::open_anonymous(controller.agent_addr, &controller.pin).await;
        channel.until_end(SHORT).await
    });
    assert!(seen.is_empty(), "frames on an anonymous channel: {seen:?}");
}

/// `Hello` is the first frame of every channel (qb-agent-proto); a channel that starts with
/// anything else breaks the protocol and must not be acted on.
#[test]
fn a_channel_that_does_not_start_with_hello_stores_nothing() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let mut agent = Agent::start(
        &AgentConfig::new(&controller, &token.secret, "strict"),
        None,
    );
    let before = online_node(&api, "strict");
    let cert = NodeCert::steal(&agent.state_dir);
    agent.proc.stop();
    let mut facts: qb_api::NodeFacts =
        serde_json::from_value(before["facts"].clone()).expect("facts");
    facts.os = "EvilOS".to_owned();
    let end = runtime().block_on(async {
        let mut channel = Channel::open(controller.agent_addr, &controller.pin, &cert).await;
        assert!(matches!(
            channel.recv(SHORT).await,
            Ok(ControllerMessage::Welcome { .. })
        ));
        channel
            .send(encode(&AgentMessage::Heartbeat {
                facts: Some(facts),
                metrics: HostMetrics::default(),
            }))
            .await;
        channel.ends_within(Duration::from_secs(3)).await.1
    });
    let after = api.node("strict");
    assert_eq!(
        (&after["facts"], &after["agent"]["version"]),
        (&before["facts"], &before["agent"]["version"]),
        "a heartbeat before hello was acted on"
    );
    assert_eq!(
        end,
        Some(End::Clean),
        "a channel that does not start with hello should be closed"
    );
}

/// The routes by which replicas relay work to each other, and tunnel streams, are closed to a
/// node's certificate: a node cannot push to, revoke, instruct or tunnel into another node, nor
/// pose as the agent of a tunnel the controller never asked it for.
#[test]
fn a_node_certificate_cannot_act_as_a_replica_or_answer_a_tunnel_it_was_not_asked_for() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(2, 1);
    let victim = AgentConfig::new(&controller, &token.secret, "victim");
    let intruder = AgentConfig::new(&controller, &token.secret, "intruder");
    let _victim = Agent::start(&victim, None);
    let intruder = Agent::start(&intruder, None);
    let id = online_node(&api, "victim")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    online_node(&api, "intruder");
    let cert = NodeCert::steal(&intruder.state_dir);
    let (addr, pin) = (controller.agent_addr, controller.pin.clone());
    let refused: Vec<(String, u16)> = runtime().block_on(async move {
        let mut conn = Conn::open(addr, &pin, Some(&cert)).await;
        let mut statuses = Vec::new();
        for (path, body) in [
            (
                format!("/peer/v1/nodes/{id}/push"),
                json!({"type": "deauthorized"}),
            ),
            (format!("/peer/v1/nodes/{id}/revoke"), json!(null)),
            (
                format!("/peer/v1/nodes/{id}/request"),
                json!({"instruction": {"kind": "ping", "nonce": 1}, "timeout_ms": 1000}),
            ),
            (
                format!("/peer/v1/nodes/{id}/tunnels/kube-apiserver"),
                json!({}),
            ),
            ("/agent/v1/tunnels/1".to_owned(), json!({})),
        ] {
            let (status, _) = conn.post(&path, &body).await;
            statuses.push((path, status));
        }
        statuses
    });
    for (path, status) in refused {
        assert_eq!(status, 404, "{path}");
    }
    // The victim never heard of it: still online, still answering.
    assert_eq!(online_node(&api, "victim")["state"], "pending");
    api.post("/nodes/victim/ping", &json!({})).ok();
}

/// A request that names no agent protocol version, or one the controller does not speak, is
/// refused before anything else, saying which side to upgrade; every answer names the
/// controller's version. Nothing is registered.
#[test]
fn an_agent_of_another_protocol_version_is_refused_before_anything_else() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "odd");
    let register = json!({
        "token": token.secret,
        "csr_pem": "not looked at",
        "machine_id": "0123456789abcdef0123456789abcdef",
        "facts": {},
        "agent_version": "0.1.0",
    });
    let (addr, pin) = (controller.agent_addr, controller.pin.clone());
    let answers = runtime().block_on(async move {
        let mut conn = Conn::open(addr, &pin, None).await;
        let mut answers = Vec::new();
        for version in [None, Some("0"), Some("99"), Some("one")] {
            conn.protocol = version.map(str::to_owned);
            let (status, problem) = conn.post(qb_agent_proto::REGISTER_PATH, &register).await;
            let (_, headers, _) = conn.get(qb_agent_proto::plan::PLAN_PATH, None).await;
            let named = headers
                .get(qb_agent_proto::PROTOCOL_HEADER)
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            answers.push((version, status, problem, named));
        }
        answers
    });
    let current = qb_agent_proto::PROTOCOL_VERSION.to_string();
    for (version, status, problem, named) in answers {
        assert_eq!(status, 400, "{version:?}: {problem}");
        assert_eq!(
            problem["type"], "urn:qb:problem:unsupported_protocol",
            "{version:?}"
        );
        assert_eq!(named.as_deref(), Some(current.as_str()), "{version:?}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        let upgrade = match version {
            Some("0") => "upgrade the agent",
            Some("99") => "upgrade the controller",
            _ => "speaks agent protocol",
        };
        assert!(detail.contains(upgrade), "{version:?}: {detail}");
    }
    assert!(names(&api).is_empty(), "nothing registered");
    // The agent itself names its version: it registers.
    let _agent = Agent::start(&config, None);
    online_node(&api, "odd");
}

/// The agent endpoint serves an artifact from a byte offset (`Range: bytes=<from>-`), so an
/// interrupted download resumes; other ranges get all of it, an offset past the end 416.
#[test]
fn an_artifact_is_served_from_a_byte_offset() {
    let controller = Controller::start(LOCAL);
    let api = controller.api();
    let etcd = import_etcd_bundle(&api);
    let sha = hex::encode(Sha256::digest(&etcd));
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "host-0");
    let agent = Agent::start(&config, None);
    poll("host-0 registered", Duration::from_secs(30), || {
        agent
            .node_id()
            .ok_or_else(|| "not registered yet".to_owned())
    });
    let cert = NodeCert::steal(&agent.state_dir);
    let (addr, pin) = (controller.agent_addr, controller.pin.clone());
    let path = format!("/agent/v1/artifacts/{sha}");
    let size = etcd.len();
    let answers = runtime().block_on(async move {
        let mut conn = Conn::open(addr, &pin, Some(&cert)).await;
        let mut answers = Vec::new();
        for range in [
            None,
            Some("bytes=1000-"),
            Some(format!("bytes={size}-").as_str()),
            Some("bytes=0-9"),
        ] {
            answers.push(conn.get(&path, range).await);
        }
        answers
    });
    let header = |(_, headers, _): &(u16, HeaderMap, Bytes), name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let [all, rest, past, other] = answers.try_into().expect("four answers");
    assert_eq!((all.0, all.2.len()), (200, size));
    assert_eq!(header(&all, "accept-ranges"), "bytes");
    assert_eq!(rest.0, 206);
    assert_eq!(
        header(&rest, "content-range"),
        format!("bytes 1000-{}/{size}", size - 1)
    );
    assert!(rest.2 == etcd[1000..], "the rest, from byte 1000");
    assert_eq!(past.0, 416);
    assert_eq!(header(&past, "content-range"), format!("bytes */{size}"));
    assert_eq!(
        (other.0, other.2.len()),
        (200, size),
        "another range: all of it"
    );
}
