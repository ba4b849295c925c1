//! Reaching a cluster through the controller: the Kubernetes API proxy over the agents'
//! tunnels, with a kubeconfig from `qb cluster kubeconfig` and Debian's stock `kubectl`.
//!
//! A standing lab of three hosts (TLS controller, agents installed from its tarball, `qb`
//! logged in) becomes a three-master Kubernetes cluster. Then, through the proxy only: Nodes,
//! a watch that stays open for the whole test, apply, `exec` and `logs` (upgraded and streamed
//! requests); a viewer whose write the cluster's RBAC refuses (impersonation); another tenant
//! that does not find the cluster; a refused upgrade after which the same connection cannot
//! send anything with the proxy's credentials (CVE-2018-1002105); and a master whose agent
//! dies, after which requests go through another master.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_lab::standing::{self, Record};
use serde_json::Value;

use crate::harness::{controller_binary, poll};
use crate::kubernetes::{BRING_UP, bundle_dir};
use crate::standing::options;

struct Proxied {
    dir: PathBuf,
    qb: PathBuf,
    record: Record,
}

impl Proxied {
    fn qb(&self, args: &[&str]) -> String {
        let out = Command::new(&self.qb)
            .env("QB_CONFIG", standing::qb_config(&self.dir))
            .args(args)
            .output()
            .expect("run qb");
        assert!(
            out.status.success(),
            "qb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn qb_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.qb(&[args, &["-o", "json"]].concat())).expect("qb JSON")
    }

    fn names(&self) -> Vec<String> {
        self.record.hosts.iter().map(|h| h.name.clone()).collect()
    }
}

/// Debian's `kubectl` with `kubeconfig`, on this machine (outside the lab's hosts).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("run kubectl")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Result<Value, String> {
    let out = kubectl(kubeconfig, &[args, &["-o", "json"]].concat());
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn ready_nodes(kubeconfig: &Path) -> Result<Vec<String>, String> {
    let list = kubectl_json(kubeconfig, &["get", "nodes"])?;
    Ok(qb_lab::kube::ready_nodes(&list))
}

/// `kubectl get pods -A -w`, its output collected as it comes.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(kubeconfig: &Path) -> Self {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["get", "pods", "-A", "-w", "--no-headers"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl -w");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Self { child, lines }
    }

    fn saw(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 connection to the controller's API over TLS, trusting its certificate.
struct Raw(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Raw {
    fn connect(dir: &Path, api_url: &str) -> Self {
        let cert = std::fs::read(standing::controller_dir(dir).join("tls/controller.crt"))
            .expect("the controller's certificate");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut cert.as_slice()) {
            roots.add(c.expect("PEM")).expect("a trust anchor");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let address = api_url.trim_start_matches("https://");
        let host = address.rsplit_once(':').expect("host:port").0.to_owned();
        let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
        let tcp = TcpStream::connect(address).expect("connect to the API");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS");
        Self(rustls::StreamOwned::new(tls, tcp))
    }

    /// Sends `request` as is and reads one response: status and body.
    fn exchange(&mut self, request: &str) -> (u16, String) {
        self.0.write_all(request.as_bytes()).expect("send");
        self.0.flush().expect("flush");
        let mut reader = BufReader::new(&mut self.0);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {status_line:?}"));
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).expect("chunk size");
                let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).expect("chunk");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body).expect("body");
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[test]
fn kubectl_reaches_the_cluster_through_the_controller_as_the_qb_user() {
    let bundle = bundle_dir();
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("lab");
    let options = options(&dir, "px", 3, Some(bundle));
    let record = standing::up(&options).expect("the lab comes up");
    let lab = Proxied {
        dir: dir.clone(),
        qb: options.binaries.qb.clone(),
        record,
    };
    let _down = Down(dir.clone());
    let names = lab.names();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.qb(&[&["node", "authorize"], &hosts[..]].concat());
    lab.qb(&["cluster", "create", "k8s"]);
    lab.qb(&[&["cluster", "attach", "k8s"], &hosts[..]].concat());

    // The kubeconfig: the controller's proxy, its certificate, the user's new token.
    let kubeconfig = dir.join("admin.kubeconfig");
    lab.qb(&[
        "cluster",
        "kubeconfig",
        "k8s",
        "--output-file",
        &kubeconfig.display().to_string(),
    ]);
    let api_url = lab.record.api_url.clone().expect("the API's URL");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(
        text.contains(&format!("{api_url}/k8s/clusters/k8s")),
        "{text}"
    );

    // Every Node Ready, seen through the proxy only.
    let started = Instant::now();
    poll("every Node Ready through the proxy", BRING_UP, || {
        let ready = ready_nodes(&kubeconfig)?;
        (ready == names)
            .then_some(())
            .ok_or(format!("ready: {ready:?}"))
    });
    eprintln!(
        "3 masters Ready through the proxy after {:?}",
        started.elapsed()
    );
    let version = ok(&kubectl(&kubeconfig, &["version", "-o", "json"]));
    assert!(version.contains("\"gitVersion\": \"v1.20.2\""), "{version}");

    // A watch, open from here to the end.
    let watch = Watch::start(&kubeconfig);
    let watch_started = Instant::now();

    // Apply, exec (an upgraded connection), logs.
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shell"},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "sh",
                "image": "qb.local/busybox:1",
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                    "mkdir -p /www && echo served-in-the-pod > /www/index.html && httpd -p 8080 -h /www && echo started && exec sleep 3600"],
            }],
        },
    });
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    apply
        .stdin
        .take()
        .expect("stdin")
        .write_all(pod.to_string().as_bytes())
        .expect("write the pod");
    ok(&apply.wait_with_output().expect("kubectl apply"));
    poll("the pod running", BRING_UP, || {
        let pod = kubectl_json(&kubeconfig, &["get", "pod", "shell"])?;
        (pod["status"]["phase"] == "Running")
            .then_some(())
            .ok_or(format!("{}", pod["status"]["phase"]))
    });
    poll("the watch saw the pod", Duration::from_secs(30), || {
        watch.saw("shell").then_some(()).ok_or("not yet".to_owned())
    });
    let exec = ok(&kubectl(
        &kubeconfig,
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo through-the-tunnel $((6*7))",
        ],
    ));
    assert_eq!(exec.trim(), "through-the-tunnel 42");
    let logs = ok(&kubectl(&kubeconfig, &["logs", "shell"]));
    assert_eq!(logs.trim(), "started");
    // port-forward: another upgraded connection, carrying the pod's web server to this machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut forward = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["port-forward", "pod/shell", &format!("{port}:8080")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let page = poll(
        "the pod's page through port-forward",
        Duration::from_secs(30),
        || {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            tcp.write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut page = String::new();
            tcp.read_to_string(&mut page).map_err(|e| e.to_string())?;
            page.contains("served-in-the-pod")
                .then_some(page.clone())
                .ok_or(page)
        },
    );
    assert!(page.starts_with("HTTP/1."), "{page}");
    let _ = forward.kill();
    let _ = forward.wait();

    // A viewer: reads, but the cluster's RBAC refuses its writes, as user qb:<name>.
    lab.qb(&["user", "create", "vera", "--role", "viewer"]);
    let created = lab.qb_json(&["token", "create", "--user", "vera"]);
    let viewer_token = created["secret"].as_str().unwrap_or_default().to_owned();
    assert!(viewer_token.starts_with("qb_"), "{viewer_token}");
    let viewer = dir.join("viewer.kubeconfig");
    std::fs::copy(&kubeconfig, &viewer).expect("copy the kubeconfig");
    let users = ok(&kubectl(
        &viewer,
        &["config", "view", "-o", "jsonpath={.users[0].name}"],
    ));
    ok(&kubectl(
        &viewer,
        &[
            "config",
            "set-credentials",
            users.trim(),
            &format!("--token={viewer_token}"),
        ],
    ));
    let pods = ok(&kubectl(&viewer, &["get", "pods", "-o", "name"]));
    assert_eq!(pods.trim(), "pod/shell");
    let nodes = ok(&kubectl(&viewer, &["get", "nodes", "-o", "name"]));
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    let write = kubectl(&viewer, &["create", "configmap", "viewer-was-here"]);
    let refusal = String::from_utf8_lossy(&write.stderr);
    assert!(!write.status.success());
    assert!(
        refusal.contains("forbidden: User \"qb:vera\" cannot create"),
        "{refusal}"
    );
    let exec = kubectl(&viewer, &["exec", "shell", "--", "id"]);
    assert!(!exec.status.success(), "a viewer ran exec");
    // Every write through the proxy (and every upgrade) is in the audit trail with the status
    // it got, the refused ones too; reads are not.
    let events = lab.qb_json(&["events", "--action", "cluster.kubernetes_write"]);
    let writes = events
        .as_array()
        .or_else(|| events["items"].as_array())
        .expect("a list of events");
    let recorded = |actor: Option<&str>, method: &str, path: &str, status: u64| {
        writes.iter().any(|e| {
            actor.is_none_or(|a| e["actor"] == a)
                && e["detail"]["method"] == method
                && e["detail"]["path"] == path
                && e["detail"]["status"] == status
        })
    };
    assert!(
        recorded(None, "POST", "/api/v1/namespaces/default/pods", 201),
        "the pod's creation: {events:#}"
    );
    assert!(
        recorded(
            None,
            "POST",
            "/api/v1/namespaces/default/pods/shell/exec",
            101
        ),
        "the exec: {events:#}"
    );
    assert!(
        recorded(
            Some("user:vera"),
            "POST",
            "/api/v1/namespaces/default/configmaps",
            403
        ),
        "the viewer's refused write: {events:#}"
    );
    // A GET is recorded only as an upgrade (kubectl tries WebSockets first).
    let upgrade = |e: &Value| {
        e["detail"]["path"].as_str().is_some_and(|p| {
            ["/exec", "/attach", "/portforward"]
                .iter()
                .any(|u| p.ends_with(u))
        })
    };
    assert!(
        writes
            .iter()
            .all(|e| e["detail"]["method"] != "GET" || upgrade(e)),
        "a read was recorded: {events:#}"
    );
    // What kubectl says about identity is not passed on.
    let impersonating = kubectl(&viewer, &["--as", "qb:admin", "create", "configmap", "x"]);
    let refusal = String::from_utf8_lossy(&impersonating.stderr);
    assert!(refusal.contains("impersonation"), "{refusal}");

    // Another tenant: no such cluster.
    let other = Command::new(controller_binary())
        .arg("--data-dir")
        .arg(standing::controller_dir(&dir))
        .args(["tenant", "create", "other"])
        .output()
        .expect("tenant create");
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let other_token = String::from_utf8_lossy(&other.stdout).trim().to_owned();
    let outsider = dir.join("other.kubeconfig");
    std::fs::copy(&kubeconfig, &outsider).expect("copy the kubeconfig");
    ok(&kubectl(
        &outsider,
        &[
            "config",
            "set-credentials",
            users.trim(),
            &format!("--token={other_token}"),
        ],
    ));
    let get = kubectl(&outsider, &["get", "pods"]);
    let refusal = String::from_utf8_lossy(&get.stderr);
    assert!(
        !get.status.success() && refusal.contains("NotFound"),
        "{refusal}"
    );

    // A refused upgrade, then more on the same connection: every request is authenticated
    // and forwarded as its own sender, never spliced with the proxy's credentials.
    let mut raw = Raw::connect(&dir, &api_url);
    let (status, body) = raw.exchange(&format!(
        "POST /k8s/clusters/k8s/api/v1/namespaces/default/pods/shell/exec?command=id&stdout=true HTTP/1.1\r\n\
         Host: qb\r\nAuthorization: Bearer {viewer_token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("qb:vera"), "{body}");
    let (status, body) = raw.exchange(
        "GET /k8s/clusters/k8s/api/v1/namespaces/kube-system/secrets HTTP/1.1\r\nHost: qb\r\n\r\n",
    );
    assert_eq!(status, 401, "the request after a refused upgrade: {body}");
    let (status, body) = raw.exchange(&format!(
        "GET /k8s/clusters/k8s/api/v1/namespaces/kube-system/secrets HTTP/1.1\r\nHost: qb\r\n\
         Authorization: Bearer {viewer_token}\r\n\r\n"
    ));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("qb:vera"), "{body}");

    // curl and browsers get pretty-printed JSON: the API server stays up (Kubernetes 1.20's own
    // reflect2, built with today's Go, crashed it on every such answer; the bundle patches it).
    for _ in 0..3 {
        let (status, body) = raw.exchange(&format!(
            "GET /k8s/clusters/k8s/api/v1/nodes?pretty=true HTTP/1.1\r\nHost: qb\r\n\
             User-Agent: curl/7.88.1\r\nAuthorization: Bearer {viewer_token}\r\n\r\n"
        ));
        assert_eq!(status, 200, "a pretty-printed list of nodes: {body}");
        assert!(body.contains("\n  \"kind\": \"NodeList\""), "{body}");
    }

    // The watch is still open minutes later, and still hears about changes.
    let hold = Duration::from_secs(150).saturating_sub(watch_started.elapsed());
    std::thread::sleep(hold);
    ok(&kubectl(
        &kubeconfig,
        &["label", "pod", "shell", "seen=late"],
    ));
    ok(&kubectl(
        &kubeconfig,
        &["delete", "pod", "shell", "--wait=false"],
    ));
    poll(
        "the watch saw the deletion",
        Duration::from_secs(60),
        || {
            watch
                .saw("Terminating")
                .then_some(())
                .ok_or("not yet".to_owned())
        },
    );
    let mut watch = watch;
    assert!(
        watch.child.try_wait().expect("the watch").is_none(),
        "the watch ended: {:?}",
        watch.lines.lock().expect("lines")
    );
    eprintln!("the watch stayed open for {:?}", watch_started.elapsed());

    // A master's agent dies: requests go through the others.
    let first = &lab.record.hosts[0];
    let pid = first.agent_pid.expect("the agent runs");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    poll("the agent offline", Duration::from_secs(30), || {
        let node = lab.qb_json(&["node", "show", &first.name]);
        (node["agent"]["online"] == false)
            .then_some(())
            .ok_or("online".to_owned())
    });
    for _ in 0..3 {
        let nodes = ok(&kubectl(&kubeconfig, &["get", "nodes", "-o", "name"]));
        assert_eq!(nodes.lines().count(), 3, "{nodes}");
    }
}

/// Takes the lab down when the test ends, however it ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        match standing::down(&self.0) {
            Ok(left) if left.is_empty() => {}
            Ok(left) => eprintln!("the lab left {left:?}"),
            Err(e) => eprintln!("taking the lab down: {e:#}"),
        }
    }
}
