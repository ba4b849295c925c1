//! The agent's life: register once, then hold the channel, reconnecting with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::body::Bytes;
use qb_agent_proto::{
    AgentMessage, ControllerMessage, FrameDecoder, HostMetrics, Instruction, KEEPALIVE_AFTER,
    KEEPALIVE_TIMEOUT, REGISTER_PATH, RENEW_PATH, RegisterRequest, RegisterResponse, RenewRequest,
    RenewResponse, encode,
};
use qb_api::ProblemCode;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::connect::{Controller, LINK_IDLE, Link, client_identity, post_json};
use crate::host::{self, Metrics};
use crate::state::{Identity, StateDir};
use crate::work::{AbortOnDrop, Work};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reconnect delays: exponential with full jitter, so a thousand agents cut off together do not
/// come back together.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(60);

    fn next(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt += 1;
        Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a session with the controller ended.
enum Ended {
    /// The connection went away; try again.
    Lost(anyhow::Error),
    /// The controller revoked this host's identity.
    Deauthorized,
}

/// Runs until the process is stopped.
pub async fn run(config: Config) -> Result<()> {
    if let Ok(marked) = std::env::var(crate::builds::UNREACHABLE_BUILD_ENV)
        && crate::builds::own_build().is_some_and(|own| marked == own.as_str())
    {
        tracing::error!(
            "this build plays one that cannot reach its controller ({}, a test's doing)",
            crate::builds::UNREACHABLE_BUILD_ENV
        );
        return std::future::pending().await;
    }
    let state = StateDir::open(&config.state_dir)?;
    // The controller's replicas, tried in turn: a lost or unreachable one moves the agent on.
    let controllers = config
        .controller_urls()
        .map(|url| Controller::new(&config, url))
        .collect::<Result<Vec<_>>>()?;
    let mut current = 0;
    let work = Work::open(&config.state_dir, &config.log_dir, config.ca_pins.clone())?;
    tokio::spawn(work.clone().run());
    tokio::spawn(crate::logs::keep_own_rotated(config.log_dir.clone()));
    let mut backoff = Backoff { attempt: 0 };
    loop {
        let identity = match state.identity()? {
            Some(identity) => identity,
            None if state.revoked_with(config.bootstrap_token.as_deref()) => {
                tracing::error!(
                    "this host was deauthorized by the controller; install a new bootstrap token in the configuration and restart the agent to register again"
                );
                tokio::time::sleep(Duration::from_secs(3600)).await;
                continue;
            }
            None => match register(&controllers[current], &config, &state).await {
                Ok(identity) => identity,
                Err(Refused(problem)) if problem.code == ProblemCode::IdentityConflict => {
                    tracing::error!(code = ?problem.code, "registration refused: {}", problem.detail);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
                Err(Refused(problem)) => {
                    tracing::error!(
                        code = ?problem.code,
                        "registration refused: {}; ask the controller's operator for a new bootstrap token",
                        problem.detail
                    );
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    continue;
                }
                Err(Failed(e)) => {
                    current = (current + 1) % controllers.len();
                    let delay = backoff.next();
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "could not register");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let registered_with = identity.registered_with.clone();
        match session(&controllers[current], &config, &state, &work, identity).await {
            Ended::Deauthorized => {
                tracing::error!(
                    "the controller deauthorized this host; its certificate is no longer accepted"
                );
                state.revoke(&registered_with)?;
            }
            Ended::Lost(e) => {
                current = (current + 1) % controllers.len();
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "lost the controller");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

enum RegisterError {
    /// The controller said no: the token will not do, or another host holds this host's
    /// machine id (tried again a minute later: the operator may give this host its own).
    Refused(qb_api::Problem),
    Failed(anyhow::Error),
}
use RegisterError::{Failed, Refused};

impl From<anyhow::Error> for RegisterError {
    fn from(e: anyhow::Error) -> Self {
        Failed(e)
    }
}

/// Where the system keeps the host's machine id: systemd's file, then D-Bus's copy.
/// The longest pause between tries to keep a plan the host could not keep.
const PLAN_RETRY: Duration = Duration::from_secs(10);
const SYSTEM_MACHINE_IDS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

async fn register(
    controller: &Controller,
    config: &Config,
    state: &StateDir,
) -> Result<Identity, RegisterError> {
    let token = config.bootstrap_token.clone().ok_or_else(|| {
        Failed(anyhow::anyhow!(
            "no bootstrap_token in the configuration, and this host has not registered"
        ))
    })?;
    let mut connection = controller.connect(None).await?;
    let facts = host::facts(config.node_name.as_deref(), connection.local_ip);
    let key = qb_pki::new_key_and_csr(&facts.hostname).map_err(anyhow::Error::from)?;
    let request = RegisterRequest {
        token: token.into(),
        csr_pem: key.csr_pem.clone(),
        machine_id: state.machine_id(
            config.machine_id.as_deref(),
            &SYSTEM_MACHINE_IDS.map(std::path::Path::new),
        )?,
        facts,
        labels: config.labels().map_err(|e| Failed(anyhow::anyhow!(e.0)))?,
        agent_version: VERSION.to_owned(),
    };
    let answer = post_json(
        &mut connection.sender,
        &controller.uri(REGISTER_PATH),
        &request,
    )
    .await?;
    connection.closed.abort();
    let response: RegisterResponse = match answer {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .context("the controller's registration answer")
            .map_err(Failed)?,
        Err((_, problem))
            if matches!(
                problem.code,
                ProblemCode::RegistrationRefused | ProblemCode::IdentityConflict
            ) =>
        {
            return Err(Refused(problem));
        }
        Err((status, problem)) => {
            return Err(Failed(anyhow::anyhow!(
                "registration failed ({status}): {}",
                problem.detail
            )));
        }
    };
    let identity = Identity {
        tenant_id: response.tenant_id,
        node_id: response.node_id,
        node_name: response.node_name.to_string(),
        cert_pem: response.certificate_pem,
        registered_with: crate::state::token_hash(Some(request.token.expose())),
        key_pem: key.key_pem.expose().to_owned(),
    };
    state.save(&identity)?;
    tracing::info!(node_id = %identity.node_id, node = %identity.node_name, state = response.state.as_str(), "registered with the controller");
    Ok(identity)
}

/// When to renew a certificate: at a random point between 70 % and 90 % of the lifetime it has
/// left (certificates are backdated a little for clock skew, so `not_before` is no anchor), and
/// never sooner than a few seconds, so a nearly expired certificate cannot cause a storm.
fn renewal_delay(cert_pem: &str) -> Duration {
    const FLOOR: Duration = Duration::from_secs(5);
    let info = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .and_then(|der| qb_pki::node_cert_info(&der).ok());
    let Some(info) = info else {
        return Duration::from_secs(3600);
    };
    let left = (info.not_after - time::OffsetDateTime::now_utc())
        .as_seconds_f64()
        .max(0.0);
    Duration::from_secs_f64(left * rand::rng().random_range(0.7..0.9)).max(FLOOR)
}

async fn session(
    controller: &Controller,
    config: &Config,
    state: &StateDir,
    work: &Arc<Work>,
    mut identity: Identity,
) -> Ended {
    let ended = match hold_channel(controller, config, state, work, &mut identity).await {
        Ok(ended) => ended,
        Err(e) => Ended::Lost(e),
    };
    work.connected(None);
    ended
}

async fn hold_channel(
    controller: &Controller,
    config: &Config,
    state: &StateDir,
    work: &Arc<Work>,
    identity: &mut Identity,
) -> Result<Ended> {
    let client = client_identity(&identity.cert_pem, &identity.key_pem)?;
    let channel = controller
        .channel((client.0.clone(), client.1.clone_key()))
        .await?;
    let link = Arc::new(Link::new(controller, &channel, client));
    work.connected(Some(link.clone()));
    let (mut reader, mut writer) = tokio::io::split(channel.stream);
    let (to_controller, mut outgoing) = mpsc::channel::<Bytes>(16);
    // One writer, so frames never interleave; it ends with this session.
    let _writer = AbortOnDrop(tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    }));
    let local_ip = channel.local_ip;
    let mut facts = host::facts(config.node_name.as_deref(), local_ip);
    let hello = AgentMessage::Hello {
        agent_version: VERSION.to_owned(),
        facts: facts.clone(),
        build: crate::builds::own_build().cloned(),
        rolled_back: crate::builds::BuildStore::new(&config.state_dir)
            .load()
            .rolled_back,
    };
    to_controller.send(Bytes::from(encode(&hello))).await?;
    let mut reports = work.report.subscribe();
    reports.mark_unchanged();
    let report = work.current_report();
    if report.generation > 0 {
        let report = AgentMessage::Plan(report);
        to_controller.send(Bytes::from(encode(&report))).await?;
    }
    let mut chunk = vec![0u8; 16 * 1024];
    let mut decoder = FrameDecoder::default();
    let mut metrics = Metrics::start();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    heartbeat.tick().await;
    let mut idle_check = tokio::time::interval(LINK_IDLE / 2);
    // When the controller was last heard, and whether it was asked for a sign of life since.
    let mut heard = tokio::time::Instant::now();
    let mut asked = false;
    let mut quiet_check = tokio::time::interval(Duration::from_secs(5));
    // Plans are fetched and the certificate renewed beside the channel, over the link: a slow
    // HTTP/2 connection or answer never holds up heartbeats. Either failing ends the session.
    let (announce, announced) = watch::channel(work.generation());
    let mut plans = AbortOnDrop(tokio::spawn(fetch_plans(
        work.clone(),
        identity.node_id,
        announced,
    )));
    let renew = tokio::time::sleep(renewal_delay(&identity.cert_pem));
    tokio::pin!(renew);
    // On trial, a new build passes once it has held the channel a while since the controller
    // welcomed it: a controller that refused what it said would have closed the channel.
    let mut trial = std::env::var_os(crate::builds::TRIAL_ENV);
    let mut trial_check = tokio::time::interval(Duration::from_secs(1));
    let mut welcomed: Option<tokio::time::Instant> = None;
    let mut renewing: Option<AbortOnDrop<Result<Identity>>> = None;
    loop {
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let n = read.context("reading the channel")?;
                if n == 0 {
                    anyhow::bail!("the controller closed the channel");
                }
                (heard, asked) = (tokio::time::Instant::now(), false);
                decoder.push(&chunk[..n]);
                while let Some(message) = decoder.next_message::<ControllerMessage>().context("the controller's frame")? {
                    match message {
                        ControllerMessage::Welcome { node_id, state, heartbeat_seconds, plan_generation } => {
                            tracing::info!(%node_id, state = state.as_str(), "connected to the controller");
                            welcomed.get_or_insert_with(tokio::time::Instant::now);
                            heartbeat = tokio::time::interval(Duration::from_secs(u64::from(heartbeat_seconds.max(1))));
                            heartbeat.tick().await;
                            if let Some(generation) = plan_generation {
                                announce.send_if_modified(|newest| newer(newest, generation));
                            }
                        }
                        ControllerMessage::State { state } => tracing::info!(state = state.as_str(), "node state changed"),
                        ControllerMessage::PlanAvailable { generation } => {
                            announce.send_if_modified(|newest| newer(newest, generation));
                        }
                        ControllerMessage::Instruction { id, instruction } if matches!(*instruction, Instruction::Ping { .. }) => {
                            to_controller.send(Bytes::from(encode(&AgentMessage::Done { instruction: id }))).await?;
                        }
                        ControllerMessage::Instruction { id, instruction } => {
                            // Preflight and etcd work take a while: answer from a task.
                            let (work, to_controller) = (work.clone(), to_controller.clone());
                            tokio::spawn(async move {
                                let outcome = work.instruction(*instruction).await;
                                let reply = AgentMessage::Reply { instruction: id, outcome };
                                let _ = to_controller.send(Bytes::from(encode(&reply))).await;
                                if work.upgrade_staged() {
                                    // Time for the answer to leave; the services run on.
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    std::process::exit(crate::builds::EXIT_UPGRADE);
                                }
                            });
                        }
                        ControllerMessage::OpenTunnel { stream, endpoint } => {
                            let (work, to_controller) = (work.clone(), to_controller.clone());
                            tokio::spawn(async move {
                                if let Err(reason) = work.open_tunnel(stream, &endpoint).await {
                                    tracing::warn!(stream, endpoint, %reason, "refused a tunnel");
                                    let refused = AgentMessage::TunnelRefused { stream, reason };
                                    let _ = to_controller.send(Bytes::from(encode(&refused))).await;
                                }
                            });
                        }
                        ControllerMessage::Deauthorized => return Ok(Ended::Deauthorized),
                        ControllerMessage::KeepAlive => {}
                    }
                }
            }
            changed = reports.changed() => {
                if changed.is_ok() {
                    reports.mark_unchanged();
                    let report = AgentMessage::Plan(work.current_report());
                    to_controller.send(Bytes::from(encode(&report))).await?;
                }
            }
            _ = heartbeat.tick() => {
                let now = host::facts(config.node_name.as_deref(), local_ip);
                let changed = (now != facts).then(|| now.clone());
                facts = now;
                let sample = HostMetrics { etcd: work.etcd_metrics(), ..metrics.sample(state.path()) };
                let message = AgentMessage::Heartbeat { facts: changed, metrics: sample };
                to_controller.send(Bytes::from(encode(&message))).await?;
            }
            _ = idle_check.tick() => link.close_idle(),
            _ = trial_check.tick(), if trial.is_some() => {
                if welcomed.is_some_and(|at| at.elapsed() >= crate::builds::TRIAL_HOLD) {
                    let passed = trial.take().expect("on trial");
                    match std::fs::write(&passed, b"") {
                        Ok(()) => tracing::info!("this build held the channel: its trial passed"),
                        Err(e) => tracing::error!(error = %e, "cannot tell the supervisor that this build works"),
                    }
                }
            }
            _ = quiet_check.tick() => {
                let quiet = heard.elapsed();
                if quiet >= KEEPALIVE_AFTER + KEEPALIVE_TIMEOUT {
                    anyhow::bail!("the controller gave no sign of life for {} s", quiet.as_secs());
                }
                if quiet >= KEEPALIVE_AFTER && !asked {
                    to_controller.send(Bytes::from(encode(&AgentMessage::KeepAlive))).await?;
                    asked = true;
                }
            }
            fetched = &mut plans.0 => {
                return Err(match fetched {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the plan fetcher stopped"),
                    Err(e) => anyhow::anyhow!("the plan fetcher failed: {e}"),
                });
            }
            () = &mut renew, if renewing.is_none() => {
                let task = renew_certificate(link.clone(), state.clone(), identity.clone());
                renewing = Some(AbortOnDrop(tokio::spawn(task)));
            }
            Some(renewed) = wait(&mut renewing) => {
                *identity = renewed?;
                renew.as_mut().reset(tokio::time::Instant::now() + renewal_delay(&identity.cert_pem));
            }
        }
    }
}

/// Whether `generation` is newer than the newest announced, which it then becomes.
fn newer(newest: &mut u64, generation: u64) -> bool {
    let newer = generation > *newest;
    if newer {
        *newest = generation;
    }
    newer
}

/// Fetches each plan generation announced that is newer than the one held, until the session
/// ends (the announcer is dropped) or a fetch fails. A plan the host could not keep is fetched
/// again, every [`PLAN_RETRY`] at most, until it is kept or a newer one is announced.
async fn fetch_plans(
    work: Arc<Work>,
    node: qb_api::NodeId,
    mut announced: watch::Receiver<u64>,
) -> Result<()> {
    while announced.changed().await.is_ok() {
        let mut pause = Duration::from_secs(1);
        loop {
            let generation = *announced.borrow_and_update();
            if generation <= work.generation() || work.fetch_plan(node, generation).await? {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = announced.changed() => if changed.is_err() { return Ok(()) },
            }
            pause = (pause * 2).min(PLAN_RETRY);
        }
    }
    Ok(())
}

/// The renewal's outcome once it is done, and then no longer running; never while none runs.
async fn wait(renewing: &mut Option<AbortOnDrop<Result<Identity>>>) -> Option<Result<Identity>> {
    let task = renewing.as_mut()?;
    let done = (&mut task.0).await;
    *renewing = None;
    Some(done.unwrap_or_else(|e| Err(anyhow::anyhow!("certificate renewal failed: {e}"))))
}

/// Gets a new certificate for a new key and saves both; new connections present them from
/// now on.
async fn renew_certificate(
    link: Arc<Link>,
    state: StateDir,
    mut identity: Identity,
) -> Result<Identity> {
    let key = qb_pki::new_key_and_csr(&identity.node_name)?;
    let answer = post_json(
        &mut link.sender().await?.0,
        &format!("{}{RENEW_PATH}", link.base()),
        &RenewRequest {
            csr_pem: key.csr_pem.clone(),
        },
    )
    .await?;
    let response: RenewResponse = match answer {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err((status, problem)) => {
            anyhow::bail!("certificate renewal refused ({status}): {}", problem.detail)
        }
    };
    identity.cert_pem = response.certificate_pem;
    identity.key_pem = key.key_pem.expose().to_owned();
    state.save(&identity)?;
    link.renewed(client_identity(&identity.cert_pem, &identity.key_pem)?);
    tracing::info!("renewed the node certificate");
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_70_to_90_percent_of_the_remaining_lifetime() {
        let ca = qb_pki::CertificateAuthority::generate("test", time::Duration::days(1)).unwrap();
        let key = qb_pki::new_key_and_csr("h").unwrap();
        let identity = qb_pki::NodeIdentity {
            tenant: qb_api::TenantId::new(),
            node: qb_api::NodeId::new(),
        };
        let cert = ca
            .sign_node_csr(&key.csr_pem, &identity, time::Duration::seconds(1000))
            .unwrap();
        for _ in 0..20 {
            let delay = renewal_delay(&cert.cert_pem).as_secs_f64();
            // Certificates are backdated for clock skew; that must not pull renewal forward.
            assert!((690.0..=900.0).contains(&delay), "{delay}");
        }
        let short = ca
            .sign_node_csr(&key.csr_pem, &identity, time::Duration::seconds(1))
            .unwrap();
        assert_eq!(
            renewal_delay(&short.cert_pem),
            Duration::from_secs(5),
            "never a renewal storm"
        );
        assert_eq!(renewal_delay("garbage"), Duration::from_secs(3600));
    }

    #[test]
    fn backoff_grows_with_full_jitter_up_to_the_cap() {
        let mut b = Backoff { attempt: 0 };
        let delays: Vec<Duration> = (0..40).map(|_| b.next()).collect();
        assert!(delays.iter().all(|d| *d <= Backoff::CAP));
        assert!(delays[0] <= Backoff::BASE);
        // Late delays are spread over [0, cap], not pinned to it.
        let late: Vec<_> = delays[20..].to_vec();
        assert!(
            late.iter().any(|d| *d < Backoff::CAP / 2)
                && late.iter().any(|d| *d > Backoff::CAP / 2)
        );
        b.reset();
        assert!(b.next() <= Backoff::BASE);
    }
}
