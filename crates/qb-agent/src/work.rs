//! The node's work, apart from the channel that brings it: the current plan (verified, kept in
//! the state directory so a restarted agent finishes it), the applier converging on it in the
//! background whether or not the controller is reachable, and the instructions that return
//! answers (preflight, etcd membership, Kubernetes node operations).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::client::conn::http2::SendRequest;
use qb_agent_proto::etcd::{EtcdOp, EtcdRequest};
use qb_agent_proto::plan::{ARTIFACTS_PATH, PLAN_PATH, Plan, SignedPlan};
use qb_agent_proto::{AgentBuild, Instruction, Outcome, SignedAgentBuild};
use qb_api::{NodeId, PlanReport, PlanState, PortSpec, StepReport, StepState};
use qb_pki::Pin;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::apply::{Applier, ApplierDirs, ArtifactSource};
use crate::builds;
use crate::connect::{Body, InUse, Link, controller_request};
use crate::preflight::Preflight;
use crate::supervise::{Supervisor, SupervisorDirs};

/// How many times a broken-off download of an agent build is taken up again.
const DOWNLOAD_TRIES: u64 = 5;
/// The signed plan the agent accepted last, in the state directory.
const PLAN_FILE: &str = "plan.json";
/// Where an etcd snapshot waits for its upload, in the state directory.
const SNAPSHOTS_DIR: &str = "snapshots";
/// How often an applied plan's routes are checked, and put back when they changed.
const ROUTE_CHECK: Duration = Duration::from_secs(10);
/// How often an applied plan's tasks with probes are checked, and run again when undone: one
/// `ctr images ls` per image archive.
const TASK_CHECK: Duration = Duration::from_secs(15);

pub struct Work {
    state_dir: PathBuf,
    /// The services' logs.
    logs: PathBuf,
    pins: Vec<Pin>,
    supervisor: Arc<Supervisor>,
    applier: Applier,
    preflight: Preflight,
    /// The accepted plan; the applier follows it.
    plan: watch::Sender<Option<Arc<Plan>>>,
    /// The local etcd member's latest metrics, while the plan runs etcd.
    etcd: crate::etcd_metrics::Latest,
    /// Progress of the accepted plan, published by the applier; it ticks whenever the report
    /// to send ([`Work::report`]) may have changed.
    pub report: watch::Sender<PlanReport>,
    /// The last plan not taken (refused, or not kept: the disk full), while it is newer than
    /// the accepted one: the applier's progress on the accepted plan must not hide it.
    not_taken: Mutex<Option<PlanReport>>,
    /// HTTP/2 to the controller, for plans, artifacts and tunnels, while the channel is up.
    link: Mutex<Option<Arc<Link>>>,
    /// The new build of the agent that is staged: the agent restarts into it once it answered.
    staged: Mutex<Option<qb_agent_proto::Sha256Hex>>,
    /// One build staged at a time (the controller asks again when an answer is slow).
    staging: tokio::sync::Mutex<()>,
    /// One etcd snapshot at a time: they share a directory, and the member's disk.
    snapshotting: tokio::sync::Mutex<()>,
}

impl Work {
    /// Opens the work of this host: re-attaches to the services a previous agent process
    /// started, and picks up the plan it had accepted (verified again).
    pub fn open(state_dir: &Path, log_dir: &Path, pins: Vec<Pin>) -> Result<Arc<Self>> {
        let supervisor = Supervisor::new(SupervisorDirs {
            records: state_dir.join("services"),
            logs: log_dir.to_owned(),
        })
        .context("starting the service supervisor")?;
        let adopted = supervisor.adopt().context("adopting running services")?;
        if !adopted.is_empty() {
            tracing::info!(services = ?adopted, "re-attached to running services");
        }
        let applier = Applier::new(
            ApplierDirs {
                state: state_dir.join("applier"),
                cache: state_dir.join("artifacts"),
            },
            supervisor.clone(),
        );
        let work = Arc::new(Self {
            state_dir: state_dir.to_owned(),
            logs: log_dir.to_owned(),
            pins,
            supervisor,
            applier,
            preflight: Preflight::new(),
            plan: watch::Sender::new(None),
            etcd: crate::etcd_metrics::Latest::default(),
            report: watch::Sender::new(PlanReport::default()),
            not_taken: Mutex::new(None),
            link: Mutex::new(None),
            staged: Mutex::new(None),
            staging: tokio::sync::Mutex::new(()),
            snapshotting: tokio::sync::Mutex::new(()),
        });
        let saved = state_dir.join(PLAN_FILE);
        if let Ok(text) = std::fs::read_to_string(&saved) {
            match serde_json::from_str::<SignedPlan>(&text)
                .map_err(|e| e.to_string())
                .and_then(|signed| work.verify(&signed, None))
            {
                Ok(plan) => {
                    tracing::info!(generation = plan.generation, "resuming the saved plan");
                    work.plan.send_replace(Some(Arc::new(plan)));
                }
                Err(e) => {
                    tracing::error!(error = %e, file = %saved.display(), "ignoring the saved plan")
                }
            }
        }
        Ok(work)
    }

