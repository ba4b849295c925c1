//! Cluster add-ons in a real 3-host cluster: qb's DNS (`qb-dns`, from the bundle the suite
//! builds) runs as two replicas behind the cluster DNS address, and pods find Services by
//! name as the Kubernetes DNS specification says — through the ClusterIP to pods on every host,
//! SRV for named ports, every pod of a headless Service, other names forwarded to the hosts'
//! own resolver (Debian's unbound, run by the test on the lab network); a NodePort answers on
//! every host's address. Deleting the DNS Deployment by hand: qb puts it back. Every API server
//! frozen: names that existed keep resolving. An object labelled as an add-on's that no add-on
//! renders is deleted.
//!
//! In the same cluster, qb's ingress (`qb-ingress`, a DaemonSet on every node's network): two
//! host names and two paths route to Deployments on other hosts, over HTTP and over HTTPS with
//! a TLS Secret, from every node's address; the Ingress's status lists the nodes; editing the
//! Ingress reroutes within seconds while a client loop sees no failed request.
//!
//! The same cluster's alerts reach a real mailbox and a webhook ([`crate::alerting`]).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::alerting::{Receivers, crash_loop_is_notified};
use crate::engine::{authorize_when_online, wait_ready};
use crate::harness::{Agent, AgentConfig, Controller, poll, run};
use crate::http::Api;
use crate::kubernetes::{
    BRING_UP, PodCgroups, component_pid, import_bundle, kubectl, kubectl_json, wait_nodes_ready,
    wait_service_programmed, web, web_pods, web_with_grace,
};
use qb_lab::Lab;
use qb_test_support::unbound::{Records, Unbound};

/// How long qb has to put a deleted add-on back and have it answer.
const PUT_BACK: Duration = Duration::from_secs(30);
/// How long qb may take to delete an add-on object no add-on wants (it looks every minute).
const PRUNED: Duration = Duration::from_secs(75);
/// How long every API server stays frozen.
const API_OUTAGE: Duration = Duration::from_secs(30);

