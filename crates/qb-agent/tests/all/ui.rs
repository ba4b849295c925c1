//! The web UI in a real headless Chromium, against a real controller whose hosts are real
//! agents in network namespaces forming a real etcd cluster: an operator logs in, authorizes
//! pending hosts, creates a cluster, attaches nodes and sees it become ready without reloading,
//! detaches a node, sees a cluster that stays busy for too long called out on the overview; a
//! viewer sees no control that changes anything, and requests forged from the viewer's own page
//! are refused. Screenshots of the main pages are saved on the way.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{Browser, FIRST_PAGE, SHOWS};
use crate::engine::{import_etcd_bundle, pending_hosts};
use crate::harness::{Agent, Controller, poll, run};
use crate::kubernetes::component_pid;
use qb_lab::Lab;
use qb_test_support::webhook::Receiver;

/// From attach to ready on real etcd, on shared cores.
const CONVERGE: Duration = Duration::from_secs(120);
/// What only an operator or admin may press.
const CHANGES: &[&str] = &[
    "Authorize",
    "Authorize selected",
    "Deauthorize",
    "Delete",
    "Create cluster",
    "Attach",
    "Detach",
    "Delete cluster",
    "Detach selected",
    "Create token",
    "Revoke",
    "Create bootstrap token",
    "Run preflight",
    "Set label",
    "Ping",
    "Silence 2 h",
    "End",
    "Send a test",
    "Remove",
    "Add channel",
];

/// The cluster's state as its page shows it.
fn shown_cluster_state(b: &Browser) -> Option<String> {
    b.attribute("#cluster-state", "data-state")
}

/// The cluster's state in the list of clusters.
fn listed_cluster_state(b: &Browser, cluster: &str) -> Option<String> {
    b.attribute(
        &format!("tr[data-cluster=\"{cluster}\"] [data-state]"),
        "data-state",
    )
}

/// The node's state as the page shows it in its row.
fn shown_node_state(b: &Browser, node: &str) -> Option<String> {
    b.attribute(
        &format!("tr[data-node=\"{node}\"] [data-state]"),
        "data-state",
    )
}

/// An entry of the overview's section headed `section`, found by its link's key `fk`: its
/// text and its badge's state. Read in one step in the page, as a live update may redraw it.
fn overview_entry(b: &Browser, section: &str, fk: &str) -> Option<(String, String)> {
    let found = b.script(
        "const s = [...document.querySelectorAll('main section')] \
           .find((s) => s.querySelector('h2')?.textContent === arguments[0]); \
         const link = s && [...s.querySelectorAll('[data-fk]')] \
           .find((e) => e.dataset.fk === arguments[1]); \
         const entry = link && link.closest('li'); \
         return entry ? [entry.querySelector('.problem-text')?.textContent ?? '', \
           entry.querySelector('[data-state]')?.dataset.state ?? ''] : null;",
        vec![section.into(), fk.into()],
    );
    serde_json::from_value(found).expect("an entry or null")
}

/// Waits until the API shows `node`'s agent `online` or not.
fn wait_agent(api: &crate::http::Api, node: &str, online: bool) {
    poll(
        &format!("{node}'s agent online: {online}"),
        CONVERGE,
        || {
            let node = api.get(&format!("/nodes/{node}")).body;
            (node["agent"]["online"] == online)
                .then_some(())
                .ok_or(node.to_string())
        },
    );
}

/// Logs in with an API token.
fn log_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/"));
    b.fill("#token", token);
    b.click_button("#token-form", "Log in with token");
    signed_in(b);
}

fn signed_in(b: &Browser) {
    b.wait("the signed-in header", SHOWS, |b| {
        b.buttons("header")
            .iter()
            .any(|t| t == "Log out")
            .then_some(())
    });
}

/// Opens a view by its address (a change of the hash: no page load).
fn view(b: &Browser, base: &str, route: &str, heading: &str) {
    b.goto(&format!("{base}/#/{route}"));
    b.wait(&format!("the heading {heading:?}"), SHOWS, |b| {
        b.text("main h1").contains(heading).then_some(())
    });
}

