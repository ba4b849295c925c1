//! `qb-dns`: the cluster DNS server qb runs in every cluster (a Deployment behind the cluster
//! DNS Service IP). It watches the cluster through the Kubernetes API with the pod's service
//! account, answers the cluster's names, and forwards the rest to the resolvers in the
//! `resolv.conf` it is given (the host's, with `dnsPolicy: Default`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use hickory_proto::rr::Name;
use ipnet::IpNet;
use qb_dns::server::{Resolver, SharedZone, nameservers};
use qb_dns::zone::{PodRecords, Zone, ZoneConfig};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Where DNS is served, UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// Where `/healthz` (serving) and `/ready` (the zone has the cluster's objects) answer.
    #[arg(long, default_value = "0.0.0.0:8080")]
    health: SocketAddr,
    /// The TTL of every answer, and how long clients cache a name that does not exist.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    ttl: u32,
    /// Pod records (`<a-b-c-d>.<namespace>.pod.<domain>`).
    #[arg(long, value_enum, default_value_t = Pods::Insecure)]
    pods: Pods,
    /// Address ranges whose reverse names are the cluster's (repeat: the Service and pod ranges).
    #[arg(long)]
    reverse: Vec<IpNet>,
    /// The `resolv.conf` naming the resolvers other names go to.
    #[arg(long, default_value = "/etc/resolv.conf")]
    upstream_resolv_conf: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Pods {
    Disabled,
    Insecure,
    Verified,
}

fn main() -> Result<()> {
    let args = Args::parse();
    qb_addon_kit::init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let domain = Name::from_ascii(format!("{}.", args.domain.trim_end_matches('.')))
        .with_context(|| format!("--domain {:?} is not a domain name", args.domain))?;
    let config = ZoneConfig {
        domain,
        ttl: args.ttl,
        pods: match args.pods {
            Pods::Disabled => PodRecords::Disabled,
            Pods::Insecure => PodRecords::Insecure,
            Pods::Verified => PodRecords::Verified,
        },
        reverse: args.reverse,
    };
    let resolv = std::fs::read_to_string(&args.upstream_resolv_conf)
        .with_context(|| format!("reading {}", args.upstream_resolv_conf.display()))?;
    let upstreams = nameservers(&resolv);
    if upstreams.is_empty() {
        bail!(
            "{} names no nameserver to forward other names to",
            args.upstream_resolv_conf.display()
        );
    }
    let zone = SharedZone::new(Zone::build(config.clone(), 0, &[], &[], &[]));
    let resolver = Resolver {
        zone: zone.clone(),
        upstreams: upstreams.clone().into(),
    };
    let udp = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (UDP)", args.listen))?;
    let tcp = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (TCP)", args.listen))?;
    let health = TcpListener::bind(args.health)
        .await
        .with_context(|| format!("listening on {}", args.health))?;
    let client = kube::Client::try_default()
        .await
        .context("reaching the Kubernetes API with the pod's service account")?;
    let ready = Arc::new(AtomicBool::new(false));
    tracing::info!(listen = %args.listen, upstreams = ?upstreams, "serving cluster DNS");
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    tokio::spawn(qb_dns::watch::run(client, config, zone, ready.clone()));
    let mut serving = tokio::task::JoinSet::new();
    let udp_resolver = resolver.clone();
    serving.spawn(async move {
        udp_resolver
            .serve_udp(udp, workers)
            .await
            .context("serving UDP")
    });
    serving.spawn(async move { resolver.serve_tcp(tcp).await.context("serving TCP") });
    serving.spawn(async move {
        qb_addon_kit::serve_health(health, ready, NOT_READY)
            .await
            .context("serving health checks")
    });
    // As the first process of its container, nothing stops it on SIGTERM but its own handler.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    tokio::select! {
        done = serving.join_next() => match done {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(e.into()),
            None => Ok(()),
        },
        _ = terminate.recv() => {
            // Answer a moment longer, while the Service stops sending queries here.
            tracing::info!("stopping in {LAME_DUCK:?}");
            tokio::time::sleep(LAME_DUCK).await;
            Ok(())
        }
    }
}

const NOT_READY: &str = "not ready: the zone does not have the cluster yet\n";

/// How long the server still answers once told to stop.
const LAME_DUCK: std::time::Duration = std::time::Duration::from_secs(2);
