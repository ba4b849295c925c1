//! What qb's add-on binaries (the cluster DNS, the ingress) share: their logging, their health
//! endpoints, and reflectors of the cluster's objects that wake a rebuild on every change.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::net::TcpListener;

/// Logs to standard error at the level `QB_LOG` sets (`info` by default).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
}

/// Wakes whoever rebuilds from the reflectors' stores.
pub type Changed = Arc<tokio::sync::watch::Sender<()>>;

/// A reflector of the objects `api` and `config` select, run in its own task, waking `changed`
/// on each event. While the API server is unreachable it retries with backoff, and the store
/// keeps the last state it had.
pub fn reflect<K>(api: Api<K>, config: watcher::Config, changed: Changed) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    changed.send_replace(());
                }
                Err(e) => tracing::warn!(
                    kind = K::kind(&()).as_ref(),
                    error = %e,
                    "watching the cluster failed; serving from the last state while retrying"
                ),
            }
        }
    });
    reader
}

/// `/healthz`: 200 while the process serves; `/ready`: 200 once `ready` is set (the Service
/// or node sends traffic here only then), else 503 with `not_ready` as the body.
pub async fn serve_health(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let ok = match req.uri().path() {
                    "/healthz" => Some(true),
                    "/ready" => Some(ready.load(Ordering::Acquire)),
                    _ => None,
                };
                let (status, body) = match ok {
                    Some(true) => (hyper::StatusCode::OK, "ok\n"),
                    Some(false) => (hyper::StatusCode::SERVICE_UNAVAILABLE, not_ready),
                    None => (hyper::StatusCode::NOT_FOUND, "not found\n"),
                };
                async move {
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