#[test]
fn cluster_dns_answers_pods_by_name_comes_back_when_deleted_and_outlives_the_api() {
    let bundle = crate::kubernetes::bundle_dir();
    let names: Vec<String> = (0..3).map(|i| format!("host-{i}")).collect();
    // Two more hosts join the used cluster as workers before it is upgraded.
    let workers: Vec<String> = (3..5).map(|i| format!("host-{i}")).collect();
    let all: Vec<String> = names.iter().chain(&workers).cloned().collect();
    let _cgroups = PodCgroups(all.clone());
    let lab = Lab::new(all.len()).expect("the lab");
    lab.add_gateway().expect("the hosts' gateway");
    // The hosts' own resolver, Debian's unbound on the lab network.
    let upstream = Unbound::start(
        lab.bridge_ip().parse().expect("an address"),
        53,
        1,
        &Records {
            zones: &["example.test."],
            data: &["www.example.test. 60 IN A 192.0.2.10".to_owned()],
        },
    )
    .expect("unbound");
    let resolver = upstream.addr.ip().to_string();
    // The controller's alerts go to a real mailbox and a webhook.
    let receivers = Receivers::start();
    // The controller ships the agent `cargo xtask dist` builds; the hosts start on the test
    // build, and upgrade to it at the end.
    let controller = Controller::start_shipping_with_env(
        &lab.bridge_ip(),
        Some(&crate::agent_upgrades::dist_agent()),
        &receivers.controller_env(),
    );
    let api = controller.api();
    import_bundle(&api, &bundle);
    let token = api.bootstrap_token(all.len() as u32, 1);
    let configs: Vec<AgentConfig> = all
        .iter()
        .map(|n| AgentConfig::new(&controller, &token.secret, n))
        .collect();
    let mut agents: Vec<Agent> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| Agent::start_host_resolving_with(c, &lab.netns(i), &resolver))
        .collect();
    authorize_when_online(&api, &configs);
    let spare = agents.split_off(names.len());
    api.post(
        "/clusters",
        &json!({"name": "dns", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}),
    )
    .ok();
    let started = Instant::now();
    api.post("/clusters/dns/attach", &json!({"nodes": names}))
        .ok();
    wait_ready(&api, "dns", BRING_UP);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_nodes_ready(&agents[0], &refs, BRING_UP);
    let addon = wait_addon_ready(&api, "dns", "qb-dns", BRING_UP);
    eprintln!(
        "attach → cluster ready, qb-dns {} ready in {:?}",
        addon["version"],
        started.elapsed()
    );
    crash_loop_is_notified(&api, &agents[0], "dns", &receivers);
    logs_are_read_through_the_agent(&api, "host-1");
    etcd_members_report_one_leader(&api, &names);
    // An object labelled as the DNS add-on's that no add-on renders (as an older version's
    // would be): qb deletes it.
    let stray = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "qb-dns-old", "namespace": "kube-system",
                     "labels": {"qb.io/addon": "qb-dns", "app.kubernetes.io/managed-by": "qb"}},
    });
    let out = kubectl(&agents[0], &["apply", "-f", "-"], Some(&stray.to_string()));
    assert!(out.status.success(), "{out:?}");
    let stray_made = Instant::now();
    let dns_pods = kubectl_json(
        &agents[0],
        &[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "app.kubernetes.io/name=qb-dns",
        ],
    )
    .expect("the DNS pods");
    let hosts: std::collections::BTreeSet<&str> = dns_pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(hosts.len(), 2, "two replicas on two hosts: {hosts:?}");

    // A workload on every host; its Service, a headless one, and a NodePort.
    let admin = &agents[0];
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&web(&names)));
    assert!(out.status.success(), "{out:?}");
    let extra = format!(
        "{}\n{}\n",
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-headless"},
            "spec": {"clusterIP": "None", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 8080}]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-nodeport"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        })
    );
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&extra));
    assert!(out.status.success(), "{out:?}");
    let pods = web_pods(admin, &names);
    let service_ip = kubectl_json(admin, &["get", "service", "web"]).expect("the web Service")
        ["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP")
        .to_owned();
    let ips: Vec<String> = pods.iter().map(|(.., ip)| ip.clone()).collect();
    wait_service_programmed(&agents, &names, &ips);

    // From a pod on host-0: the Service by its short name (the search path), through its
    // ClusterIP to the pods on every host; SRV; the headless Service's every pod; a name of the
    // world outside, from the hosts' resolver.
    let report = probe(
        admin,
        "probe-dns",
        "host-0",
        "nslookup web; nslookup -type=SRV _http._tcp.web-nodeport.default.svc.cluster.local; \
             nslookup -type=SRV _http._tcp.web-headless.default.svc.cluster.local; \
             nslookup web-headless.default.svc.cluster.local; nslookup www.example.test; \
             ip=$(nslookup web.default.svc.cluster.local | sed -n 's/^Address: *//p' | tail -n 1); \
             echo \"RESOLVED $ip\"; \
             i=0; while [ $i -lt 60 ]; do i=$((i+1)); \
             echo \"SVC $(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 80 2>/dev/null | tail -n 1)\"; done",
    );
    assert!(
        report.contains(&format!("RESOLVED {service_ip}")),
        "web resolved to its ClusterIP {service_ip}:\n{report}"
    );
    for (pod, node, _) in &pods {
        assert!(
            report.contains(&format!("SVC hello from {pod}")),
            "the pod on {node} answered through the ClusterIP:\n{report}"
        );
    }
    assert!(
        report.contains(
            "_http._tcp.web-nodeport.default.svc.cluster.local\tservice = 0 100 80 web-nodeport.default.svc.cluster.local"
        ),
        "SRV of a ClusterIP Service's named port:\n{report}"
    );
    for (_, node, ip) in &pods {
        assert!(
            report.contains(&format!("Address: {ip}")),
            "the headless Service has the pod on {node} ({ip}):\n{report}"
        );
        let host = ip.replace('.', "-");
        assert!(
            report.contains(&format!(
                "service = 0 100 8080 {host}.web-headless.default.svc.cluster.local"
            )),
            "SRV of the headless Service's named port, to the pod on {node}:\n{report}"
        );
    }
    assert!(
        report.contains("Address: 192.0.2.10"),
        "www.example.test from the hosts' resolver:\n{report}"
    );

    // A NodePort answers on every host's address.
    let service = kubectl_json(admin, &["get", "service", "web-nodeport"]).expect("the NodePort");
    let node_port = service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    for i in 0..3 {
        let address = format!("{}:{node_port}", lab.host_ip(i));
        let answer = poll(
            &format!("NodePort on {address}"),
            Duration::from_secs(30),
            || {
                let out = run(Command::new("curl")
                    .args(["-s", "--max-time", "3"])
                    .arg(format!("http://{address}/")));
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.starts_with("hello from web-") {
                    Ok(text)
                } else {
                    Err(text)
                }
            },
        );
        eprintln!("NodePort {address}: {}", answer.trim());
    }

    check_ingress(&lab, &api, admin, &names);

    // The DNS Deployment deleted by hand (its pods go with it, in the background): qb puts a new
    // one back, whose replicas are ready, and names resolve.
    let dns = |what: &str| {
        kubectl_json(admin, &["get", "deployment", "-n", "kube-system", "qb-dns"])
            .map(|d| d[what].clone())
    };
    let old = dns("metadata").expect("the DNS Deployment")["uid"].clone();
    let deleted = Instant::now();
    let out = kubectl(
        admin,
        &[
            "delete",
            "deployment",
            "-n",
            "kube-system",
            "qb-dns",
            "--wait=false",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    poll("a new DNS Deployment, its replicas ready", PUT_BACK, || {
        let uid = dns("metadata")?["uid"].clone();
        let ready = dns("status")?["readyReplicas"].as_u64().unwrap_or(0);
        if uid != old && ready == 2 {
            Ok(())
        } else {
            Err(format!("uid {uid} (was {old}), {ready} ready"))
        }
    });
    let report = probe(
        admin,
        "probe-back",
        "host-1",
        "nslookup web.default.svc.cluster.local",
    );
    assert!(
        report.contains(&format!("Address: {service_ip}")),
        "{report}"
    );
    eprintln!(
        "qb-dns deleted by hand: back and answering in {:?}",
        deleted.elapsed()
    );

    poll(
        "the stray add-on object deleted",
        PRUNED,
        || match kubectl_json(
            admin,
            &["get", "serviceaccount", "-n", "kube-system", "qb-dns-old"],
        ) {
            Ok(_) => Err("still there".to_owned()),
            Err(e) if e.contains("NotFound") || e.contains("not found") => Ok(()),
            Err(e) => Err(e),
        },
    );
    eprintln!(
        "a stray add-on object: deleted within {:?} of its creation",
        stray_made.elapsed()
    );

    // Every host's kube-proxy sends the DNS Service to the new replicas before the outage.
    wait_resolving_everywhere(&agents, &service_ip, "before the outage");

    // Every API server frozen: names that existed keep resolving.
    let frozen: Vec<String> = (0..3)
        .map(|i| component_pid(&lab, i, "kube-apiserver"))
        .collect();
    let started = Instant::now();
    for pid in &frozen {
        run(Command::new("kill").args(["-STOP", pid]));
    }
    let _thaw = Thaw(frozen.clone());
    let mut answered = 0;
    while started.elapsed() < API_OUTAGE {
        for (i, agent) in agents.iter().enumerate() {
            let said = lookup(agent, "web.default.svc.cluster.local");
            assert_eq!(
                said,
                service_ip,
                "host-{i} during the API outage, after {:?}",
                started.elapsed()
            );
            answered += 1;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(_thaw);
    eprintln!("every API server frozen for {API_OUTAGE:?}: {answered} lookups, all answered");

    // The used cluster grows by two workers, the workload with it (its pods serve on a few
    // seconds once told to stop, and a disruption budget lets one go at a time); then it is
    // upgraded, etcd 3.4 → 3.5, then Kubernetes built again, then every agent; nothing fails.
    let grown = Instant::now();
    api.post("/clusters/dns/attach", &json!({"nodes": workers}))
        .ok();
    agents.extend(spare);
    let admin = &agents[0];
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_ready(&api, "dns", BRING_UP);
    wait_nodes_ready(admin, &refs, BRING_UP);
    let budget = json!({
        "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    });
    let manifests = format!("{}{budget}\n", web_with_grace(&all, 5));
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&manifests));
    assert!(out.status.success(), "{out:?}");
    let ips: Vec<String> = web_pods(admin, &all)
        .into_iter()
        .map(|(.., ip)| ip)
        .collect();
    wait_service_programmed(&agents, &all, &ips);
    eprintln!(
        "grown to {} hosts, the workload on every one, in {:?}",
        all.len(),
        grown.elapsed()
    );
    let endpoints = crate::upgrades::etcd_endpoints(&lab, names.len());
    crate::upgrades::upgrade_under_load(&api, &agents, "dns", &endpoints, &service_ip);
    wait_resolving_everywhere(&agents, &service_ip, "after the upgrade");
}

/// Waits until the cluster DNS answers `web` with `service_ip` on every host.
fn wait_resolving_everywhere(agents: &[Agent], service_ip: &str, when: &str) {
    for (i, agent) in agents.iter().enumerate() {
        poll(
            &format!("cluster DNS answering on host-{i} {when}"),
            PUT_BACK,
            || match lookup(agent, "web.default.svc.cluster.local") {
                ip if ip == service_ip => Ok(()),
                said => Err(said),
            },
        );
    }
}

/// Each master's etcd member, as its metrics tell through its agent's heartbeats: all know a
/// leader, exactly one is it, and each has a database.
fn etcd_members_report_one_leader(api: &Api, names: &[String]) {
    let members = poll(
        "every etcd member's metrics",
        Duration::from_secs(30),
        || {
            let members: Vec<(String, Value)> = names
                .iter()
                .filter_map(|n| {
                    let m = api.get(&format!("/nodes/{n}/metrics")).ok();
                    let etcd = m["latest"]["etcd"].clone();
                    (!etcd.is_null()).then(|| (n.clone(), etcd))
                })
                .collect();
            let leaders = members
                .iter()
                .filter(|(_, e)| e["is_leader"] == true)
                .count();
            if !members.is_empty()
                && leaders == 1
                && members.iter().all(|(_, e)| e["has_leader"] == true)
            {
                Ok(members)
            } else {
                Err(format!("{members:?}"))
            }
        },
    );
    for (name, etcd) in &members {
        assert!(etcd["db_size_bytes"].as_u64() > Some(0), "{name}: {etcd}");
        assert!(
            etcd["db_in_use_bytes"].as_u64() <= etcd["db_size_bytes"].as_u64(),
            "{name}: {etcd}"
        );
    }
    eprintln!("etcd metrics: {members:?}");
}

/// A service's log read from the controller through the node's agent: its end, then what
/// follows; a service the node does not run is refused, naming those it does.
fn logs_are_read_through_the_agent(api: &Api, node: &str) {
    let end = api
        .get(&format!("/nodes/{node}/logs/etcd?max_bytes=4096"))
        .ok();
    let text = end["text"].as_str().expect("text");
    assert!(!text.is_empty() && text.ends_with('\n'), "{end}");
    assert!(text.len() <= 4096, "{}", text.len());
    assert!(text.contains("etcd") || text.contains("raft"), "{text}");
    let offset = end["end"].as_u64().expect("end");
    let next = api
        .get(&format!("/nodes/{node}/logs/etcd?offset={offset}"))
        .ok();
    assert_eq!(next["start"].as_u64(), Some(offset), "{next}");
    let kubelet = api.get(&format!("/nodes/{node}/logs/kubelet")).ok();
    assert!(
        !kubelet["text"].as_str().unwrap_or("").is_empty(),
        "{kubelet}"
    );
    // Since a while ago, by the lines' own timestamps (klog's, here): the last half minute
    // starts well into the log (a quiet kubelet may have said nothing in it); a day back, at
    // its beginning.
    let recent = api
        .get(&format!("/nodes/{node}/logs/kubelet?since_seconds=30"))
        .ok();
    let (start, end) = (recent["start"].as_u64(), recent["end"].as_u64());
    assert!(start > Some(0) && start <= end, "{recent}");
    let day = api
        .get(&format!("/nodes/{node}/logs/kubelet?since_seconds=86400"))
        .ok();
    assert_eq!(day["start"], 0, "{day}");
    api.get(&format!(
        "/nodes/{node}/logs/kubelet?since_seconds=99999999"
    ))
    .problem(400, "invalid_input");
    // The agent's own log, kept beside the services'.
    let agent = api.get(&format!("/nodes/{node}/logs/qb-agent")).ok();
    assert!(
        agent["text"]
            .as_str()
            .unwrap_or("")
            .contains("plan applied"),
        "{agent}"
    );
    let refused = api.get(&format!("/nodes/{node}/logs/sshd"));
    refused.problem(404, "not_found");
    let detail = refused.body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("kubelet") && detail.contains("qb-agent"),
        "{}",
        refused.body
    );
    api.get(&format!("/nodes/{node}/logs/..%2Fpasswd"))
        .problem(400, "invalid_input");
    eprintln!(
        "logs: {} bytes of etcd's on {node}, then on from byte {offset}",
        text.len()
    );
}

/// How long an edited Ingress may take to route anew.
const REROUTE: Duration = Duration::from_secs(5);

/// The ingress part: see the module's documentation.
fn check_ingress(lab: &Lab, api: &Api, admin: &Agent, names: &[String]) {
    let addon = wait_addon_ready(api, "dns", "qb-ingress", BRING_UP);
    eprintln!("qb-ingress {} ready on every node", addon["version"]);
    // A second Deployment, `api`, on the two hosts other than host-0, answering on `/` and
    // `/api/` (busybox httpd serves files); `web` answers on `/` only.
    let others: Vec<String> = names[1..].to_vec();
    let api_app = web(&others)
        .replace("\"web\"", "\"api\"")
        .replace(
            "echo \\\"hello from $(hostname)\\\" > /www/index.html",
            "mkdir -p /www/api && echo \\\"api from $(hostname)\\\" | tee /www/index.html > /www/api/index.html",
        );
    assert!(api_app.contains("api from"), "{api_app}");
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&api_app));
    assert!(out.status.success(), "{out:?}");

    // A certificate for both names, in a TLS Secret.
    let cert =
        rcgen::generate_simple_self_signed(vec!["shop.test".to_owned(), "admin.test".to_owned()])
            .expect("a certificate");
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).expect("the certificate");
    std::fs::write(dir.path().join("tls.key"), cert.key_pair.serialize_pem()).expect("the key");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let out = kubectl(
        admin,
        &[
            "create",
            "secret",
            "tls",
            "shop-tls",
            "--cert",
            &file("tls.crt"),
            "--key",
            &file("tls.key"),
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");

    let ingress = |admin_backend: &str| {
        let path = |path: &str, service: &str| {
            json!({"path": path, "pathType": "Prefix",
                   "backend": {"service": {"name": service, "port": {"number": 80}}}})
        };
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
            // No class: IngressClass qb is the cluster's default.
            "spec": {
                "tls": [{"hosts": ["shop.test", "admin.test"], "secretName": "shop-tls"}],
                "rules": [
                    {"host": "shop.test", "http": {"paths": [path("/", "web"), path("/api", "api")]}},
                    {"host": "admin.test", "http": {"paths": [path("/", admin_backend)]}},
                ],
            },
        })
        .to_string()
    };
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&ingress("api")));
    assert!(out.status.success(), "{out:?}");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("PEM");
    let hosts: Vec<String> = (0..names.len()).map(|i| lab.host_ip(i)).collect();
    for (i, host) in hosts.iter().enumerate() {
        let ip: std::net::IpAddr = host.parse().expect("an address");
        let client = reqwest::Client::builder()
            .resolve("shop.test", SocketAddr::new(ip, 0))
            .resolve("admin.test", SocketAddr::new(ip, 0))
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        for scheme in ["http", "https"] {
            for (url, want) in [
                ("shop.test/", "hello from web-"),
                ("shop.test/api/", "api from api-"),
                ("admin.test/", "api from api-"),
            ] {
                let url = format!("{scheme}://{url}");
                let (version, body) = poll(&format!("{url} through host-{i}"), BRING_UP, || {
                    runtime.block_on(fetch(&client, &url))
                });
                assert!(body.starts_with(want), "{url} through host-{i}: {body}");
                if scheme == "https" {
                    assert_eq!(version, reqwest::Version::HTTP_2, "{url}: HTTP/2 by ALPN");
                }
            }
        }
        eprintln!("ingress through host-{i} ({host}): HTTP and HTTPS, both hosts, both paths");
    }
    // Pods on the other hosts answered `/api/` (not only host-0's own).
    let pods = poll("an api pod on host-1 and host-2", BRING_UP, || {
        let list = kubectl_json(admin, &["get", "pods", "-l", "app=api"])?;
        let mut nodes: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        nodes.sort();
        if nodes == others {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    eprintln!("api pods on {pods:?}");

    // The Ingress's status names every node.
    let mut every = hosts.clone();
    every.sort();
    wait_status(admin, "the Ingress's status lists every node", &every);

    // admin.test moves from `api` to `web` while a client asks every 50 ms through host-0.
    let client = reqwest::Client::builder()
        .resolve(
            "admin.test",
            SocketAddr::new(hosts[0].parse().expect("an address"), 0),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let (moved, requests) = runtime.block_on(async {
        let mut requests = 0;
        let mut edited: Option<Instant> = None;
        let mut moved: Option<Duration> = None;
        // 20 requests before the edit, then on until 20 after the move.
        let mut after = 0;
        loop {
            let answer = fetch(&client, "http://admin.test/").await;
            requests += 1;
            let body = answer
                .unwrap_or_else(|e| panic!("request {requests} failed: {e}"))
                .1;
            match (edited, moved, body.split(' ').next()) {
                (Some(at), None, Some("hello")) => moved = Some(at.elapsed()),
                (Some(_), Some(_), Some("hello")) => {
                    after += 1;
                    if after == 20 {
                        return (moved.unwrap_or_default(), requests);
                    }
                }
                (Some(_), Some(_), _) => panic!("request {requests} went back: {body:?}"),
                (Some(at), None, _) if at.elapsed() > REROUTE => {
                    panic!("still {body:?} {:?} after the edit", at.elapsed())
                }
                (_, _, Some("api" | "hello")) => {}
                _ => panic!("request {requests}: {body:?}"),
            }
            if edited.is_none() && requests == 20 {
                let out = kubectl(admin, &["apply", "-f", "-"], Some(&ingress("web")));
                assert!(out.status.success(), "{out:?}");
                edited = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eprintln!("Ingress edited: rerouted in {moved:?}, {requests} requests, none failed");

    // host-2 labelled to run no ingress: its replica goes, the status names the others, and
    // the add-on is still ready.
    let out = kubectl(
        admin,
        &["label", "node", &names[2], "qb.io/ingress=false"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let mut want = hosts[..2].to_vec();
    want.sort();
    wait_status(admin, "the Ingress's status without host-2", &want);
    let refused = run(Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}/", hosts[2])));
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout),
        "000",
        "nothing serves port 80 on host-2"
    );
    let addon = wait_addon_ready(api, "dns", "qb-ingress", BRING_UP);
    eprintln!(
        "host-2 labelled qb.io/ingress=false: its replica gone, status {want:?}, add-on {}",
        addon["health"]
    );

    // The user says the class is not the default: qb leaves it so (it applies every 5 s).
    let default = |value: &str| {
        let annotation = format!("ingressclass.kubernetes.io/is-default-class={value}");
        let out = kubectl(
            admin,
            &["annotate", "ingressclass", "qb", &annotation, "--overwrite"],
            None,
        );
        assert!(out.status.success(), "{out:?}");
    };
    default("false");
    std::thread::sleep(Duration::from_secs(12));
    let class = kubectl_json(admin, &["get", "ingressclass", "qb"]).expect("the IngressClass");
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"], "false",
        "{class}"
    );
    default("true");
    eprintln!("IngressClass qb made not the default by hand: left so");
}

/// Waits until the Ingress `shop`'s status lists exactly `want` (sorted).
fn wait_status(admin: &Agent, what: &str, want: &[String]) {
    poll(what, BRING_UP, || {
        let ingress = kubectl_json(admin, &["get", "ingress", "shop"])?;
        let mut ips: Vec<String> = ingress["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect();
        ips.sort();
        if ips == want {
            Ok(())
        } else {
            Err(format!("{ips:?}"))
        }
    });
}

/// A GET of `url`: its version and body when it answered 200.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<(reqwest::Version, String), String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let (status, version) = (response.status(), response.version());
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status == reqwest::StatusCode::OK {
        Ok((version, body))
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// `name`'s address as the cluster DNS gives it to a process on `host` (`dig` in the host's
/// network namespace, through the DNS Service's address).
fn lookup(host: &Agent, name: &str) -> String {
    let out = run(Command::new("nsenter")
        .args(["-t", &host.proc.pid().to_string(), "-n"])
        .args(["dig", "+short", "+time=2", "+tries=1", "@10.96.0.10", name]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The cluster's add-on `name` once it is ready; panics with its last status otherwise.
fn wait_addon_ready(api: &Api, cluster: &str, name: &str, timeout: Duration) -> Value {
    poll(&format!("the {name} add-on ready"), timeout, || {
        let c = api.get(&format!("/clusters/{cluster}")).ok();
        let addon = c["addons"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        if addon["health"] == "ready" {
            Ok(addon)
        } else {
            Err(format!("{addon}"))
        }
    })
}

/// Runs `script` in a busybox pod on `node` and returns its log once it is done.
fn probe(admin: &Agent, name: &str, node: &str, script: &str) -> String {
    let _ = kubectl(admin, &["delete", "pod", name, "--wait=true"], None);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{
                "name": "probe", "image": "qb.local/busybox:1", "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
            }],
        },
    });
    let out = kubectl(admin, &["apply", "-f", "-"], Some(&pod.to_string()));
    assert!(out.status.success(), "{out:?}");
    poll(&format!("{name} done"), BRING_UP, || {
        let pod = kubectl_json(admin, &["get", "pod", name])?;
        match pod["status"]["phase"].as_str() {
            Some("Succeeded" | "Failed") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let logs = kubectl(admin, &["logs", name], None);
    String::from_utf8_lossy(&logs.stdout).into_owned()
}

/// Lets frozen processes go on when dropped (also when the test fails).
struct Thaw(Vec<String>);

impl Drop for Thaw {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-CONT", pid]).status();
        }
    }
}