    /// What the local etcd member's metrics said lately, if the plan runs etcd.
    pub fn etcd_metrics(&self) -> Option<qb_agent_proto::EtcdMetrics> {
        self.etcd.get()
    }

    /// The generation of the accepted plan (0 without one).
    pub fn generation(&self) -> u64 {
        self.plan.borrow().as_ref().map_or(0, |p| p.generation)
    }

    /// Opens a tunnel the controller asked for, to an endpoint the accepted plan allows, and
    /// carries it in the background; a refusal is returned for the controller.
    pub async fn open_tunnel(&self, stream: u64, endpoint: &str) -> Result<(), String> {
        let address = crate::tunnel::allowed(self.plan.borrow().as_deref(), endpoint)?;
        let tcp = crate::tunnel::dial(address).await?;
        let (base, sender, in_use) = self.sender().await.map_err(|e| format!("{e:#}"))?;
        tokio::spawn(async move {
            let _in_use = in_use;
            if let Err(e) = crate::tunnel::carry(sender, &base, stream, tcp).await {
                tracing::debug!(stream, error = %format!("{e:#}"), "tunnel ended");
            }
        });
        Ok(())
    }

    /// The way to the controller's requests, while the channel is up.
    pub fn connected(&self, link: Option<Arc<Link>>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// The controller's base URL and a sender to it, on an open connection or a new one; the
    /// connection is kept while the mark lives.
    async fn sender(&self) -> Result<(String, SendRequest<Body>, InUse)> {
        let link = self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("not connected to the controller")?;
        let (sender, in_use) = link.sender().await?;
        Ok((link.base().to_owned(), sender, in_use))
    }

    /// Checks a signed plan: signature by a plan signer of a pinned CA over the exact text,
    /// meant for this node (when known), not older than the accepted one.
    fn verify(&self, signed: &SignedPlan, node: Option<NodeId>) -> Result<Plan, String> {
        qb_pki::verify_plan_signature(
            signed.plan.as_bytes(),
            &signed.signature,
            &signed.signer_pem,
            &self.pins,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| format!("plan refused: {e}"))?;
        let plan: Plan = serde_json::from_str(&signed.plan)
            .map_err(|e| format!("plan refused: unreadable: {e}"))?;
        if let Some(node) = node
            && plan.node_id != node
        {
            return Err(format!(
                "plan refused: it is for node {}, not this one",
                plan.node_id
            ));
        }
        let current = self.generation();
        if plan.generation < current {
            return Err(format!(
                "plan refused: generation {} is older than the accepted {current}",
                plan.generation
            ));
        }
        Ok(plan)
    }

    /// Fetches the node's plan from the controller and accepts it if it verifies; a refused
    /// plan is reported and never acted on. `false` when a plan that verified could not be
    /// kept (the host's disk full, say): that is reported too, and the caller tries again.
    /// An error is the controller's: it could not be asked or did not answer well.
    pub async fn fetch_plan(&self, node: NodeId, announced: u64) -> Result<bool> {
        let (base, mut sender, _in_use) = self.sender().await?;
        let request = controller_request(hyper::Method::GET, &format!("{base}{PLAN_PATH}"))
            .body(Body::new(Empty::new().map_err(|never| match never {})))?;
        let response = sender
            .send_request(request)
            .await
            .context("fetching the plan")?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("fetching the plan: the controller answered {status}");
        }
        let signed: Result<SignedPlan, String> =
            serde_json::from_slice(&bytes).map_err(|e| format!("plan refused: unreadable: {e}"));
        match signed.and_then(|s| self.verify(&s, Some(node)).map(|p| (s, p))) {
            Ok((signed, plan)) => {
                if plan.generation == self.generation() {
                    return Ok(true);
                }
                let text = serde_json::to_string(&signed)?;
                let file = self.state_dir.join(PLAN_FILE);
                if let Err(e) = crate::state::write_private(&file, text.as_bytes()) {
                    let reason = format!("plan not saved in {}: {e:#}", file.display());
                    tracing::error!(generation = plan.generation, %reason, "could not keep a plan");
                    self.not_taken(announced, PlanState::Failed, "save", reason);
                    return Ok(false);
                }
                crate::crash::point("plan.kept");
                tracing::info!(generation = plan.generation, "accepted a new plan");
                *self.not_taken.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.plan.send_replace(Some(Arc::new(plan)));
            }
            Err(reason) => {
                tracing::error!(generation = announced, %reason, "refused a plan");
                self.not_taken(announced, PlanState::Refused, "verify", reason);
            }
        }
        Ok(true)
    }

