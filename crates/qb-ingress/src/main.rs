//! `qb-ingress`: the ingress qb runs in every cluster, a DaemonSet on the nodes' own network.
//! It watches the cluster through the Kubernetes API with the pod's service account and serves
//! the Ingresses of class `qb` on ports 80 and 443 of its node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use qb_ingress::proxy::SharedRoutes;
use qb_ingress::tls::{CertResolver, server_config};
use qb_ingress::watch::Replica;
use qb_ingress::workers::{Ports, Workers};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Where plain HTTP is served (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, default_value = "0.0.0.0:80")]
    http: SocketAddr,
    /// Where HTTPS is served (HTTP/2 and HTTP/1.1 by ALPN).
    #[arg(long, default_value = "0.0.0.0:443")]
    https: SocketAddr,
    /// Where `/healthz` (serving) and `/ready` (the routes have the cluster's objects) answer.
    #[arg(long, default_value = "0.0.0.0:10254")]
    health: SocketAddr,
    /// This replica's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// This replica's pod name.
    #[arg(long, env = "POD_NAME")]
    pod: String,
    /// The label selector of every replica's pod (in its namespace).
    #[arg(long, default_value = "app.kubernetes.io/name=qb-ingress")]
    selector: String,
    /// How long open connections may take to finish once told to stop.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u64).range(0..=300))]
    drain_seconds: u64,
}

const NOT_READY: &str = "not ready: the routes do not have the cluster yet\n";

fn main() -> Result<()> {
    let args = Args::parse();
    qb_addon_kit::init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let routes = SharedRoutes::default();
    let certificates = Arc::new(CertResolver::new().context("making the default certificate")?);
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(certificates.clone()).context("configuring TLS")?,
    ));
    let health = TcpListener::bind(args.health)
        .await
        .with_context(|| format!("listening on {}", args.health))?;
    let client = kube::Client::try_default()
        .await
        .context("reaching the Kubernetes API with the pod's service account")?;
    let ready = Arc::new(AtomicBool::new(false));
    let replica = Replica {
        namespace: args.namespace,
        pod: args.pod,
        selector: args.selector,
    };
    tracing::info!(http = %args.http, https = %args.https, "serving Ingresses of class qb (once the routes are loaded)");
    tokio::spawn(qb_ingress::watch::run(
        client,
        replica,
        routes.clone(),
        certificates,
        ready.clone(),
    ));
    // One thread per core, as nginx runs a worker per core; ports taken fail here.
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let ports = Ports {
        http: args.http,
        https: Some((args.https, tls)),
    };
    let workers = Workers::start(threads, ports, routes)
        .with_context(|| format!("listening on {} and {}", args.http, args.https))?;
    let health = tokio::spawn(async move {
        qb_addon_kit::serve_health(health, ready, NOT_READY)
            .await
            .context("serving health checks")
    });
    // As the first process of its container, nothing stops it on SIGTERM but its own handler.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    tokio::select! {
        done = health => {
            workers.stop(Duration::ZERO);
            done?
        }
        _ = terminate.recv() => {
            let within = Duration::from_secs(args.drain_seconds);
            tracing::info!("stopping: letting open connections finish within {within:?}");
            tokio::task::spawn_blocking(move || workers.stop(within)).await?;
            Ok(())
        }
    }
}
