//! `qb-ingress`: the ingress qb runs in every cluster, a DaemonSet on the nodes' own network.
//! It watches the cluster through the Kubernetes API with the pod's service account and serves
//! the Ingresses of class `qb` on ports 80 and 443 of its node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use qb_ingress::proxy::{Proxy, SharedRoutes};
use qb_ingress::tls::{CertResolver, server_config};
use qb_ingress::watch::Replica;
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
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))
    };
    let (http, https, health) = (
        bind(args.http).await?,
        bind(args.https).await?,
        bind(args.health).await?,
    );
    let client = kube::Client::try_default()
        .await
        .context("reaching the Kubernetes API with the pod's service account")?;
    let ready = Arc::new(AtomicBool::new(false));
    let replica = Replica {
        namespace: args.namespace,
        pod: args.pod,
        selector: args.selector,
    };
    tracing::info!(http = %args.http, https = %args.https, "serving Ingresses of class qb");
    tokio::spawn(qb_ingress::watch::run(
        client,
        replica,
        routes.clone(),
        certificates,
        ready.clone(),
    ));
    let proxy = Proxy::new(routes);
    let mut serving = tokio::task::JoinSet::new();
    let plain = proxy.clone();
    serving.spawn(async move { plain.serve_http(http).await.context("serving HTTP") });
    let secure = proxy.clone();
    serving.spawn(async move {
        secure
            .serve_https(https, tls)
            .await
            .context("serving HTTPS")
    });
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
            let within = Duration::from_secs(args.drain_seconds);
            tracing::info!("stopping: letting open connections finish within {within:?}");
            serving.abort_all();
            proxy.shut_down(within).await;
            Ok(())
        }
    }
}
