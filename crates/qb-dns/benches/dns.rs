//! qb's cluster DNS beside Debian's unbound, both serving the same 1000 Service names (unbound
//! as `local-data`) on this machine, measured by Debian's dnsperf over UDP: the peak queries per
//! second (median of three runs each, taken in turn) and, at half of each one's own peak, the
//! latency percentiles of every answer. Both use two threads. Run with `cargo xtask bench`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use hickory_proto::rr::Name;
use qb_dns::server::{Resolver, SharedZone};
use qb_dns::zone::{PodRecords, Port, Service, ServiceKind, Zone, ZoneConfig};
use qb_test_support::unbound::{Records, Unbound};

const SERVICES: u16 = 1000;
const PEAK_SECONDS: &str = "10";
const RATE_SECONDS: &str = "8";
const ROUNDS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<(String, IpAddr)> = (0..SERVICES)
        .map(|i| {
            let ip = IpAddr::from([10, 96, (i / 250) as u8 + 1, (i % 250) as u8 + 1]);
            (format!("svc-{i}.default.svc.cluster.local"), ip)
        })
        .collect();
    let queries = dir.path().join("queries");
    let lines: String = names.iter().map(|(n, _)| format!("{n} A\n")).collect();
    std::fs::write(&queries, lines).expect("the query file");

    let qb = start_qb(&names);
    // Debian's unbound with the same names as `local-data`, two threads.
    let data: Vec<String> = names
        .iter()
        .map(|(n, ip)| format!("{n}. 5 IN A {ip}"))
        .collect();
    let unbound = Unbound::start(
        [127, 0, 0, 1].into(),
        0,
        2,
        &Records {
            zones: &["cluster.local."],
            data: &data,
        },
    )
    .expect("unbound");

    let mut peaks: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, addr) in [qb, unbound.addr].into_iter().enumerate() {
            peaks[i].push(dnsperf(addr, &queries, &["-l", PEAK_SECONDS, "-q", "200"]).qps);
        }
    }
    let peak = peaks.clone().map(|mut runs| median(&mut runs));
    let mut latencies = Vec::new();
    for (i, addr) in [qb, unbound.addr].into_iter().enumerate() {
        let rate = format!("{}", (peak[i] / 2.0) as u64);
        let run = dnsperf(addr, &queries, &["-l", RATE_SECONDS, "-Q", &rate, "-v"]);
        latencies.push(run);
    }
    println!(
        "cluster DNS, {SERVICES} Service names, dnsperf over UDP on this machine (2 threads each)"
    );
    println!(
        "{:<10} {:>12} {:>14} {:>10} {:>10} {:>10} {:>8}",
        "server", "peak q/s", "at half q/s", "p50 µs", "p99 µs", "p99.9 µs", "lost"
    );
    for (i, name) in ["qb-dns", "unbound"].into_iter().enumerate() {
        let run = &mut latencies[i];
        println!(
            "{name:<10} {:>12.0} {:>14.0} {:>10.0} {:>10.0} {:>10.0} {:>8}",
            peak[i],
            run.qps,
            percentile(&mut run.latencies, 0.50) * 1e6,
            percentile(&mut run.latencies, 0.99) * 1e6,
            percentile(&mut run.latencies, 0.999) * 1e6,
            run.lost
        );
    }
    println!(
        "qb-dns / unbound: peak {:.2}x (runs: qb-dns {:?}, unbound {:?})",
        peak[0] / peak[1],
        peaks[0].iter().map(|q| q.round()).collect::<Vec<_>>(),
        peaks[1].iter().map(|q| q.round()).collect::<Vec<_>>()
    );
}

/// qb-dns serving `names` on a loopback port, in this process with two worker threads.
fn start_qb(names: &[(String, IpAddr)]) -> SocketAddr {
    let services: Vec<Service> = names
        .iter()
        .map(|(name, ip)| Service {
            namespace: "default".into(),
            name: name.split('.').next().unwrap_or_default().to_owned(),
            kind: ServiceKind::ClusterIp(vec![*ip]),
            ports: vec![Port {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
            }],
        })
        .collect();
    let zone = Zone::build(
        ZoneConfig {
            domain: Name::from_ascii("cluster.local.").expect("name"),
            ttl: 5,
            pods: PodRecords::Insecure,
            reverse: vec![],
        },
        1,
        &services,
        &[],
        &[],
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("UDP socket");
            tx.send(socket.local_addr().expect("address"))
                .expect("the address");
            let resolver = Resolver {
                zone: SharedZone::new(zone),
                upstreams: Vec::new().into(),
            };
            resolver.serve_udp(socket, 2).await.expect("serving");
        });
    });
    rx.recv().expect("qb-dns listening")
}

struct Run {
    qps: f64,
    lost: u64,
    /// Seconds, per answer (with `-v`).
    latencies: Vec<f64>,
}

/// dnsperf against `server` with `queries` and `args`.
fn dnsperf(server: SocketAddr, queries: &std::path::Path, args: &[&str]) -> Run {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args(["-c", "4", "-T", "1"])
        .args(args)
        .output()
        .expect("dnsperf (Debian's dnsperf) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf failed: {text}");
    let field = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in dnsperf's report:\n{text}"))
    };
    // Each answer, with -v: `> NOERROR <name> A <seconds>`.
    let latencies = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    Run {
        qps: field("Queries per second:"),
        lost: field("Queries lost:") as u64,
        latencies,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * p) as usize).min(values.len() - 1)]
}