    /// Reports plan `generation` as not taken: `state` and the `step` that failed, and why.
    fn not_taken(&self, generation: u64, state: PlanState, step: &str, reason: String) {
        *self.not_taken.lock().unwrap_or_else(|p| p.into_inner()) = Some(PlanReport {
            generation,
            state,
            steps: vec![StepReport {
                name: step.to_owned(),
                state: StepState::Failed,
                message: Some(reason),
            }],
            services: Vec::new(),
        });
        self.report.send_modify(|_| {});
    }

    /// What to tell the controller now: why a newer plan was not taken, with the services as
    /// they run, or else the progress on the accepted plan.
    pub fn current_report(&self) -> PlanReport {
        let progress = self.report.borrow().clone();
        match self
            .not_taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(not_taken) if not_taken.generation > progress.generation => PlanReport {
                services: progress.services,
                ..not_taken.clone()
            },
            _ => progress,
        }
    }

    /// Converges on the accepted plan for as long as the agent runs: applies it, retries
    /// failures with backoff, starts over when a new plan arrives, and keeps service health in
    /// the report fresh.
    pub async fn run(self: Arc<Self>) {
        // Aborted with this task.
        let _etcd = AbortOnDrop(tokio::spawn(crate::etcd_metrics::watch(
            self.plan.subscribe(),
            self.etcd.clone(),
        )));
        let mut plans = self.plan.subscribe();
        let mut changes = self.supervisor.changes();
        let mut failures = 0u32;
        loop {
            let plan = plans.borrow_and_update().clone();
            let Some(plan) = plan else {
                if plans.changed().await.is_err() {
                    return;
                }
                continue;
            };
            // The preflight's listeners would hold the ports of the services (for seconds).
            self.preflight.close_for(plan.generation).await;
            let source = Downloads { work: &self };
            let outcome = tokio::select! {
                result = self.applier.apply(&plan, &source, &self.report) => Some(result),
                _ = plans.changed() => None,
            };
            match outcome {
                // A newer plan arrived: start over with it.
                None => continue,
                Some(Ok(())) => {
                    failures = 0;
                    // Applied: keep the report's service health fresh until the plan changes,
                    // put back the plan's routes when someone deletes or changes them, and
                    // redo tasks whose work was undone (images the kubelet deleted).
                    let mut routes = tokio::time::interval(ROUTE_CHECK);
                    routes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    routes.tick().await;
                    let mut tasks = tokio::time::interval(TASK_CHECK);
                    tasks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tasks.tick().await;
                    loop {
                        tokio::select! {
                            changed = plans.changed() => {
                                if changed.is_err() { return; }
                                break;
                            }
                            _ = changes.changed() => self.applier.refresh_services(&self.report),
                            _ = routes.tick(), if plan.cluster_id.is_some() => {
                                if let Err(e) = crate::routes::converge(&plan.routes).await {
                                    tracing::warn!(error = %format!("{e:#}"), "could not repair the plan's routes");
                                }
                            }
                            _ = tasks.tick(), if plan.cluster_id.is_some() => {
                                // A new plan does not wait for the redo.
                                tokio::select! {
                                    redone = self.applier.redo_undone_tasks(&plan) => {
                                        if !redone.is_empty() {
                                            tracing::info!(tasks = ?redone, "undone tasks run again");
                                        }
                                    }
                                    changed = plans.changed() => {
                                        if changed.is_err() { return; }
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    failures += 1;
                    let delay =
                        Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "plan not applied");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = plans.changed() => {}
                    }
                }
            }
        }
    }

    /// Carries out an instruction that answers with an outcome.
    pub async fn instruction(&self, instruction: Instruction) -> Outcome {
        match instruction {
            Instruction::Ping { .. } => Outcome::Done,
            Instruction::Preflight(check) => Outcome::Preflight {
                report: self.preflight.check(&check, &self.held_ports()).await,
            },
            Instruction::Probe(probe) => Outcome::Probes {
                results: self.preflight.probe(&probe).await,
            },
            Instruction::Etcd(
                request @ EtcdRequest {
                    op: EtcdOp::Snapshot { snapshot },
                    ..
                },
            ) => self.etcd_snapshot(&request, snapshot).await,
            Instruction::Etcd(request) => match crate::etcd::run(&request).await {
                Ok(members) => Outcome::EtcdMembers { members },
                Err(e) => Outcome::Failed {
                    error: qb_api::error_chain(&e),
                },
            },
            Instruction::UpgradeAgent(offer) => match self.stage_build(&offer).await {
                Ok(()) => Outcome::Done,
                Err(error) => {
                    tracing::warn!(error, "did not take the agent build the controller offered");
                    Outcome::Failed { error }
                }
            },
            Instruction::Kube(request) => match crate::kube::run(&request).await {
                Ok(nodes) => Outcome::KubeNodes { nodes },
                Err(e) => Outcome::Failed {
                    error: qb_api::error_chain(&e),
                },
            },
            Instruction::Log(request) => {
                let services: Vec<String> = self
                    .plan
                    .borrow()
                    .as_ref()
                    .map(|p| crate::apply::service_names(p))
                    .unwrap_or_default();
                let dir = self.logs.clone();
                let read = tokio::task::spawn_blocking(move || {
                    crate::logs::read(&dir, &services, &request)
                })
                .await;
                match read {
                    Ok(Ok(piece)) => Outcome::Log { piece },
                    Ok(Err(error)) => Outcome::Failed { error },
                    Err(e) => Outcome::Failed {
                        error: format!("reading the log: {e}"),
                    },
                }
            }
        }
    }

    /// Takes a snapshot of the local etcd member and uploads it to the controller as
    /// `snapshot`; its size, hash and revision, or why not.
    #[tracing::instrument(skip_all, fields(snapshot = snapshot))]
    async fn etcd_snapshot(&self, request: &EtcdRequest, snapshot: u64) -> Outcome {
        let _one_at_a_time = self.snapshotting.lock().await;
        let started = Instant::now();
        tracing::info!(endpoint = %request.endpoint, "taking an etcd snapshot");
        let dir = self.state_dir.join(SNAPSHOTS_DIR);
        let sender = || self.sender();
        match crate::etcd_snapshot::run(request, &dir, snapshot, sender).await {
            Ok(taken) => {
                tracing::info!(
                    size = taken.size,
                    revision = taken.revision,
                    elapsed = ?started.elapsed(),
                    "etcd snapshot uploaded"
                );
                Outcome::EtcdSnapshot(taken)
            }
            Err(e) => {
                let error = qb_api::error_chain(&e);
                tracing::warn!(%error, elapsed = ?started.elapsed(), "etcd snapshot failed");
                Outcome::Failed { error }
            }
        }
    }

    /// Whether a new build is staged, the agent to restart into it (with
    /// [`builds::EXIT_UPGRADE`]) once it answered the controller.
    pub fn upgrade_staged(&self) -> bool {
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stages the build of the agent the controller offers: signature, download, hash, a run
    /// with `--version` to see it runs on this host, then the request to its supervisor. Does
    /// nothing when this build runs already.
    async fn stage_build(&self, offer: &SignedAgentBuild) -> Result<(), String> {
        qb_pki::verify_plan_signature(
            offer.build.as_bytes(),
            &offer.signature,
            &offer.signer_pem,
            &self.pins,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| format!("agent build refused: {e}"))?;
        let build: AgentBuild = serde_json::from_str(&offer.build)
            .map_err(|e| format!("agent build refused: unreadable: {e}"))?;
        let _staging = self.staging.lock().await;
        if builds::own_build() == Some(&build.sha256) {
            return Ok(());
        }
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match staged {
            Some(staged) if staged == build.sha256 => return Ok(()),
            Some(staged) => {
                return Err(format!(
                    "agent build {staged} is staged already; this agent restarts into it"
                ));
            }
            None => {}
        }
        let store = builds::BuildStore::new(&self.state_dir);
        let binary = store.binary(&build.sha256);
        let partial = binary.with_extension("partial");
        let dir = binary
            .parent()
            .expect("a build's binary is in its directory");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A download that breaks off (the controller restarting) goes on where it stopped.
        let mut attempt = 0;
        loop {
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            let from = if have < build.size { have } else { 0 };
            match (Downloads { work: self })
                .fetch(build.sha256.as_str(), build.size, from, &partial)
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < DOWNLOAD_TRIES => {
                    attempt += 1;
                    tracing::info!(error = %format!("{e:#}"), attempt, "the agent build's download broke off; going on");
                    tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
                }
                Err(e) => {
                    return Err(format!("downloading agent build {}: {e:#}", build.sha256));
                }
            }
        }
        let hashed = partial.clone();
        let sha256 = tokio::task::spawn_blocking(move || builds::sha256_of(&hashed))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("hashing {}: {e}", partial.display()))?;
        if sha256 != build.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "the agent build downloaded has SHA-256 {sha256}, not {}",
                build.sha256
            ));
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
            .and_then(|()| std::fs::rename(&partial, &binary))
            .map_err(|e| format!("installing {}: {e}", binary.display()))?;
        let runs = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&binary)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        match runs {
            Ok(Ok(output)) if output.status.success() => {}
            outcome => {
                let _ = std::fs::remove_dir_all(dir);
                let why = match outcome {
                    Ok(Ok(output)) => format!(
                        "{}: {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 30 s".to_owned(),
                };
                return Err(format!(
                    "agent build {} does not run on this host: {why}",
                    build.sha256
                ));
            }
        }
        store
            .request(&builds::UpgradeRequest {
                build: build.sha256.clone(),
                trial_seconds: build.trial_seconds,
            })
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(build = %build.sha256, version = build.version, "staged a new agent build; restarting into it");
        *self.staged.lock().unwrap_or_else(|p| p.into_inner()) = Some(build.sha256);
        Ok(())
    }

    /// Ports the services of the accepted plan listen on, while they run.
    fn held_ports(&self) -> Vec<PortSpec> {
        let running: Vec<String> = self
            .supervisor
            .reports()
            .into_iter()
            .filter(|s| s.running)
            .map(|s| s.name)
            .collect();
        self.plan
            .borrow()
            .as_ref()
            .map(|p| {
                p.services
                    .iter()
                    .filter(|s| running.iter().any(|r| s.name == *r))
                    .flat_map(|s| s.ports.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Artifacts come from the controller over the agent's authenticated connection.
struct Downloads<'a> {
    work: &'a Work,
}

impl ArtifactSource for Downloads<'_> {
    async fn fetch(&self, sha256: &str, size: u64, from: u64, into: &Path) -> anyhow::Result<()> {
        let (base, mut sender, _in_use) = self.work.sender().await?;
        let mut request = controller_request(
            hyper::Method::GET,
            &format!("{base}{ARTIFACTS_PATH}/{sha256}"),
        );
        if from > 0 {
            request = request.header(hyper::header::RANGE, format!("bytes={from}-"));
        }
        let request = request.body(Body::new(Empty::new().map_err(|never| match never {})))?;
        let response = sender.send_request(request).await?;
        let resumed = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(hyper::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if range != format!("bytes {from}-{}/{size}", size.saturating_sub(1)) {
                    // Start over next time rather than append the wrong bytes again.
                    tokio::fs::remove_file(into).await?;
                    anyhow::bail!("the controller sent another range ({range:?}) than asked for");
                }
                true
            }
            status if status.is_success() => false,
            status => anyhow::bail!("the controller answered {status}"),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(into)
            .await
            .with_context(|| format!("opening {}", into.display()))?;
        let mut body = response.into_body();
        let mut result = Ok(());
        let mut written = if resumed { from } else { 0 };
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        written += data.len() as u64;
                        if written > size {
                            // Never more than announced on the disk; start over next time.
                            drop(file);
                            tokio::fs::remove_file(into).await?;
                            anyhow::bail!(
                                "the controller sent more than the {size} bytes announced"
                            );
                        }
                        file.write_all(&data).await?;
                    }
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        // What came is kept for the next attempt, even when the transfer broke off.
        file.sync_all().await?;
        result
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