/// Every form control and button on the page has a name a screen reader can say.
fn assert_labelled(b: &Browser, route: &str) {
    let unnamed = b.script(
        r#"const named = (el) => (el.labels && el.labels.length > 0)
              || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
              || (el.tagName === 'BUTTON' && el.textContent.trim() !== '');
            return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
              .filter((el) => !named(el))
              .map((el) => el.outerHTML.slice(0, 120));"#,
        vec![],
    );
    assert_eq!(unnamed, json!([]), "controls without a name on #/{route}");
}

#[test]
fn an_operator_drives_a_cluster_from_the_browser_and_a_viewer_cannot_change_anything() {
    let lab = Lab::new(3).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    import_etcd_bundle(&api);
    let (configs, mut agents) = pending_hosts(&lab, &controller, 3);
    let base = controller.url();
    let b = Browser::start(1280, 900);

    // Log in with the admin's token.
    b.goto(&format!("{base}/"));
    b.wait("the login form", FIRST_PAGE, |b| {
        b.all("#token").into_iter().next()
    });
    b.shot("login");
    assert_labelled(&b, "login");
    log_in(&b, &base, &controller.admin_token);
    b.wait("the overview", SHOWS, |b| {
        b.text("main h1").contains("Overview").then_some(())
    });
    b.wait("3 pending nodes on the overview", SHOWS, |b| {
        b.text("main").contains("host-0").then_some(())
    });
    b.shot("overview");

    // Authorize two pending hosts; each moves to the pool as the page updates.
    view(&b, &base, "nodes", "Nodes");
    for node in ["host-0", "host-1"] {
        // The heading shows before the view's first answer from the API.
        b.wait(&format!("{node} pending"), SHOWS, |b| {
            (shown_node_state(b, node).as_deref() == Some("pending")).then_some(())
        });
        b.click_button(&format!("[data-node=\"{node}\"]"), "Authorize");
        b.wait(&format!("{node} in the pool"), SHOWS, |b| {
            (shown_node_state(b, node).as_deref() == Some("authorized")).then_some(())
        });
        assert_eq!(
            api.get(&format!("/nodes/{node}")).body["state"],
            "authorized"
        );
    }
    assert_eq!(shown_node_state(&b, "host-2").as_deref(), Some("pending"));
    b.shot("nodes");
    assert_labelled(&b, "nodes");
    view(&b, &base, "nodes/host-0", "host-0");
    b.wait("host-0's facts", SHOWS, |b| {
        b.text("main").contains("Debian").then_some(())
    });
    // The host's load as its agent last reported it.
    b.wait("host-0's load", SHOWS, |b| {
        let text = b.text("main");
        (text.contains("Load") && text.contains("of") && text.contains("used")).then_some(())
    });
    b.shot("node-detail");
    assert_labelled(&b, "nodes/host-0");

    // Create a cluster; its page opens.
    view(&b, &base, "clusters", "Clusters");
    b.fill("#cluster-name", "web");
    b.click_button("main", "Create cluster");
    b.wait("the new cluster's page", SHOWS, |b| {
        b.text("main h1").contains("web").then_some(())
    });
    assert_eq!(api.get("/clusters/web").body["state"], "empty");
    // The API's refusal is shown where the action was, and nothing is made.
    view(&b, &base, "clusters", "Clusters");
    b.fill("#cluster-name", "web");
    b.click_button("main", "Create cluster");
    b.wait("the API's refusal", SHOWS, |b| {
        b.text("main [role=alert]").contains("web").then_some(())
    });
    assert_eq!(
        api.get("/clusters").ok()["items"].as_array().map(Vec::len),
        Some(1)
    );
    view(&b, &base, "clusters/web", "web");

    // Attach both pool nodes, then watch the state move to ready without a page load.
    b.script("window.qbStillTheSamePage = true; return null;", vec![]);
    b.fill("#attach-count", "2");
    b.click_button("main", "Attach");
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut shot_installing = false;
    b.wait("the cluster ready", CONVERGE, |b| {
        let state = shown_cluster_state(b)?;
        if seen.last() != Some(&state) {
            eprintln!(
                "{:>6.1?} the page shows the cluster {state}",
                started.elapsed()
            );
            seen.push(state.clone());
        }
        if state != "ready" && state != "empty" && !shot_installing {
            b.shot("cluster-installing");
            shot_installing = true;
        }
        (state == "ready").then_some(())
    });
    assert!(
        seen.iter().any(|s| s != "empty" && s != "ready"),
        "the page never showed the cluster on its way to ready: {seen:?}"
    );
    assert_eq!(
        b.script("return window.qbStillTheSamePage === true;", vec![]),
        json!(true),
        "the page was reloaded"
    );
    let cluster = api.get("/clusters/web").ok();
    assert_eq!(cluster["state"], "ready", "{cluster}");
    let role = |name: &str| {
        cluster["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["role"].clone())
            .unwrap_or(Value::Null)
    };
    let worker = ["host-0", "host-1"]
        .into_iter()
        .find(|n| role(n) == "worker")
        .expect("one of two nodes is a worker");
    // The preflight that ran before the install, as a matrix: each node reached the other.
    b.wait("the preflight matrix", SHOWS, |b| {
        (b.all("table.matrix [data-probe=\"ok\"]").len() == 2
            && b.attribute("[data-preflight]", "data-preflight").as_deref() == Some("passed"))
        .then_some(())
    });
    assert!(b.all("table.matrix [data-probe=\"failed\"]").is_empty());
    b.wait("the nodes' roles", SHOWS, |b| {
        b.text(&format!("[data-node=\"{worker}\"]"))
            .contains("worker")
            .then_some(())
    });
    b.shot("cluster-ready");
    assert_labelled(&b, "clusters/web");

    // Detach the worker: the page asks first, then shows it leave.
    b.click_button(&format!("[data-node=\"{worker}\"]"), "Detach");
    b.element("dialog[open]");
    b.shot("confirm-detach");
    b.click_button("dialog[open]", "Confirm");
    b.wait(&format!("{worker} gone from the cluster"), CONVERGE, |b| {
        b.all(&format!("[data-node=\"{worker}\"]"))
            .is_empty()
            .then_some(())
    });
    poll(&format!("{worker} back in the pool"), CONVERGE, || {
        let node = api.get(&format!("/nodes/{worker}")).body;
        (node["state"] == "authorized")
            .then_some(())
            .ok_or(node.to_string())
    });
    view(&b, &base, "nodes", "Nodes");
    b.wait(&format!("{worker} in the pool"), SHOWS, |b| {
        (shown_node_state(b, worker).as_deref() == Some("authorized")).then_some(())
    });

    // A cluster that stays busy: its one node's agent is down, so preflight waits for it. Fresh,
    // it is only in progress; two hours later by the page's clock, it needs attention too.
    let host = configs
        .iter()
        .position(|c| c.node_name == worker)
        .expect("the worker's host");
    agents[host].proc.stop();
    wait_agent(&api, worker, false);
    api.post("/clusters", &json!({ "name": "stuck" })).ok();
    api.post("/clusters/stuck/attach", &json!({ "nodes": [worker] }))
        .ok();
    let waiting = format!("waiting for the agents of {worker} to connect");
    poll("cluster stuck waiting in preflight", CONVERGE, || {
        let cluster = api.get("/clusters/stuck").body;
        (cluster["state"] == "preflight" && cluster["state_message"] == waiting.as_str())
            .then_some(())
            .ok_or(cluster.to_string())
    });
    view(&b, &base, "", "Overview");
    let (text, state) = b.wait("cluster stuck in progress", SHOWS, |b| {
        overview_entry(b, "In progress", "c:stuck")
    });
    assert!(text.starts_with(&waiting), "{text}");
    assert_eq!(state, "preflight");
    assert_eq!(
        overview_entry(&b, "Needs attention", "slow:stuck"),
        None,
        "a cluster busy for seconds needs no attention"
    );
    b.script(
        "const ahead = arguments[0]; \
         window.qbRealDateNow = Date.now; \
         Date.now = () => window.qbRealDateNow() + ahead; \
         document.dispatchEvent(new Event('visibilitychange')); \
         return null;",
        vec![json!(2 * 3600 * 1000)],
    );
    let (text, state) = b.wait("cluster stuck needing attention", SHOWS, |b| {
        overview_entry(b, "Needs attention", "slow:stuck")
    });
    assert_eq!(text, format!("In preflight for 2 hours: {waiting}"));
    assert_eq!(state, "preflight");
    assert!(
        overview_entry(&b, "In progress", "c:stuck").is_some(),
        "a cluster busy for long is still in progress"
    );
    b.shot("overview-busy-too-long");
    b.script("Date.now = window.qbRealDateNow; return null;", vec![]);
    api.delete("/clusters/stuck?force=true").ok();
    let stopped = agents.remove(host);
    agents.insert(host, Agent::kill_and_restart(stopped, &configs[host]));
    wait_agent(&api, worker, true);
    assert_eq!(
        api.get(&format!("/nodes/{worker}")).body["state"],
        "authorized"
    );

    // Minutes later: host-0's load history, as charts that say what they show.
    view(&b, &base, "nodes/host-0", "host-0");
    let summary = b.wait("host-0's CPU chart", CONVERGE, |b| {
        b.attribute("svg[data-chart=\"cpu\"]", "aria-label")
    });
    assert!(summary.starts_with("CPU over the last 1h: "), "{summary}");
    for chart in ["memory", "disk"] {
        assert!(
            !b.all(&format!("svg[data-chart=\"{chart}\"] polyline"))
                .is_empty(),
            "{chart}"
        );
    }
    b.click_button("main", "24h");
    b.wait("the day's charts", SHOWS, |b| {
        b.attribute("svg[data-chart=\"cpu\"]", "aria-label")
            .filter(|l| l.starts_with("CPU over the last 24h"))
    });
    b.script(
        "document.querySelector('svg[data-chart]').scrollIntoView({ block: 'center' }); return null;",
        vec![],
    );
    b.shot("node-load");

    // The master's etcd log, one click away from its page (`?log=etcd`), read through its
    // agent.
    let master = if worker == "host-0" {
        "host-1"
    } else {
        "host-0"
    };
    b.goto(&format!("{base}/#/nodes/{master}?log=etcd"));
    let log = b.wait("etcd's log on the node's page", SHOWS, |b| {
        let text = b.text("pre.log");
        (text.contains("etcd") || text.contains("raft")).then_some(text)
    });
    assert!(log.lines().count() > 3, "{log}");
    assert_labelled(&b, &format!("nodes/{master}?log=etcd"));
    b.shot("node-log");
    // An attached node's page offers to detach it; a pooled node's, to attach it.
    b.wait("Detach on the master's page", SHOWS, |b| {
        b.buttons("main")
            .contains(&"Detach".to_owned())
            .then_some(())
    });
    view(&b, &base, &format!("nodes/{worker}"), worker);
    b.wait("Attach to web on the pooled worker's page", SHOWS, |b| {
        (b.attribute("#attach-to option[value=\"web\"]", "value")
            .is_some()
            && b.buttons("main").contains(&"Attach".to_owned()))
        .then_some(())
    });
    assert_labelled(&b, &format!("nodes/{worker}"));

    // etcd frozen on the master: the overview says the cluster needs attention, and the etcd
    // log is one click from there.
    let i = if master == "host-0" { 0 } else { 1 };
    let etcd = component_pid(&lab, i, "etcd");
    run(Command::new("kill").args(["-STOP", &etcd]));
    let frozen = Instant::now();
    view(&b, &base, "", "Overview");
    let (text, state) = b.wait("the cluster under Needs attention", CONVERGE, |b| {
        overview_entry(b, "Needs attention", "c:web")
    });
    eprintln!(
        "etcd frozen on {master}: the overview says {state:?} {text:?} after {:?}",
        frozen.elapsed()
    );
    assert_eq!(state, "degraded", "{text}");
    let link = format!("log:{master}:etcd");
    b.wait("the link to etcd's log", SHOWS, |b| {
        b.script(
            "const a = [...document.querySelectorAll('a.log-link')].find((a) => a.dataset.fk === arguments[0]); \
             if (a) a.click(); return a ? true : null;",
            vec![link.as_str().into()],
        )
        .as_bool()
    });
    b.wait("etcd's log, one click away", SHOWS, |b| {
        (b.text("main h1").contains(master) && b.text("pre.log").contains("etcd")).then_some(())
    });
    b.shot("overview-to-etcd-log");
    // And the alerts say it: etcd down on the master, and without quorum.
    let firing = poll("the etcd alerts", CONVERGE, || {
        let alerts = api.get("/alerts").ok();
        let rules: Vec<String> = alerts
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{} {}",
                    a["rule"].as_str().unwrap_or(""),
                    a["object_name"].as_str().unwrap_or("")
                )
            })
            .collect();
        let want = [
            format!("component_down {master}/etcd"),
            "etcd_no_quorum web".to_owned(),
        ];
        want.iter()
            .all(|w| rules.contains(w))
            .then_some(rules.clone())
            .ok_or(format!("{rules:?}"))
    });
    eprintln!(
        "etcd frozen on {master}: alerts {firing:?} after {:?}",
        frozen.elapsed()
    );
    run(Command::new("kill").args(["-CONT", &etcd]));
    poll("the cluster ready again", CONVERGE, || {
        let c = api.get("/clusters/web").ok();
        (c["state"] == "ready")
            .then_some(())
            .ok_or(c["state"].to_string())
    });
    // The cluster's page draws its health over the day, the frozen stretch included.
    view(&b, &base, "clusters/web", "web");
    let health = b.wait("the cluster's health band", CONVERGE, |b| {
        b.attribute("svg[data-chart=\"health\"]", "aria-label")
            .filter(|l| l.contains("degraded"))
    });
    assert!(
        health.starts_with("Health over the last")
            && health.contains("ready")
            && health.contains("unhealthy"),
        "{health}"
    );
    b.shot("cluster-health");

    // The other main pages.
    view(&b, &base, "clusters", "Clusters");
    b.wait("the cluster list", SHOWS, |b| {
        listed_cluster_state(b, "web")
    });
    b.shot("clusters");
    assert_labelled(&b, "clusters");
    view(&b, &base, "tokens", "Tokens");
    b.shot("tokens");
    assert_labelled(&b, "tokens");
    view(&b, &base, "events", "Events");
    b.wait("the audit trail", SHOWS, |b| {
        b.text("main").contains("node.authorized").then_some(())
    });
    b.shot("events");
    assert_labelled(&b, "events");
    // Filtered to the cluster: its events, none of the nodes'.
    b.fill("#events-object", "web");
    b.click_button("main", "Apply filters");
    b.wait("the cluster's events only", SHOWS, |b| {
        let shown = b.text("main table");
        (shown.contains("cluster.created") && !shown.contains("node.authorized")).then_some(())
    });
    // Alerts: a webhook channel added from the form (its signing secret shown once), a test
    // alert sent to it from its row.
    let hook = Receiver::start(&[]).expect("a webhook receiver");
    view(&b, &base, "alerts", "Alerts");
    assert_labelled(&b, "alerts");
    b.fill("#channel-name", "ops-hook");
    b.fill("#channel-target", &hook.url("/ui"));
    b.click_button("main form.create-form", "Add channel");
    let secret = b.wait("the channel's signing secret", SHOWS, |b| {
        b.script(
            "const e = document.querySelector('.panel-secret input'); return e && e.value;",
            vec![],
        )
        .as_str()
        .map(str::to_owned)
    });
    assert!(secret.starts_with("qbwh_"), "{secret}");
    b.click_button("tr[data-channel=\"ops-hook\"]", "Send a test");
    poll("the test alert at the webhook", SHOWS, || {
        let got = hook.received();
        (got.len() == 1)
            .then_some(())
            .ok_or(format!("{} requests", got.len()))
    });
    let test: Value = serde_json::from_slice(&hook.received()[0].body).expect("JSON");
    assert_eq!(test["channel"], "ops-hook");
    b.shot("alerts");
    b.resize(390, 844);
    view(&b, &base, "clusters/web", "web");
    b.shot("cluster-phone");
    b.resize(1280, 900);

    // A viewer, logged in with the password an admin set: every page, and no control that
    // changes anything.
    api.post("/users", &json!({"name": "vera", "role": "viewer"}))
        .ok();
    let password = "vera's long passphrase";
    api.call(
        "PUT",
        "/api/v1/users/vera/password",
        Some(&json!({ "password": password })),
    )
    .ok();
    b.click_button("header", "Log out");
    b.element("#login-user");
    b.fill("#login-user", "vera");
    b.fill("#login-password", "not vera's passphrase");
    b.click_button("#password-form", "Log in");
    b.wait("the refusal", SHOWS, |b| {
        b.text("[role=alert]")
            .contains("wrong tenant, user or password")
            .then_some(())
    });
    b.shot("login-refused");
    // By keyboard: Enter in the password field submits the form.
    b.fill("#login-password", &format!("{password}\u{E007}"));
    signed_in(&b);
    assert!(b.text("header").contains("vera"), "{}", b.text("header"));
    for (route, heading) in [
        ("", "Overview"),
        ("nodes", "Nodes"),
        ("nodes/host-2", "host-2"),
        ("clusters", "Clusters"),
        ("clusters/web", "web"),
        ("tokens", "Tokens"),
        ("alerts", "Alerts"),
        ("events", "Events"),
    ] {
        view(&b, &base, route, heading);
        std::thread::sleep(Duration::from_millis(500));
        let offered: Vec<String> = b
            .buttons("main")
            .into_iter()
            .filter(|t| CHANGES.contains(&t.as_str()))
            .collect();
        assert!(
            offered.is_empty(),
            "a viewer is offered {offered:?} on #/{route}"
        );
        for form in ["#cluster-name", "#attach-count", "#channel-name"] {
            assert!(b.all(form).is_empty(), "a viewer sees {form} on #/{route}");
        }
        assert_labelled(&b, route);
    }
    b.shot("viewer-nodes");
    // A viewer may still have a kubeconfig: the cluster's RBAC keeps it to reading.
    view(&b, &base, "clusters/web", "web");
    b.click_button("main", "Download kubeconfig");
    b.wait("the kubeconfig", SHOWS, |b| {
        b.text("main")
            .contains("It contains a new API token of yours (viewer)")
            .then_some(())
    });

    // Requests forged from the viewer's own page, with the session's CSRF token: refused.
    let forged = b.script_async(
        r#"const done = arguments[arguments.length - 1];
        (async () => {
          const session = await (await fetch('/api/v1/session')).json();
          const send = (method, path, body) => fetch(path, {
            method, credentials: 'same-origin',
            headers: {'X-CSRF-Token': session.csrf_token, 'Content-Type': 'application/json'},
            body: body === undefined ? undefined : JSON.stringify(body),
          }).then(r => r.status);
          return [
            await send('POST', '/api/v1/nodes/host-2/authorize'),
            await send('POST', '/api/v1/clusters', {name: 'forged'}),
            await send('POST', '/api/v1/clusters/web/attach', {nodes: ['host-2']}),
            await send('DELETE', '/api/v1/clusters/web'),
            await send('POST', '/api/v1/tokens', {user: 'vera'}),
          ];
        })().then(done, e => done(String(e)));"#,
        vec![],
    );
    assert_eq!(forged, json!([403, 403, 403, 403, 403]), "{forged}");
    assert_eq!(api.get("/nodes/host-2").body["state"], "pending");
    assert_eq!(api.get("/clusters/forged").status, 404);
    assert_eq!(api.get("/clusters/web").body["state"], "ready");
    eprintln!("screenshots in {}", b.shots.display());
}
