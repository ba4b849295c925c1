//! qb's ingress beside Debian's nginx, each a reverse proxy to the same two backends (an nginx
//! answering a short body), on this machine, measured by Debian's wrk: HTTP/1.1 with keep-alive
//! from the client and to the backends, the same threads and connections for both; requests per
//! second (median of three runs each, taken in turn) and the latency percentiles of the median
//! run. Both proxies have two threads (nginx: two workers). With wrk and the backends on the
//! same two cores, requests per second also hang on the others' share of the CPU; the proxies'
//! own CPU time per request (user and system, from /proc) is printed beside it. Run with
//! `cargo xtask bench`.

use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use qb_ingress::proxy::SharedRoutes;
use qb_ingress::routes::Routes;
use qb_ingress::workers::{Ports, Workers};
use qb_test_support::free_port;
use qb_test_support::nginx::Nginx;
use serde_json::json;

const THREADS: &str = "2";
const CONNECTIONS: &str = "64";
const DURATION: &str = "10s";
const ROUNDS: usize = 3;
const HOST: &str = "bench.test";

fn main() {
    let backends = [port(), port()];
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "server {{ listen 127.0.0.1:{p}; keepalive_requests 1000000; \
                 location / {{ return 200 \"hello from backend {i}\\n\"; }} }}\n"
            )
        })
        .collect();
    let _backend = Nginx::start(2, &servers, backends[1]).expect("the backends");

    let nginx_port = port();
    let upstreams: String = backends
        .iter()
        .map(|p| format!("server 127.0.0.1:{p};"))
        .collect();
    // As ingress-nginx sets it up: HTTP/1.1 keep-alive to the endpoints, the client's Host
    // and where it came from.
    let _nginx = Nginx::start(
        2,
        &format!(
            "upstream backends {{ {upstreams} keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 1000000; location / {{\n\
               proxy_pass http://backends; proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\"; proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Real-IP $remote_addr;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
               proxy_set_header X-Forwarded-Host $host; }} }}"
        ),
        nginx_port,
    )
    .expect("nginx");

    // qb's proxy in this process: two threads, as qb-ingress runs on a node of two cores.
    let routes = SharedRoutes::default();
    routes.set(routes_to(&backends));
    let ports = Ports {
        http: "127.0.0.1:0".parse().expect("an address"),
        https: None,
    };
    let workers = Workers::start(2, ports, routes).expect("the proxy");
    let qb = workers.http;

    // The floor for any proxy in this process: bytes copied both ways to one backend, no HTTP.
    let pump = tcp_pump(backends[0]);

    let targets = [
        ("qb-ingress", qb.port()),
        ("nginx", nginx_port),
        ("tcp pump", pump),
    ];
    // Whose CPU time each proxy is: this process (its threads but the one waiting on wrk),
    // nginx's workers.
    let me = vec![std::process::id()];
    let processes = [me.clone(), children(_nginx.pid()), me];
    for (name, port) in targets {
        let body = curl(port);
        assert!(body.starts_with("hello from backend"), "{name}: {body:?}");
    }
    let mut runs: [Vec<Run>; 3] = Default::default();
    for _ in 0..ROUNDS {
        for (i, (_, port)) in targets.iter().enumerate() {
            let before = cpu_ticks(&processes[i]);
            let mut run = wrk(*port);
            let ticks = cpu_ticks(&processes[i]) - before;
            run.cpu_us_per_request = ticks as f64 * 1e6 / TICKS_PER_SECOND / run.requests as f64;
            runs[i].push(run);
        }
    }
    println!(
        "ingress proxy, wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}, HTTP/1.1 keep-alive, \
         two backends, this machine (median of {ROUNDS} runs); the tcp pump, to one backend, is \
         the floor: no HTTP at all"
    );
    println!(
        "{:<11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>11}",
        "proxy", "req/s", "p50 ms", "p90 ms", "p99 ms", "non-2xx", "errors", "CPU us/req"
    );
    let mut medians = Vec::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        runs[i].sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let run = &runs[i][ROUNDS / 2];
        println!(
            "{name:<11} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7} {:>11.1}",
            run.rps,
            run.p50_ms,
            run.p90_ms,
            run.p99_ms,
            run.non_2xx,
            run.errors,
            run.cpu_us_per_request
        );
        medians.push(run.clone());
    }
    println!(
        "qb-ingress / nginx: {:.2}x the requests per second, {:.2}x the p99, {:.2}x the CPU per request",
        medians[0].rps / medians[1].rps,
        medians[0].p99_ms / medians[1].p99_ms,
        medians[0].cpu_us_per_request / medians[1].cpu_us_per_request
    );
}

/// A TCP proxy on two threads that copies bytes between each client and a connection of its
/// own to `backend`: the least a proxy in this process can cost.
fn tcp_pump(backend: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("its address").port();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
    });
    port
}

fn port() -> u16 {
    free_port().expect("a free port")
}

fn object<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// One Ingress routing `HOST` to a Service whose endpoints are the backends.
fn routes_to(backends: &[u16]) -> Routes {
    let ingress: Ingress = object(json!({
        "metadata": {"namespace": "default", "name": "bench"},
        "spec": {"ingressClassName": "qb", "rules": [{"host": HOST, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}},
        ]}}]},
    }));
    let service: Service = object(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]},
    }));
    let subsets: Vec<_> = backends
        .iter()
        .map(|p| json!({"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": p}]}))
        .collect();
    let endpoints: Endpoints = object(json!({
        "metadata": {"namespace": "default", "name": "web"}, "subsets": subsets,
    }));
    Routes::build(
        &[Arc::new(ingress)],
        &[],
        &[Arc::new(service)],
        &[Arc::new(endpoints)],
    )
}

fn curl(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-H", &format!("Host: {HOST}")])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unit of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The user and system CPU time of `pids` so far, in ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc");
            // After the command's parenthesis: state is field 3, utime 14, stime 15.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .expect("a stat line")
                .1
                .split_whitespace()
                .collect();
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
        })
        .sum()
}

/// The child processes of `pid` (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("/proc")
        .split_whitespace()
        .map(|c| c.parse().expect("a process id"))
        .collect()
}

#[derive(Clone, Debug)]
struct Run {
    rps: f64,
    requests: u64,
    cpu_us_per_request: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: u64,
}

fn wrk(port: u16) -> Run {
    let out = Command::new("wrk")
        .args([
            "-t",
            THREADS,
            "-c",
            CONNECTIONS,
            "-d",
            DURATION,
            "--latency",
        ])
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk is not installed: run `apt-get install -y wrk`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let percentile = |p: &str| {
        field(&format!("{p}%"))
            .and_then(millis)
            .unwrap_or_else(|| panic!("no {p}% latency in:\n{text}"))
    };
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let errors = field("Socket errors:").map_or(0, |e| {
        e.split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    // "   123456 requests in 10.00s, 17.2MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{text}"));
    Run {
        requests,
        cpu_us_per_request: 0.0,
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}")),
        p50_ms: percentile("50"),
        p90_ms: percentile("90"),
        p99_ms: percentile("99"),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        errors,
    }
}

/// wrk's durations (`812.00us`, `1.23ms`, `2.01s`) in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}
