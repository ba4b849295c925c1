//! The API balancer: a TCP load balancer on the node's loopback in front of the masters' API
//! servers, for the kubelet and kube-proxy (the plan's `api_balancer`). Each connection goes to
//! the first API server in the plan's order that accepts it; one that did not is tried last for
//! a while. Bytes are copied, never interpreted: TLS runs between the component and the API
//! server.
//!
//! It runs as a process of its own ([`serve`], `qb-agent api-balancer`), a service the agent
//! supervises like the plan's: it outlives the agent, so the kubelet's and kube-proxy's
//! connections go on while the agent restarts or is upgraded. It reads its settings from a
//! file the agent writes, again whenever the file changes, so a new list of API servers
//! reaches it without a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qb_agent_proto::plan::ApiBalancer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long an API server has to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an API server that did not accept is tried after the others.
const FAILED_FOR: Duration = Duration::from_secs(15);
/// How often [`serve`] looks at its settings file.
const SETTINGS_CHECK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("the API balancer's address {address} must be on loopback")]
    NotLoopback { address: SocketAddr },
    #[error("the API balancer cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the API balancer's settings in {path}")]
    Settings {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the balancer its settings file `path` (an [`ApiBalancer`] as JSON) describes, and
/// follows the file's changes, until the process ends. The agent replaces the file whole, so
/// settings this program cannot read are a newer agent's: it ends, and its supervisor starts
/// it again from the program now installed. A file it cannot open keeps the last settings.
pub async fn serve(path: &Path) -> Result<(), BalancerError> {
    let balancer = Balancer::default();
    let mut current = read_settings(path)?;
    balancer.set(Some(&current))?;
    let mut failing: Option<String> = None;
    loop {
        tokio::time::sleep(SETTINGS_CHECK).await;
        let next = match read_settings(path) {
            Ok(settings) => settings,
            Err(e) if is_unreadable(&e) => return Err(e),
            Err(e) => {
                warn_once(&mut failing, &e, "keeping the API balancer's last settings");
                continue;
            }
        };
        if next == current {
            continue;
        }
        match balancer.set(Some(&next)) {
            Ok(summary) => {
                tracing::info!(balancer = %summary, "new API balancer settings");
                current = next;
                failing = None;
            }
            Err(e) => warn_once(&mut failing, &e, "new API balancer settings not taken"),
        }
    }
}

/// Whether the settings file was read but holds no settings this program knows.
fn is_unreadable(error: &BalancerError) -> bool {
    matches!(error, BalancerError::Settings { source, .. } if source.kind() == std::io::ErrorKind::InvalidData)
}

/// Warns about `error` unless it is the one warned about last.
fn warn_once(last: &mut Option<String>, error: &BalancerError, what: &str) {
    let text = qb_api::error_chain(error);
    if last.as_deref() != Some(text.as_str()) {
        tracing::warn!(error = %text, "{what}");
        *last = Some(text);
    }
}

fn read_settings(path: &Path) -> Result<ApiBalancer, BalancerError> {
    let error = |source| BalancerError::Settings {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read(path).map_err(error)?;
    serde_json::from_slice(&text)
        .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The balancer of the applied plan, if it has one.
#[derive(Default)]
pub struct Balancer(Mutex<Option<Running>>);

struct Running {
    listen: SocketAddr,
    upstreams: watch::Sender<Vec<SocketAddr>>,
    accepting: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Connections already carried go on until either side closes them.
        self.accepting.abort();
    }
}

impl Balancer {
    /// Runs the balancer `spec` describes, or none: listens anew only when its address
    /// changes; a new list of API servers applies to the next connections.
    pub fn set(&self, spec: Option<&ApiBalancer>) -> Result<String, BalancerError> {
        let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(spec) = spec else {
            return Ok(match running.take() {
                Some(old) => format!("stopped listening on {}", old.listen),
                None => "none".to_owned(),
            });
        };
        let summary = format!(
            "{} -> {}",
            spec.listen,
            spec.upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(current) = running.as_ref().filter(|r| r.listen == spec.listen) {
            current.upstreams.send_replace(spec.upstreams.clone());
            return Ok(summary);
        }
        if !spec.listen.ip().is_loopback() {
            return Err(BalancerError::NotLoopback {
                address: spec.listen,
            });
        }
        // The new address is taken before the old one is let go: a bind that fails leaves the
        // balancer listening where it was.
        let listener = std::net::TcpListener::bind(spec.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .map_err(|source| BalancerError::Bind {
                address: spec.listen,
                source,
            })?;
        let (upstreams, watching) = watch::channel(spec.upstreams.clone());
        // The old listener closes as its task ends.
        *running = Some(Running {
            listen: spec.listen,
            upstreams,
            accepting: tokio::spawn(accept(listener, watching)),
        });
        tracing::info!(balancer = %summary, "API balancer listening");
        Ok(summary)
    }
}

async fn accept(listener: TcpListener, upstreams: watch::Receiver<Vec<SocketAddr>>) {
    let failed: Arc<Mutex<HashMap<SocketAddr, Instant>>> = Arc::default();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "the API balancer cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let order = try_order(&upstreams.borrow(), &failed);
        tokio::spawn(carry(client, order, failed.clone()));
    }
}

/// `upstreams` in the plan's order, those that recently failed last.
fn try_order(
    upstreams: &[SocketAddr],
    failed: &Mutex<HashMap<SocketAddr, Instant>>,
) -> Vec<SocketAddr> {
    let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
    failed.retain(|_, at| at.elapsed() < FAILED_FOR);
    let mut order = upstreams.to_vec();
    order.sort_by_key(|u| failed.contains_key(u));
    order
}

async fn carry(
    mut client: TcpStream,
    order: Vec<SocketAddr>,
    failed: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
) {
    let _ = client.set_nodelay(true);
    for upstream in order {
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
        {
            Ok(Ok(mut server)) => {
                let _ = server.set_nodelay(true);
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        tracing::info!(%upstream, %error, "an API server did not accept; trying the next");
        failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(upstream, Instant::now());
    }
    tracing::warn!("no API server accepted a connection of the API balancer");
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that answers every connection with its name.
    async fn upstream(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = conn.write_all(name.as_bytes()).await;
            }
        });
        address
    }

    /// An address nothing listens on.
    fn unused_address() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    async fn through(listen: SocketAddr) -> String {
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn connections_go_to_the_first_api_server_that_accepts() {
        let (a, b, down) = (upstream("a").await, upstream("b").await, unused_address());
        let listen = unused_address();
        let balancer = Balancer::default();
        let spec = |upstreams: Vec<SocketAddr>| ApiBalancer { listen, upstreams };

        balancer.set(Some(&spec(vec![a, b]))).unwrap();
        assert_eq!(through(listen).await, "a");
        // The first refuses: the next takes it, and goes on taking them.
        balancer.set(Some(&spec(vec![down, b, a]))).unwrap();
        for _ in 0..3 {
            assert_eq!(through(listen).await, "b");
        }
        // None accepts: the connection is closed, nothing sent.
        balancer.set(Some(&spec(vec![down]))).unwrap();
        assert_eq!(through(listen).await, "");

        // Stopped, the address is free again.
        assert_eq!(
            balancer.set(None).unwrap(),
            format!("stopped listening on {listen}")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(listen).await.is_err());
        std::net::TcpListener::bind(listen).expect("the address is free");
    }

    #[tokio::test]
    async fn the_process_follows_its_settings_file() {
        let (a, b) = (upstream("a").await, upstream("b").await);
        let listen = unused_address();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-balancer.json");
        let write = |upstreams: Vec<SocketAddr>| {
            let spec = ApiBalancer { listen, upstreams };
            std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        };
        assert!(matches!(
            serve(&path).await,
            Err(BalancerError::Settings { .. })
        ));
        write(vec![a]);
        let serving = tokio::spawn({
            let path = path.clone();
            async move { serve(&path).await }
        });
        let until = |want: &'static str| async move {
            for _ in 0..50 {
                if TcpStream::connect(listen).await.is_ok() && through(listen).await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("never reached {want}");
        };
        until("a").await;
        // A new list reaches it; a file gone keeps the last one.
        write(vec![b]);
        until("b").await;
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(SETTINGS_CHECK * 2).await;
        assert_eq!(through(listen).await, "b");
        assert!(!serving.is_finished());
        // Settings it cannot read (a newer agent's, of another shape) end it, for its
        // supervisor to start the program installed now. (Fields it does not know, it reads
        // past.)
        std::fs::write(
            &path,
            r#"{"listen": ["127.0.0.1:1", "[::1]:1"], "upstreams": []}"#,
        )
        .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("it ends")
            .unwrap();
        assert!(matches!(ended, Err(ref e) if is_unreadable(e)), "{ended:?}");
    }

    #[test]
    fn a_server_that_failed_is_tried_last_for_a_while() {
        let (down, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:6443".parse().unwrap(),
            "10.0.0.2:6443".parse().unwrap(),
        );
        let failed = Mutex::new(HashMap::new());
        assert_eq!(try_order(&[down, b], &failed), [down, b]);
        failed.lock().unwrap().insert(down, Instant::now());
        assert_eq!(try_order(&[down, b], &failed), [b, down]);
        failed
            .lock()
            .unwrap()
            .insert(down, Instant::now() - FAILED_FOR);
        assert_eq!(try_order(&[down, b], &failed), [down, b]);
    }

    #[tokio::test]
    async fn only_loopback_and_a_taken_address_is_a_clear_error() {
        let balancer = Balancer::default();
        let outside = ApiBalancer {
            listen: "10.0.0.1:6444".parse().unwrap(),
            upstreams: vec![],
        };
        assert!(matches!(
            balancer.set(Some(&outside)),
            Err(BalancerError::NotLoopback { .. })
        ));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ApiBalancer {
            listen: taken.local_addr().unwrap(),
            upstreams: vec![],
        };
        let e = balancer.set(Some(&spec)).unwrap_err();
        assert!(matches!(e, BalancerError::Bind { .. }), "{e}");
        assert!(e.to_string().contains(&spec.listen.to_string()), "{e}");
    }
}
