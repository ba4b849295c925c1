//! The DNS server answering a real client (`dig`, from Debian's bind9-dnsutils) over UDP and
//! TCP, with a real upstream resolver (Debian's `unbound`, serving a zone of its own on
//! loopback) for the names outside the cluster.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::Name;
use qb_dns::server::{Resolver, SharedZone};
use qb_dns::zone::{
    Address, Endpoints, PodRecords, Port, Service, ServiceKind, Subset, Zone, ZoneConfig,
};
use qb_test_support::unbound::{Records, Unbound};
use tokio::net::{TcpListener, UdpSocket};
use tokio::process::Command;

/// Endpoints of the big headless Service: too many for a 512-byte UDP answer.
const MANY: u8 = 60;

fn port(name: &str, number: u16) -> Port {
    Port {
        name: name.to_owned(),
        protocol: "TCP".to_owned(),
        port: number,
    }
}

fn zone() -> Zone {
    let services = vec![
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterIp(vec!["10.96.0.20".parse().expect("IP")]),
            ports: vec![port("http", 80)],
        },
        Service {
            namespace: "default".into(),
            name: "many".into(),
            kind: ServiceKind::Headless,
            ports: vec![port("http", 8080)],
        },
    ];
    let addresses = (1..=MANY)
        .map(|i| Address {
            ip: IpAddr::from([10, 244, 3, i]),
            hostname: None,
        })
        .collect();
    let endpoints = vec![Endpoints {
        namespace: "default".into(),
        name: "many".into(),
        subsets: vec![Subset {
            addresses,
            ports: vec![port("http", 8080)],
        }],
    }];
    Zone::build(
        ZoneConfig {
            domain: Name::from_ascii("cluster.local.").expect("name"),
            ttl: 5,
            pods: PodRecords::Insecure,
            reverse: vec!["10.96.0.0/12".parse().expect("CIDR")],
        },
        1,
        &services,
        &endpoints,
        &[],
    )
}

/// A UDP socket and a TCP listener on one loopback port.
async fn bind_both() -> (UdpSocket, TcpListener, u16) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("UDP socket");
        let port = udp.local_addr().expect("address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp, port);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// Debian's unbound on loopback, answering `www.example.test` from a zone of its own.
fn upstream() -> Unbound {
    Unbound::start(
        [127, 0, 0, 1].into(),
        0,
        1,
        &Records {
            zones: &["example.test."],
            data: &["www.example.test. 60 IN A 192.0.2.10".to_owned()],
        },
    )
    .expect("unbound")
}

/// `dig @127.0.0.1 -p PORT ARGS`: its output, trimmed.
async fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig (Debian's bind9-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_gets_cluster_names_and_forwarded_names_over_udp_and_tcp() {
    let upstream = upstream();
    let (udp, tcp, port) = bind_both().await;
    let resolver = Resolver {
        zone: SharedZone::new(zone()),
        upstreams: vec![upstream.addr].into(),
    };
    tokio::spawn(resolver.clone().serve_udp(udp, 2));
    tokio::spawn(resolver.clone().serve_tcp(tcp));

    let short = |args: &'static [&'static str]| dig(port, args);
    assert_eq!(
        short(&["+short", "web.default.svc.cluster.local"]).await,
        "10.96.0.20"
    );
    assert_eq!(
        short(&["+short", "+tcp", "web.default.svc.cluster.local"]).await,
        "10.96.0.20"
    );
    assert_eq!(
        short(&["+short", "SRV", "_http._tcp.web.default.svc.cluster.local"]).await,
        "0 100 80 web.default.svc.cluster.local."
    );
    assert_eq!(
        short(&["+short", "-x", "10.96.0.20"]).await,
        "web.default.svc.cluster.local."
    );
    // Forwarded as it came, answered by unbound.
    assert_eq!(short(&["+short", "www.example.test"]).await, "192.0.2.10");
    assert_eq!(
        short(&["+short", "+tcp", "www.example.test"]).await,
        "192.0.2.10"
    );
    // A name of the zone that does not exist: NXDOMAIN, authoritative, with the SOA whose
    // minimum clients cache the answer for.
    let nx = dig(port, &["nope.default.svc.cluster.local"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("flags: qr aa rd ra"), "{nx}");
    assert!(
        nx.contains("cluster.local.\t\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"),
        "{nx}"
    );

    // Too long for classic UDP: truncated; dig asks again over TCP and gets every endpoint.
    let truncated = dig(
        port,
        &["+noedns", "+ignore", "many.default.svc.cluster.local"],
    )
    .await;
    assert!(truncated.contains("flags: qr aa tc rd ra"), "{truncated}");
    let all = dig(
        port,
        &["+noedns", "+short", "many.default.svc.cluster.local"],
    )
    .await;
    assert_eq!(all.lines().count(), usize::from(MANY), "{all}");
    // With EDNS (dig's default, 1232 bytes), the UDP answer holds them all.
    let edns = dig(port, &["+ignore", "many.default.svc.cluster.local"]).await;
    assert!(!edns.contains(" tc "), "{edns}");
    assert_eq!(
        dig(port, &["+short", "many.default.svc.cluster.local"])
            .await
            .lines()
            .count(),
        usize::from(MANY)
    );

    // The zone swapped for a new snapshot answers at once.
    resolver.zone.set(Zone::build(
        ZoneConfig {
            domain: Name::from_ascii("cluster.local.").expect("name"),
            ttl: 5,
            pods: PodRecords::Insecure,
            reverse: vec![],
        },
        2,
        &[],
        &[],
        &[],
    ));
    let gone = dig(port, &["web.default.svc.cluster.local"]).await;
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answering_upstream_other_names_fail_at_once() {
    // A port nothing answers on: the forwarder gives up and says SERVFAIL.
    let (silent, _tcp, silent_port) = bind_both().await;
    let (udp, tcp, port) = bind_both().await;
    let resolver = Resolver {
        zone: SharedZone::new(zone()),
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], silent_port))].into(),
    };
    tokio::spawn(resolver.clone().serve_udp(udp, 1));
    tokio::spawn(resolver.serve_tcp(tcp));
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1"])
        .arg("www.example.test")
        .output()
        .await
        .expect("dig");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("status: SERVFAIL"), "{said}");
    // Cluster names still answer.
    assert_eq!(
        dig(port, &["+short", "web.default.svc.cluster.local"]).await,
        "10.96.0.20"
    );
    drop(silent);
}
