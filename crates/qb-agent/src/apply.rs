//! Converging a node on its plan: artifacts, files, then the services in order, each one's
//! probe gating the next.
//!
//! The applier is level-triggered and idempotent: it compares the plan with what is on disk and
//! what runs, and changes only the difference. Applying the same plan twice rewrites no file and
//! restarts no service; a changed file or artifact restarts only the services that list it in
//! their `inputs` (through the service's fingerprint).
//!
//! What earlier plans installed is remembered in `<state>/installed.json` (files, artifacts with
//! the size, mtime and inode they had when verified, every state directory ever used, services
//! and their fingerprints), written atomically before and after each change. Whatever a crash
//! interrupts, applying the same plan again finishes it, and a later plan (or a wipe) removes
//! exactly what is no longer wanted. Artifacts are downloaded once into `<cache>/<sha256>`,
//! verified, and copied into place.
//!
//! Steps, as reported: `service:<name>` for each service no longer in the plan (it is
//! stopped), `artifacts`, `files`, `routes`, `cgroups`, then `service:<name>` per service of the
//! plan (`task:<name>` for a task, which runs to completion once per definition); or `wipe`
//! alone for a plan without a cluster.
//!
//! One long file: every step writes the same ledger under the same crash-safety rule (record
//! before and after each change), and the wipe undoes exactly what the steps recorded; split
//! apart, that rule would be spread over files that must agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, Permissions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qb_agent_proto::plan::{
    Artifact, HostPath, Owner, Plan, PlanFile, PlanReport, PlanState, Probe, RestartPolicy,
    Service, StepReport, StepState,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::supervise::{Change, SuperviseError, Supervisor};
use qb_api::error_chain;

/// How long a service may take to pass its probe before the step fails.
const READINESS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a task's probe may take (`ctr images ls` on a busy host).
const TASK_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where artifacts come from: the controller, in the agent. Implemented by the caller.
pub trait ArtifactSource {
    /// Writes the artifact with this SHA-256 (lowercase hex) and size into the file `into`,
    /// which holds its first `from` bytes (what an earlier attempt got): appends the rest, or
    /// rewrites the file whole when the source cannot send only the rest. The applier verifies
    /// what arrived.
    fn fetch(
        &self,
        sha256: &str,
        size: u64,
        from: u64,
        into: &Path,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The applier's own directories.
#[derive(Clone, Debug)]
pub struct ApplierDirs {
    /// Holds `installed.json`.
    pub state: PathBuf,
    /// Verified artifacts by SHA-256.
    pub cache: PathBuf,
}

/// Why a plan was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid plan: {0}")]
    Invalid(String),
    #[error("plan generation {plan} is older than the applied generation {applied}")]
    Stale { plan: u64, applied: u64 },
    #[error("the applier's state in {path}")]
    State {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("step {step} failed")]
    Step {
        step: String,
        #[source]
        source: StepError,
    },
}

/// Why a step failed; its message (with its sources) goes into the step's report.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("artifact {name}: checksum mismatch: expected {expected}, got {got}")]
    Checksum {
        name: String,
        expected: String,
        got: String,
    },
    #[error("artifact {name}: size mismatch: expected {expected} bytes, got {got}")]
    Size {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("artifact {name}: download failed")]
    Fetch {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    #[error(transparent)]
    Routes(#[from] crate::routes::RouteError),
    #[error(transparent)]
    PodNetwork(#[from] crate::pod_network::TeardownError),
    #[error(transparent)]
    Cgroups(#[from] qb_host::cgroups::CgroupError),
    #[error(transparent)]
    Balancer(#[from] crate::balancer::BalancerError),
    /// A wipe looked again and found some of the cluster's state still there.
    #[error("the wipe left {}: {}", .0.len(), summarize_leftovers(.0))]
    Leftovers(Vec<String>),
}

/// The first few leftovers, and how many more.
fn summarize_leftovers(left: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = left
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if left.len() > SHOWN {
        text.push_str(&format!(" and {} more", left.len() - SHOWN));
    }
    text
}

/// Converges the node on plans, one at a time.
pub struct Applier {
    dirs: ApplierDirs,
    supervisor: Arc<Supervisor>,
    /// The program of the node's API balancer, a service of its own: this agent's binary.
    balancer_program: Option<PathBuf>,
    readiness_timeout: Duration,
    /// Whether a wipe takes down the pod network of the host (its bridge, rules, namespaces).
    pod_network: bool,
    /// One apply at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Applier {
    /// An applier keeping its state in `dirs` and running services through `supervisor`
    /// (which should have adopted the services of a previous agent process first).
    pub fn new(dirs: ApplierDirs, supervisor: Arc<Supervisor>) -> Self {
        Self {
            dirs,
            supervisor,
            balancer_program: own_program(),
            readiness_timeout: READINESS_TIMEOUT,
            pod_network: true,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs the API balancer as `program api-balancer --settings FILE` (the agent's own
    /// binary unless said otherwise).
    pub fn with_balancer_program(mut self, program: PathBuf) -> Self {
        self.balancer_program = Some(program);
        self
    }

    /// How long each service may take to become healthy (120 s unless set).
    #[cfg(test)]
    pub fn with_readiness_timeout(mut self, timeout: Duration) -> Self {
        self.readiness_timeout = timeout;
        self
    }

    /// An applier whose wipes leave the host's network alone: unit tests run on the machine
    /// itself, beside lab hosts whose private directories are mounted over the machine's.
    #[cfg(test)]
    pub fn without_pod_network(mut self) -> Self {
        self.pod_network = false;
        self
    }

    /// Converges the node on `plan` (already verified), publishing progress on `report`.
    /// `Ok` once every step is done and every service passed its probe; on `Err` the caller
    /// retries later (with backoff): the steps already done are not redone.
    #[tracing::instrument(skip_all, fields(generation = plan.generation))]
    pub async fn apply(
        &self,
        plan: &Plan,
        source: &impl ArtifactSource,
        report: &watch::Sender<PlanReport>,
    ) -> Result<(), ApplyError> {
        let _busy = self.busy.lock().await;
        let mut progress = Progress::new(plan.generation, &self.supervisor, report);
        let mut ledger = match validate(plan).and_then(|()| self.open_ledger(plan)) {
            Ok(ledger) => ledger,
            Err(e) => {
                progress.reject(&e);
                return Err(e);
            }
        };
        let run = Run {
            applier: self,
            plan,
            progress: &mut progress,
            ledger: &mut ledger,
        };
        let result = if plan.cluster_id.is_some() {
            run.converge(source).await
        } else {
            run.wipe().await
        };
        match result {
            Ok(()) => {
                ledger.installed.generation = Some(plan.generation);
                if let Err(source) = ledger.save() {
                    let e = ApplyError::State {
                        path: ledger.path.clone(),
                        source: Box::new(source),
                    };
                    progress.finish(PlanState::Failed);
                    return Err(e);
                }
                progress.finish(PlanState::Applied);
                tracing::info!("plan applied");
                Ok(())
            }
            Err(e) => {
                progress.finish(PlanState::Failed);
                tracing::warn!(error = %error_chain(&e), "plan not applied");
                Err(e)
            }
        }
    }

    /// Runs again each task of the applied `plan` whose probe finds what it did undone: the
    /// images the kubelet deleted when the disk ran short, say. Returns the tasks run again.
    pub async fn redo_undone_tasks(&self, plan: &Plan) -> Vec<String> {
        let _busy = self.busy.lock().await;
        let mut redone = Vec::new();
        for task in &plan.services {
            if task.restart != RestartPolicy::Never || !undone(task).await {
                continue;
            }
            match self.supervisor.run_task(task, self.readiness_timeout).await {
                Ok(()) => redone.push(task.name.to_string()),
                Err(e) => {
                    tracing::warn!(task = %task.name, error = %error_chain(&e), "the task failed again")
                }
            }
        }
        redone
    }

    /// Refreshes the services in the last published report, e.g. when
    /// [`Supervisor::changes`] ticks between applies.
    pub fn refresh_services(&self, report: &watch::Sender<PlanReport>) {
        let services = self.supervisor.reports();
        report.send_if_modified(|r| {
            let changed = r.services != services;
            r.services = services;
            changed
        });
    }

    fn open_ledger(&self, plan: &Plan) -> Result<Ledger, ApplyError> {
        let state_error = |path: &Path, source: std::io::Error| ApplyError::State {
            path: path.to_owned(),
            source: Box::new(source),
        };
        for dir in [&self.dirs.state, &self.dirs.cache] {
            std::fs::create_dir_all(dir).map_err(|e| state_error(dir, e))?;
        }
        let ledger = Ledger::load(self.dirs.state.join("installed.json"))?;
        match ledger.installed.generation {
            Some(applied) if plan.generation < applied => Err(ApplyError::Stale {
                plan: plan.generation,
                applied,
            }),
            _ => Ok(ledger),
        }
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.dirs.cache.join(sha256)
    }
}

/// One application of one plan.
struct Run<'a, 'r> {
    applier: &'a Applier,
    plan: &'a Plan,
    progress: &'a mut Progress<'r>,
    ledger: &'a mut Ledger,
}

impl Run<'_, '_> {
    fn supervisor(&self) -> &Supervisor {
        &self.applier.supervisor
    }

    /// Runs `result`'s step bookkeeping: done with its message, or failed with the error.
    fn conclude(
        &mut self,
        step: &str,
        result: Result<String, StepError>,
    ) -> Result<(), ApplyError> {
        match result {
            Ok(message) => {
                self.progress.step(step, StepState::Done, Some(message));
                Ok(())
            }
            Err(source) => {
                self.progress
                    .step(step, StepState::Failed, Some(error_chain(&source)));
                Err(ApplyError::Step {
                    step: step.to_owned(),
                    source,
                })
            }
        }
    }

    async fn converge(mut self, source: &impl ArtifactSource) -> Result<(), ApplyError> {
        // A host moved to another cluster (its wipe never came: it was unreachable when it
        // left) starts clean: nothing of the old cluster's state may leak into the new one.
        let previous = self.ledger.installed.cluster_id;
        if previous.is_some() && previous != self.plan.cluster_id {
            self.progress.plan_steps(&["wipe".to_owned()]);
            self.progress.step("wipe", StepState::Running, None);
            let result = self.wipe_everything().await;
            self.conclude("wipe", result)?;
        }
        if self.ledger.installed.cluster_id != self.plan.cluster_id {
            self.ledger.installed.cluster_id = self.plan.cluster_id;
            self.ledger.save().map_err(|source| ApplyError::State {
                path: self.ledger.path.clone(),
                source: Box::new(source),
            })?;
        }
        let wanted: BTreeSet<String> = service_names(self.plan).into_iter().collect();
        let retired: Vec<String> = self
            .known_services()
            .into_iter()
            .filter(|name| !wanted.contains(name))
            .collect();
        let mut steps: Vec<String> = retired.iter().map(|n| format!("service:{n}")).collect();
        steps
            .extend(["artifacts", "files", "routes", "cgroups", "api-balancer"].map(str::to_owned));
        steps.extend(self.plan.services.iter().map(step_name));
        self.progress.plan_steps(&steps);

        for name in retired {
            let step = format!("service:{name}");
            self.progress.step(&step, StepState::Running, None);
            let result = self.retire_service(&name).await;
            self.conclude(&step, result)?;
        }
        self.progress.step("artifacts", StepState::Running, None);
        let result = self.artifacts(source).await;
        self.conclude("artifacts", result)?;
        self.progress.step("files", StepState::Running, None);
        let result = self.files().await;
        self.conclude("files", result)?;
        self.progress.step("routes", StepState::Running, None);
        let result = crate::routes::converge(&self.plan.routes)
            .await
            .map_err(StepError::from);
        self.conclude("routes", result)?;
        self.progress.step("cgroups", StepState::Running, None);
        let result = self.cgroups().await;
        self.conclude("cgroups", result)?;
        self.progress.step("api-balancer", StepState::Running, None);
        let result = self.api_balancer().await;
        self.conclude("api-balancer", result)?;
        let plan = self.plan;
        for service in &plan.services {
            let step = step_name(service);
            self.progress.step(&step, StepState::Running, None);
            let result = if service.restart == RestartPolicy::Never {
                self.task(service).await
            } else {
                self.service(service).await
            };
            self.conclude(&step, result)?;
        }
        Ok(())
    }

    /// Services the supervisor runs or an earlier plan declared.
    fn known_services(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.supervisor().names().into_iter().collect();
        names.extend(self.ledger.installed.services.keys().cloned());
        names
    }

    async fn retire_service(&mut self, name: &str) -> Result<String, StepError> {
        self.supervisor().stop(name).await?;
        self.ledger.installed.services.remove(name);
        self.ledger.save()?;
        let dirs = self
            .ledger
            .installed
            .service_data
            .get(name)
            .cloned()
            .unwrap_or_default();
        for dir in &dirs {
            remove_tree(Path::new(dir), false)?;
        }
        if self.ledger.installed.service_data.remove(name).is_some() {
            self.ledger.save()?;
        }
        Ok(match dirs.len() {
            0 => "stopped: no longer in the plan".to_owned(),
            n => format!("stopped: no longer in the plan; its {n} data directories removed"),
        })
    }

    async fn artifacts(&mut self, source: &impl ArtifactSource) -> Result<String, StepError> {
        // The state directories are remembered before any service could write into them.
        // So are those that were mount points then (an operator's disk): a wipe empties them
        // but leaves the mount; any other mount on them is the components' and goes.
        // And, before the cluster's first service, the chains other software on the host has
        // under the names the cluster's use (`KUBE-*`, `CNI-*`): a wipe leaves those alone.
        if self.ledger.installed.state_dirs.is_empty() && self.applier.pod_network {
            self.ledger.installed.foreign_chains = crate::pod_network::cluster_chains_now().await?;
        }
        let installed = &mut self.ledger.installed;
        let dirs = installed.state_dirs.len();
        let mounts = mount_points()?;
        for dir in &self.plan.state_dirs {
            if installed.state_dirs.insert(dir.to_string()) && mounts.contains(Path::new(dir)) {
                installed.premounted_dirs.insert(dir.to_string());
            }
        }
        if installed.state_dirs.len() != dirs {
            self.ledger.save()?;
        }
        let wanted: BTreeSet<&str> = self
            .plan
            .artifacts
            .iter()
            .map(|a| a.path.as_str())
            .collect();
        let files: BTreeSet<&str> = self.plan.files.iter().map(|f| f.path.as_str()).collect();
        // A path that became a plain file of the plan is left to the `files` step.
        let removed = self
            .ledger
            .drop_stale(|i| &mut i.artifacts, &wanted, &files)?;
        let mut installed = 0;
        for artifact in &self.plan.artifacts {
            if self.artifact_in_place(artifact).await? {
                continue;
            }
            let cached = self.cached(artifact, source).await?;
            // Recorded before it is written: a crash in between leaves nothing unaccounted for.
            self.ledger.installed.artifacts.insert(
                artifact.path.to_string(),
                InstalledArtifact {
                    sha256: artifact.sha256.to_string(),
                    stamp: None,
                },
            );
            self.ledger.save()?;
            let owned = artifact.clone();
            let stamp = blocking(move || install_copy(&owned, &cached)).await?;
            crate::crash::point("apply.artifact.copied");
            if let Some(entry) = self
                .ledger
                .installed
                .artifacts
                .get_mut(artifact.path.as_str())
            {
                entry.stamp = Some(stamp);
            }
            self.ledger.save()?;
            tracing::info!(artifact = %artifact.name, path = %artifact.path, "artifact installed");
            installed += 1;
        }
        self.prune_cache()?;
        Ok(format!(
            "{installed} installed, {} unchanged, {} removed",
            self.plan.artifacts.len() - installed,
            removed
        ))
    }

    /// Whether `artifact` is already installed with its content and mode. Trusts the recorded
    /// stamp (size, mtime, inode, mode) instead of hashing the file again; hashes it only when
    /// the stamp is missing or differs (and records the stamp when the content is right).
    async fn artifact_in_place(&mut self, artifact: &Artifact) -> Result<bool, StepError> {
        let path = PathBuf::from(&artifact.path);
        let Some(stamp) = Stamp::of(&path)? else {
            return Ok(false);
        };
        let entry = self.ledger.installed.artifacts.get(artifact.path.as_str());
        if entry.is_some_and(|e| {
            e.sha256 == artifact.sha256.as_str() && e.stamp.as_ref() == Some(&stamp)
        }) {
            return Ok(stamp.mode == artifact.mode);
        }
        if stamp.size != artifact.size || stamp.mode != artifact.mode {
            return Ok(false);
        }
        let (sha256, _) = blocking(move || hash_file(&path)).await?;
        if sha256 != artifact.sha256.as_str() {
            return Ok(false);
        }
        self.ledger.installed.artifacts.insert(
            artifact.path.to_string(),
            InstalledArtifact {
                sha256,
                stamp: Some(stamp),
            },
        );
        self.ledger.save()?;
        Ok(true)
    }

    /// The verified artifact in the cache, downloaded if missing. An interrupted download is
    /// kept and resumed by the next attempt; what arrived with the wrong checksum or size is
    /// deleted, so the attempt after that starts from zero.
    async fn cached(
        &self,
        artifact: &Artifact,
        source: &impl ArtifactSource,
    ) -> Result<PathBuf, StepError> {
        let cached = self.applier.cache_path(&artifact.sha256);
        // Only verified content is ever renamed to its checksum's name.
        if std::fs::metadata(&cached).is_ok_and(|m| m.len() == artifact.size) {
            return Ok(cached);
        }
        let partial = self
            .applier
            .cache_path(&format!("{}.partial", artifact.sha256));
        let mut have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if have > artifact.size {
            remove_path(&partial)?;
            have = 0;
        }
        if have < artifact.size {
            if have == 0 {
                tracing::info!(artifact = %artifact.name, size = artifact.size, "downloading");
            } else {
                tracing::info!(artifact = %artifact.name, size = artifact.size, have, "resuming the download");
            }
            source
                .fetch(&artifact.sha256, artifact.size, have, &partial)
                .await
                .map_err(|e| StepError::Fetch {
                    name: artifact.name.clone(),
                    source: e.into(),
                })?;
        }
        let verify = partial.clone();
        let (got, size) = blocking(move || hash_file(&verify)).await?;
        let mismatch = if got != artifact.sha256.as_str() {
            Some(StepError::Checksum {
                name: artifact.name.clone(),
                expected: artifact.sha256.to_string(),
                got,
            })
        } else if size != artifact.size {
            Some(StepError::Size {
                name: artifact.name.clone(),
                expected: artifact.size,
                got: size,
            })
        } else {
            None
        };
        if let Some(e) = mismatch {
            remove_path(&partial)?;
            return Err(e);
        }
        std::fs::rename(&partial, &cached).map_err(io("caching", &cached))?;
        Ok(cached)
    }

    /// Deletes cached artifacts the plan does not use (and leftover partial downloads). A wipe
    /// plan uses none but keeps them all (only partial downloads go): a node back in the pool
    /// holds one plan's artifacts, so attaching it again starts without downloading them; the
    /// next plan that does not use them removes them.
    fn prune_cache(&self) -> Result<(), StepError> {
        let wanted: BTreeSet<&str> = self
            .plan
            .artifacts
            .iter()
            .map(|a| a.sha256.as_str())
            .collect();
        let dir = &self.applier.dirs.cache;
        let entries = std::fs::read_dir(dir).map_err(io("reading", dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let unused = if self.plan.cluster_id.is_none() {
                name.ends_with(".partial")
            } else {
                !wanted.contains(name.as_ref())
            };
            if unused {
                remove_path(&entry.path())?;
            }
        }
        Ok(())
    }

    async fn files(&mut self) -> Result<String, StepError> {
        let wanted: BTreeSet<&str> = self.plan.files.iter().map(|f| f.path.as_str()).collect();
        let artifacts: BTreeSet<&str> = self
            .plan
            .artifacts
            .iter()
            .map(|a| a.path.as_str())
            .collect();
        let removed = self
            .ledger
            .drop_stale(|i| &mut i.files, &wanted, &artifacts)?;
        let mut written = 0;
        for file in &self.plan.files {
            let sha256 = hex::encode(Sha256::digest(file.content.expose().as_bytes()));
            let in_place = {
                let file = file.clone();
                blocking(move || file_in_place(&file)).await?
            };
            let known = self.ledger.installed.files.get(file.path.as_str());
            if in_place && known.is_some_and(|k| k.sha256 == sha256) {
                continue;
            }
            self.ledger
                .installed
                .files
                .insert(file.path.to_string(), InstalledFile { sha256 });
            self.ledger.save()?;
            if !in_place {
                let owned = file.clone();
                blocking(move || write_file(&owned)).await?;
                crate::crash::point("apply.file.written");
                tracing::info!(path = %file.path, "file written");
                written += 1;
            }
        }
        Ok(format!(
            "{written} written, {} unchanged, {} removed",
            self.plan.files.len() - written,
            removed
        ))
    }

    async fn service(&mut self, service: &Service) -> Result<String, StepError> {
        if !service.data_dirs.is_empty() {
            let dirs = self
                .ledger
                .installed
                .service_data
                .entry(service.name.to_string())
                .or_default();
            let before = dirs.len();
            dirs.extend(service.data_dirs.iter().map(ToString::to_string));
            if dirs.len() != before {
                self.ledger.save()?;
            }
        }
        let fingerprint = fingerprint(service, self.plan);
        if self.ledger.installed.services.get(service.name.as_str()) != Some(&fingerprint) {
            self.ledger
                .installed
                .services
                .insert(service.name.to_string(), fingerprint.clone());
            self.ledger.save()?;
        }
        let change = self.supervisor().ensure(service, &fingerprint).await?;
        self.progress.publish();
        self.supervisor()
            .wait_healthy(&service.name, self.applier.readiness_timeout)
            .await?;
        Ok(match change {
            Change::Started => "started, healthy",
            Change::Restarted => "restarted, healthy",
            Change::Unchanged => "unchanged, healthy",
        }
        .to_owned())
    }

    /// The plan's API balancer: its settings written where its process reads them, the
    /// process run as a service of its own. Retired with the other services a plan no
    /// longer has.
    async fn api_balancer(&mut self) -> Result<String, StepError> {
        let settings = self.applier.dirs.state.join(BALANCER_SETTINGS);
        let Some(spec) = &self.plan.api_balancer else {
            remove_path(&settings)?;
            return Ok("none".to_owned());
        };
        if !spec.listen.ip().is_loopback() {
            return Err(crate::balancer::BalancerError::NotLoopback {
                address: spec.listen,
            }
            .into());
        }
        let json = serde_json::to_vec(spec).expect("balancer settings serialize");
        if std::fs::read(&settings).ok().as_deref() != Some(json.as_slice()) {
            crate::state::write_private(&settings, &json).map_err(io("writing", &settings))?;
        }
        let program = self
            .applier
            .balancer_program
            .clone()
            .ok_or_else(|| StepError::Io {
                action: "finding the agent's own program for",
                path: settings.clone(),
                source: std::io::Error::other("the agent does not know its own path"),
            })?;
        let service = balancer_service(&program, &settings, spec.listen)?;
        let status = self.service(&service).await?;
        let upstreams: Vec<String> = spec.upstreams.iter().map(ToString::to_string).collect();
        Ok(format!(
            "{} -> {}; {status}",
            spec.listen,
            upstreams.join(", ")
        ))
    }

    async fn cgroups(&mut self) -> Result<String, StepError> {
        // Remembered before they exist, so a wipe finds them whatever happens next.
        let known = &mut self.ledger.installed.cgroups;
        if !self.plan.cgroups.iter().all(|c| known.contains(c.as_str())) {
            known.extend(self.plan.cgroups.iter().map(ToString::to_string));
            self.ledger.save()?;
        }
        let cgroups: Vec<String> = self.plan.cgroups.iter().map(ToString::to_string).collect();
        blocking(move || Ok(qb_host::cgroups::ensure(&cgroups)?)).await
    }

    /// Runs a task unless it already ran to completion with this definition and these inputs,
    /// and its probe, if it has one, finds what it did still there.
    async fn task(&mut self, task: &Service) -> Result<String, StepError> {
        let fingerprint = fingerprint(task, self.plan);
        if self.ledger.installed.tasks.get(task.name.as_str()) == Some(&fingerprint)
            && !undone(task).await
        {
            return Ok("done earlier".to_owned());
        }
        self.supervisor()
            .run_task(task, self.applier.readiness_timeout)
            .await?;
        self.ledger
            .installed
            .tasks
            .insert(task.name.to_string(), fingerprint);
        self.ledger.save()?;
        Ok("done".to_owned())
    }

    /// Stops every service and removes everything earlier plans installed, and their state.
    async fn wipe(mut self) -> Result<(), ApplyError> {
        self.progress.plan_steps(&["wipe".to_owned()]);
        self.progress.step("wipe", StepState::Running, None);
        let result = self.wipe_everything().await;
        self.conclude("wipe", result)
    }

    /// Removes everything, then looks again: the ledger forgets what it recorded only once
    /// nothing of it is left, so a wipe that fails (or a crash) is redone in full by the next.
    async fn wipe_everything(&mut self) -> Result<String, StepError> {
        let mut services = 0;
        let mut logs = self
            .ledger
            .installed
            .tasks
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        for name in self.known_services() {
            self.supervisor().stop(&name).await?;
            self.ledger.installed.services.remove(&name);
            self.ledger.save()?;
            services += 1;
            logs.push(name);
        }
        crate::crash::point("apply.wipe.services_stopped");
        // The cluster's logs go with it: a host that joins another cluster starts clean.
        for name in &logs {
            self.supervisor().remove_logs(name)?;
        }
        remove_path(&self.applier.dirs.state.join(BALANCER_SETTINGS))?;
        let installed = &self.ledger.installed;
        let paths: Vec<String> = installed
            .files
            .keys()
            .chain(installed.artifacts.keys())
            .cloned()
            .collect();
        for path in &paths {
            remove_path(Path::new(path))?;
            remove_empty_parents(Path::new(path));
        }
        crate::routes::converge(&[]).await?;
        // Pods and the runtime's shims outlive the services that started them.
        let cgroups: Vec<String> = self.ledger.installed.cgroups.iter().cloned().collect();
        let ended = {
            let cgroups = cgroups.clone();
            blocking(move || Ok(qb_host::cgroups::remove(&cgroups)?)).await?
        };
        tracing::info!(cgroups = %ended, "cluster cgroups removed");
        // Only once the pods are gone: their interfaces and rules go with them.
        if self.applier.pod_network {
            let sandboxes = crate::pod_network::sandbox_ids(
                self.ledger
                    .installed
                    .state_dirs
                    .iter()
                    .map(String::as_str)
                    .chain(self.plan.state_dirs.iter().map(HostPath::as_str)),
            );
            let foreign = &self.ledger.installed.foreign_chains;
            let network = crate::pod_network::teardown(&sandboxes, foreign).await?;
            tracing::info!(%network, "pod network taken down");
        }
        let mut dirs = self.ledger.installed.state_dirs.clone();
        dirs.extend(self.plan.state_dirs.iter().map(ToString::to_string));
        dirs.extend(
            self.ledger
                .installed
                .service_data
                .values()
                .flatten()
                .cloned(),
        );
        let premounted = self.ledger.installed.premounted_dirs.clone();
        for dir in &dirs {
            remove_tree(Path::new(dir), premounted.contains(dir))?;
        }
        let wiped = Wiped {
            paths: paths.clone(),
            dirs: dirs.clone(),
            premounted,
            cgroups,
        };
        let mut left = blocking(move || wiped.leftovers(&mount_points()?)).await?;
        left.extend(crate::routes::remaining().await?);
        if self.applier.pod_network {
            let foreign = &self.ledger.installed.foreign_chains;
            left.extend(crate::pod_network::leftovers(foreign).await?);
        }
        if !left.is_empty() {
            return Err(StepError::Leftovers(left));
        }
        let installed = &mut self.ledger.installed;
        installed.files.clear();
        installed.artifacts.clear();
        installed.cgroups.clear();
        installed.tasks.clear();
        installed.state_dirs.clear();
        installed.premounted_dirs.clear();
        installed.service_data.clear();
        installed.foreign_chains.clear();
        installed.cluster_id = None;
        self.ledger.save()?;
        self.prune_cache()?;
        tracing::info!(
            services,
            paths = paths.len(),
            dirs = dirs.len(),
            "node wiped and checked clean"
        );
        Ok(format!(
            "{services} services stopped, {} files removed, {} state directories removed; nothing left",
            paths.len(),
            dirs.len()
        ))
    }
}

/// What a wipe removed, to look for again once it is done.
struct Wiped {
    /// Files and installed artifacts.
    paths: Vec<String>,
    /// State directories.
    dirs: BTreeSet<String>,
    /// Those of them that were mount points before the cluster came: they stay, emptied.
    premounted: BTreeSet<String>,
    cgroups: Vec<String>,
}

impl Wiped {
    /// What is still there, each named: a file, a directory (of a premounted one, anything in
    /// it), one of the `mounts` at or below a directory (but a premounted directory's own), a
    /// cgroup.
    fn leftovers(&self, mounts: &BTreeSet<PathBuf>) -> Result<Vec<String>, StepError> {
        let mut left = Vec::new();
        for path in &self.paths {
            if Path::new(path).symlink_metadata().is_ok() {
                left.push(format!("file {path}"));
            }
        }
        for dir in &self.dirs {
            let path = Path::new(dir);
            if !self.premounted.contains(dir) {
                if path.symlink_metadata().is_ok() {
                    left.push(format!("directory {dir}"));
                }
            } else if std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()) {
                left.push(format!("files in {dir}"));
            }
        }
        for point in mounts {
            let of_cluster = self.dirs.iter().any(|dir| {
                point.starts_with(dir)
                    && !(self.premounted.contains(dir) && point == Path::new(dir))
            });
            if of_cluster {
                left.push(format!("mount {}", point.display()));
            }
        }
        for cgroup in &self.cgroups {
            if !qb_host::cgroups::existing(cgroup)?.is_empty() {
                left.push(format!("cgroup {cgroup}"));
            }
        }
        Ok(left)
    }
}
/// What earlier plans installed: `<state>/installed.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Installed {
    /// The last plan applied in full.
    generation: Option<u64>,
    /// By path.
    artifacts: BTreeMap<String, InstalledArtifact>,
    /// By path.
    files: BTreeMap<String, InstalledFile>,
    /// Every state directory a plan named since the last wipe.
    state_dirs: BTreeSet<String>,
    /// Those of them that were mount points before a plan named them.
    premounted_dirs: BTreeSet<String>,
    /// Name → fingerprint.
    services: BTreeMap<String, String>,
    /// Name → the service's own state directories, removed when it is retired.
    service_data: BTreeMap<String, BTreeSet<String>>,
    /// The cluster of the last plan applied in part or in full: a plan of another cluster
    /// starts by wiping what this one left.
    cluster_id: Option<qb_api::ClusterId>,
    /// Tasks that ran to completion: name → fingerprint.
    tasks: BTreeMap<String, String>,
    /// Every cgroup a plan had since the last wipe.
    cgroups: BTreeSet<String>,
    /// The `KUBE-*`/`CNI-*` iptables chains the host had before the cluster came (another
    /// Kubernetes, podman's CNI networks): not the cluster's, so a wipe leaves them.
    foreign_chains: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct InstalledArtifact {
    sha256: String,
    /// How the file looked right after it was verified; `None` while being installed.
    stamp: Option<Stamp>,
}

#[derive(Debug, Serialize, Deserialize)]
struct InstalledFile {
    sha256: String,
}

/// Identifies a file's version without reading it: replacing or rewriting it changes this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    inode: u64,
    /// Permission bits.
    mode: u32,
}

impl Stamp {
    /// `None` when nothing is at `path`.
    fn of(path: &Path) -> Result<Option<Self>, StepError> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(Self::from_metadata(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("inspecting", path)(e)),
        }
    }

    fn from_metadata(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            inode: meta.ino(),
            mode: meta.mode() & 0o7777,
        }
    }
}

struct Ledger {
    path: PathBuf,
    installed: Installed,
}

impl Ledger {
    fn load(path: PathBuf) -> Result<Self, ApplyError> {
        let installed = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ApplyError::State {
                path: path.clone(),
                source: Box::new(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Installed::default(),
            Err(e) => {
                return Err(ApplyError::State {
                    path,
                    source: Box::new(e),
                });
            }
        };
        Ok(Self { path, installed })
    }

    /// Forgets every path of one kind (`which`) that the plan no longer has (`wanted`), and
    /// removes it from disk unless the plan has it as the other kind (`other`). Returns how
    /// many it forgot.
    fn drop_stale<V>(
        &mut self,
        which: impl Fn(&mut Installed) -> &mut BTreeMap<String, V>,
        wanted: &BTreeSet<&str>,
        other: &BTreeSet<&str>,
    ) -> Result<usize, StepError> {
        let stale: Vec<String> = which(&mut self.installed)
            .keys()
            .filter(|p| !wanted.contains(p.as_str()))
            .cloned()
            .collect();
        for path in &stale {
            if !other.contains(path.as_str()) {
                remove_path(Path::new(path))?;
            }
            which(&mut self.installed).remove(path);
            self.save()?;
        }
        Ok(stale.len())
    }

    fn save(&self) -> Result<(), StepError> {
        let json = serde_json::to_vec_pretty(&self.installed).expect("the ledger serializes");
        crate::state::write_private(&self.path, &json).map_err(io("writing", &self.path))
    }
}

/// The plan report being built, published on every change with the services' state merged in.
struct Progress<'r> {
    supervisor: &'r Supervisor,
    sender: &'r watch::Sender<PlanReport>,
    report: PlanReport,
}

impl<'r> Progress<'r> {
    fn new(
        generation: u64,
        supervisor: &'r Supervisor,
        sender: &'r watch::Sender<PlanReport>,
    ) -> Self {
        Self {
            supervisor,
            sender,
            report: PlanReport {
                generation,
                state: PlanState::Applying,
                steps: Vec::new(),
                services: Vec::new(),
            },
        }
    }

    fn plan_steps(&mut self, names: &[String]) {
        self.report.steps = names
            .iter()
            .map(|name| StepReport {
                name: name.clone(),
                state: StepState::Pending,
                message: None,
            })
            .collect();
        self.publish();
    }

    fn step(&mut self, name: &str, state: StepState, message: Option<String>) {
        if let Some(step) = self.report.steps.iter_mut().find(|s| s.name == name) {
            step.state = state;
            step.message = message;
        }
        self.publish();
    }

    /// The plan could not be started: `Refused` (invalid or stale) or `Failed` (the
    /// applier's own state is unusable), the reason in the message of a pseudo-step `plan`.
    fn reject(&mut self, error: &ApplyError) {
        self.report.state = match error {
            ApplyError::Invalid(_) | ApplyError::Stale { .. } => PlanState::Refused,
            ApplyError::State { .. } | ApplyError::Step { .. } => PlanState::Failed,
        };
        self.report.steps = vec![StepReport {
            name: "plan".to_owned(),
            state: StepState::Failed,
            message: Some(error_chain(error)),
        }];
        self.publish();
    }

    fn finish(&mut self, state: PlanState) {
        self.report.state = state;
        self.publish();
    }

    fn publish(&self) {
        let mut report = self.report.clone();
        report.services = self.supervisor.reports();
        self.sender.send_replace(report);
    }
}

/// SHA-256 over the service's definition and the content of its inputs, as the plan declares
/// them (an input the plan does not install counts by its path alone).
/// The step of a service (`service:<name>`) or a task (`task:<name>`).
fn step_name(service: &Service) -> String {
    if service.restart == RestartPolicy::Never {
        format!("task:{}", service.name)
    } else {
        format!("service:{}", service.name)
    }
}

/// The API balancer's service, and its settings file in the agent's state directory.
pub const BALANCER_SERVICE: &str = "api-balancer";
const BALANCER_SETTINGS: &str = "api-balancer.json";

/// The services the applier runs for `plan`: the plan's own and its API balancer.
pub fn service_names(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = plan.services.iter().map(|s| s.name.to_string()).collect();
    if plan.api_balancer.is_some() {
        names.push(BALANCER_SERVICE.to_owned());
    }
    names
}

/// Whether `task`'s probe finds what it did undone (an image gone). A task without a probe,
/// or whose probe could not look (containerd slow, say), counts as done: a later check will
/// look again.
async fn undone(task: &Service) -> bool {
    let Some(probe) = &task.probe else {
        return false;
    };
    match crate::probe::check(probe, TASK_PROBE_TIMEOUT).await {
        Ok(()) => false,
        Err(e) if e.undone() => {
            tracing::warn!(task = %task.name, reason = %error_chain(&e), "what the task did is undone; running it again");
            true
        }
        Err(e) => {
            tracing::debug!(task = %task.name, error = %error_chain(&e), "task not checked");
            false
        }
    }
}

/// This agent's program, for the API balancer's service: as the process was started (Linux
/// names a program replaced since, by a package upgrade say, `<path> (deleted)`).
fn own_program() -> Option<PathBuf> {
    // The installed binary, not a build the agent upgraded itself to: a path that stays, so
    // an agent upgrade restarts no balancer (and removing an old build breaks none).
    if let Some(installed) = std::env::var_os(crate::builds::INSTALLED_ENV) {
        return Some(PathBuf::from(installed));
    }
    let exe = std::env::current_exe().ok()?;
    let text = exe.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// `program api-balancer --settings <settings>`: no inputs, so new settings (read from the
/// file) never restart it; a new address to listen on does (its probe changes).
fn balancer_service(
    program: &Path,
    settings: &Path,
    listen: std::net::SocketAddr,
) -> Result<Service, StepError> {
    let text = |p: &Path| {
        p.to_str().map(str::to_owned).ok_or_else(|| StepError::Io {
            action: "naming",
            path: p.to_owned(),
            source: std::io::Error::other("the path is not UTF-8"),
        })
    };
    Ok(Service {
        name: BALANCER_SERVICE.parse().expect("a valid service name"),
        command: vec![
            text(program)?,
            "api-balancer".to_owned(),
            "--settings".to_owned(),
            text(settings)?,
        ],
        env: BTreeMap::new(),
        restart: RestartPolicy::Always,
        // Listening: a connection is accepted (and passed on to an API server, if one answers).
        probe: Some(Probe::Tcp {
            address: listen.to_string(),
        }),
        ports: Vec::new(),
        inputs: Vec::new(),
        data_dirs: Vec::new(),
    })
}

fn fingerprint(service: &Service, plan: &Plan) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(service).expect("services serialize"));
    for input in &service.inputs {
        let content = plan
            .artifacts
            .iter()
            .find(|a| &a.path == input)
            .map(|a| a.sha256.to_string())
            .or_else(|| {
                plan.files
                    .iter()
                    .find(|f| &f.path == input)
                    .map(|f| hex::encode(Sha256::digest(f.content.expose().as_bytes())))
            })
            .unwrap_or_else(|| "not installed by the plan".to_owned());
        hash.update(b"\0");
        hash.update(input.as_bytes());
        hash.update(b"\0");
        hash.update(content.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// Refuses what the applier must never act on: relative paths, `..`, unsafe names.
fn validate(plan: &Plan) -> Result<(), ApplyError> {
    let invalid = |what: String| Err(ApplyError::Invalid(what));
    if plan.cluster_id.is_none()
        && !(plan.artifacts.is_empty()
            && plan.files.is_empty()
            && plan.services.is_empty()
            && plan.routes.is_empty()
            && plan.cgroups.is_empty())
    {
        return invalid("a plan without a cluster cannot install anything".to_owned());
    }
    // Paths, digests and names were checked when the plan decoded (`qb_agent_proto::values`).
    let mut paths = BTreeSet::new();
    for path in plan
        .artifacts
        .iter()
        .map(|a| &a.path)
        .chain(plan.files.iter().map(|f| &f.path))
    {
        if !paths.insert(path.as_str()) {
            return invalid(format!("{path} is installed twice"));
        }
    }
    let mut names = BTreeSet::new();
    for service in &plan.services {
        if !names.insert(service.name.as_str()) {
            return invalid(format!("service {} is declared twice", service.name));
        }
        if service.name.as_str() == BALANCER_SERVICE {
            return invalid(format!(
                "service {BALANCER_SERVICE} is the agent's own (the plan's api_balancer)"
            ));
        }
        match service.command.first() {
            Some(program) => check_path(program)?,
            None => return invalid(format!("service {} has no command", service.name)),
        }
    }
    Ok(())
}

/// A program: an absolute path below `/`, without `..`.
fn check_path(path: &str) -> Result<(), ApplyError> {
    HostPath::try_from(path)
        .map(drop)
        .map_err(|e| ApplyError::Invalid(e.to_string()))
}

/// Runs file work off the async threads (hashing hundreds of megabytes takes a while).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(work)
        .await
        .expect("file work does not panic")
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let path = path.to_owned();
    move |source| StepError::Io {
        action,
        path,
        source,
    }
}

/// SHA-256 (hex) and length of a file.
fn hash_file(path: &Path) -> Result<(String, u64), StepError> {
    crate::builds::hash_file(path)
        .map(|(sha256, size)| (String::from(sha256), size))
        .map_err(io("reading", path))
}

/// Whether `file` is on disk with its content, mode and owner.
fn file_in_place(file: &PlanFile) -> Result<bool, StepError> {
    let path = Path::new(&file.path);
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("inspecting", path)(e)),
    };
    if !meta.is_file()
        || meta.mode() & 0o7777 != file.mode
        || meta.uid() != file.owner.uid
        || meta.gid() != file.owner.gid
        || meta.len() != file.content.expose().len() as u64
    {
        return Ok(false);
    }
    let content = std::fs::read(path).map_err(io("reading", path))?;
    Ok(content == file.content.expose().as_bytes())
}

/// Writes a plan file atomically: a temporary file beside it with the content, owner and mode,
/// fsynced, renamed over it.
fn write_file(file: &PlanFile) -> Result<(), StepError> {
    let path = Path::new(&file.path);
    replace(path, file.mode, Some(file.owner), |temp| {
        temp.write_all(file.content.expose().as_bytes())
    })
    .map(drop)
}

/// Copies a cached artifact into place atomically, checking its SHA-256 on the way (the copy
/// reads every byte anyway); returns the installed file's stamp. A cached copy that no longer
/// matches is deleted, so the next attempt downloads it again.
fn install_copy(artifact: &Artifact, cached: &Path) -> Result<Stamp, StepError> {
    let mut from = File::open(cached).map_err(io("reading", cached))?;
    let mut got = None;
    let stamp = replace(Path::new(&artifact.path), artifact.mode, None, |temp| {
        let mut hash = Sha256::new();
        let mut buffer = vec![0; 256 * 1024];
        loop {
            let n = from.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            temp.write_all(&buffer[..n])?;
        }
        let sha256 = hex::encode(hash.finalize());
        if sha256 == artifact.sha256.as_str() {
            return Ok(());
        }
        got = Some(sha256);
        Err(std::io::Error::other("the cached copy is damaged"))
    });
    if let Some(got) = got {
        remove_path(cached)?;
        return Err(StepError::Checksum {
            name: artifact.name.clone(),
            expected: artifact.sha256.to_string(),
            got,
        });
    }
    stamp
}

/// Creates `path` anew through a temporary file in its directory (created if missing): `fill`
/// writes it; owner (when it differs from the creator's) and mode are set, it is fsynced and
/// renamed into place, and the directory fsynced.
fn replace(
    path: &Path,
    mode: u32,
    owner: Option<Owner>,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<Stamp, StepError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tag = format!("{:016x}.qb-tmp", rand::random::<u64>());
    crate::state::replace_file(path, &tag, |temp| {
        fill(temp)?;
        if let Some(owner) = owner {
            let meta = temp.metadata()?;
            if (meta.uid(), meta.gid()) != (owner.uid, owner.gid) {
                std::os::unix::fs::fchown(&*temp, Some(owner.uid), Some(owner.gid))?;
            }
        }
        // After chown, which may clear set-id bits.
        temp.set_permissions(Permissions::from_mode(mode))
    })
    .and_then(|installed| Ok(Stamp::from_metadata(&installed.metadata()?)))
    .map_err(|source| StepError::Io {
        action: "installing",
        path: path.to_owned(),
        source,
    })
}

/// Removes a file; nothing there is fine.
fn remove_path(path: &Path) -> Result<(), StepError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

/// The mount points of the agent's mount namespace.
fn mount_points() -> Result<BTreeSet<PathBuf>, StepError> {
    qb_host::mounts::points().map_err(io("reading", Path::new("/proc/self/mountinfo")))
}

/// Unmounts every mount below `dir` (the kubelet's pod volumes, say), deepest first, lazily,
/// and `dir`'s own mounts unless `keep_own` (the kubelet binds its root directory onto itself;
/// an operator's disk mounted there stays).
fn unmount_below(dir: &Path, keep_own: bool) -> Result<(), StepError> {
    let mut below: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|point| point.starts_with(dir) && !(keep_own && point == dir))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut unmounted = 0;
    for point in &below {
        // A point can carry several mounts (a bind on a bind): unmount until none is left.
        for _ in 0..16 {
            match rustix::mount::unmount(point, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) => unmounted += 1,
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(io("unmounting", point)(e.into())),
            }
        }
    }
    if unmounted > 0 {
        tracing::info!(dir = %dir.display(), mounts = unmounted, "unmounted what components left");
    }
    Ok(())
}

/// Removes the directories above a removed file while they are empty, up to (not including)
/// a directory two levels below the root, such as `/etc/qb`: a wiped node keeps no empty
/// directories of a plan.
fn remove_empty_parents(path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.components().count() <= 3 || std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

/// Removes a directory tree; nothing there is fine. A directory that stays a mount point
/// (`keep_mount`) cannot go itself: emptied, it counts as removed.
fn remove_tree(path: &Path, keep_mount: bool) -> Result<(), StepError> {
    unmount_below(path, keep_mount)?;
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", path)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("reading", path))?;
        let child = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&child)
        } else {
            std::fs::remove_file(&child)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &child)(e)),
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ResourceBusy
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(io("removing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use anyhow::Context;
    use qb_agent_proto::plan::{ApiBalancer, Probe, RestartPolicy};
    use qb_api::{ClusterId, NodeId};
    use tokio::net::TcpListener;

    use super::*;
    use crate::supervise::tests::until_dead;
    use crate::supervise::{Settings, SupervisorDirs};

    /// Serves artifacts from memory, counting downloads and resuming partial ones (the offsets
    /// asked for are kept); `tamper` flips a bit of what it sends.
    #[derive(Default)]
    struct Source {
        blobs: HashMap<String, Vec<u8>>,
        fetches: AtomicUsize,
        offsets: std::sync::Mutex<Vec<u64>>,
        tamper: bool,
    }

    impl Source {
        /// An artifact for `content`, known to this source.
        fn artifact(&mut self, name: &str, path: &Path, content: &[u8], mode: u32) -> Artifact {
            let sha256 = hex::encode(Sha256::digest(content));
            self.blobs.insert(sha256.clone(), content.to_vec());
            Artifact {
                name: name.to_owned(),
                sha256: sha256.parse().unwrap(),
                size: content.len() as u64,
                path: path.to_str().unwrap().parse().unwrap(),
                mode,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    impl ArtifactSource for Source {
        async fn fetch(
            &self,
            sha256: &str,
            size: u64,
            from: u64,
            into: &Path,
        ) -> anyhow::Result<()> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let mut bytes = self.blobs.get(sha256).context("no such artifact")?.clone();
            assert_eq!(bytes.len() as u64, size);
            if self.tamper {
                bytes[0] ^= 1;
            }
            self.offsets.lock().unwrap().push(from);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(into)?
                .write_all(&bytes[from as usize..])?;
            Ok(())
        }
    }

    /// A source whose downloads write these bytes, then never finish.
    struct Stuck(&'static [u8]);

    impl ArtifactSource for Stuck {
        async fn fetch(&self, _: &str, _: u64, _: u64, into: &Path) -> anyhow::Result<()> {
            tokio::fs::write(into, self.0).await?;
            std::future::pending().await
        }
    }

    /// A test host: plan paths point into `host/`, the agent keeps its state in `agent/`.
    struct Host {
        root: tempfile::TempDir,
    }

    impl Drop for Host {
        /// Services outlive their supervisor: a failed test must not leave them running.
        fn drop(&mut self) {
            crate::supervise::kill_recorded(&self.root.path().join("agent/services"));
        }
    }

    impl Host {
        fn new() -> Self {
            Self {
                root: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.path().join("host").join(rel)
        }

        fn text(&self, rel: &str) -> String {
            self.path(rel).to_str().unwrap().to_owned()
        }

        /// A supervisor and an applier on the agent's directories, as after an agent start.
        fn agent(&self) -> (Arc<Supervisor>, Applier) {
            let agent = self.root.path().join("agent");
            let supervisor = Supervisor::with_settings(
                SupervisorDirs {
                    records: agent.join("services"),
                    logs: agent.join("logs"),
                },
                Settings {
                    check_interval: Duration::from_millis(100),
                    backoff_initial: Duration::from_millis(100),
                    ..Settings::default()
                },
            )
            .unwrap();
            supervisor.adopt().unwrap();
            let applier = Applier::new(
                ApplierDirs {
                    state: agent.clone(),
                    cache: agent.join("cache"),
                },
                supervisor.clone(),
            )
            .with_readiness_timeout(Duration::from_secs(20))
            .without_pod_network();
            (supervisor, applier)
        }

        fn cache_entries(&self) -> Vec<String> {
            std::fs::read_dir(self.root.path().join("agent/cache"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        }
    }

    fn owner() -> Owner {
        Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    fn file(path: String, content: &str) -> PlanFile {
        PlanFile {
            path: path.parse().unwrap(),
            content: content.into(),
            mode: 0o640,
            owner: owner(),
        }
    }

    fn service(name: &str, command: Vec<String>, inputs: Vec<String>) -> Service {
        Service {
            name: name.parse().unwrap(),
            command,
            env: BTreeMap::new(),
            restart: RestartPolicy::Always,
            probe: None,
            ports: Vec::new(),
            inputs: inputs.iter().map(|i| i.parse().unwrap()).collect(),
            data_dirs: Vec::new(),
        }
    }

    fn program(name: &str) -> String {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} is needed by this test and is not installed"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    async fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A plan with an artifact (a TCP server script), three files and two services: `server`
    /// (serves `port`, probed, reads the script and `server.conf`) and `worker` (reads
    /// `worker.conf`, writes into the state directory).
    async fn plan(host: &Host, source: &mut Source) -> (Plan, u16) {
        let port = free_port().await;
        let script = format!(
            "#!/bin/sh\nexec {} nc -ll -p \"$1\" -e true\n",
            program("busybox")
        );
        let server = source.artifact("server", &host.path("bin/server"), script.as_bytes(), 0o755);
        let data = host.text("var/lib/worker");
        let mut server_service = service(
            "server",
            vec![host.text("bin/server"), port.to_string()],
            vec![host.text("bin/server"), host.text("etc/server.conf")],
        );
        server_service.probe = Some(Probe::Tcp {
            address: format!("127.0.0.1:{port}"),
        });
        let worker = service(
            "worker",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("mkdir -p {data} && echo state > {data}/member && exec sleep 1000"),
            ],
            vec![host.text("etc/worker.conf")],
        );
        let plan = Plan {
            node_id: NodeId::new(),
            cluster_id: Some(ClusterId::new()),
            generation: 1,
            artifacts: vec![server],
            files: vec![
                file(host.text("etc/server.conf"), "listen = all\n"),
                file(host.text("etc/worker.conf"), "threads = 2\n"),
                file(host.text("etc/deep/down/extra.conf"), "nested\n"),
            ],
            services: vec![server_service, worker],
            state_dirs: vec![data.parse().unwrap()],
            ..Plan::default()
        };
        (plan, port)
    }

    fn pid(supervisor: &Supervisor, name: &str) -> u32 {
        supervisor
            .reports()
            .into_iter()
            .find(|r| r.name == name)
            .and_then(|r| r.pid)
            .unwrap_or_else(|| panic!("{name} does not run"))
    }

    fn mtime(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    /// Whether `path` exists within five seconds (services write their state a moment after
    /// they start).
    async fn until_exists(path: &Path) -> bool {
        for _ in 0..200 {
            if path.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        path.exists()
    }

    /// Runs `apply` for `limit` only, as an agent that dies meanwhile; it must still be at work.
    async fn cut_short(limit: Duration, apply: impl Future<Output = Result<(), ApplyError>>) {
        let cut = tokio::time::timeout(limit, apply).await;
        assert!(cut.is_err(), "the apply was still waiting");
    }

    fn step<'a>(report: &'a PlanReport, name: &str) -> &'a StepReport {
        report.steps.iter().find(|s| s.name == name).unwrap()
    }

    fn assert_step_message(report: &PlanReport, name: &str, expected: &str) {
        assert_eq!(
            step(report, name).message.as_deref(),
            Some(expected),
            "{name}"
        );
    }

    fn assert_cache_is_empty(host: &Host) {
        assert_eq!(host.cache_entries(), Vec::<String>::new());
    }

    async fn stop_all(supervisor: &Supervisor) {
        for name in supervisor.names() {
            supervisor.stop(&name).await.unwrap();
        }
    }

    /// A host with the test [`plan`] and an agent started on it: the host, the artifacts'
    /// source, the plan, the agent's supervisor and applier, and the report the applier fills.
    async fn set_up() -> (
        Host,
        Source,
        Plan,
        Arc<Supervisor>,
        Applier,
        watch::Sender<PlanReport>,
    ) {
        let host = Host::new();
        let mut source = Source::default();
        let (plan, _) = plan(&host, &mut source).await;
        let (supervisor, applier) = host.agent();
        let report = watch::Sender::new(PlanReport::default());
        (host, source, plan, supervisor, applier, report)
    }

    #[tokio::test]
    async fn a_task_runs_once_per_definition_and_gates_what_follows() {
        let host = Host::new();
        let source = Source::default();
        let (_supervisor, applier) = host.agent();
        let report = watch::Sender::new(PlanReport::default());
        let runs = host.text("runs");
        let input = host.text("etc/image.conf");
        let mut task = service(
            "import",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("cat {input} >> {runs}"),
            ],
            vec![input.clone()],
        );
        task.restart = RestartPolicy::Never;
        let mut plan = Plan {
            node_id: NodeId::new(),
            cluster_id: Some(ClusterId::new()),
            generation: 1,
            files: vec![file(input.clone(), "one\n")],
            services: vec![task],
            ..Plan::default()
        };
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(&report.borrow(), "task:import", "done");
        plan.generation = 2;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(&report.borrow(), "task:import", "done earlier");
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "one\n");

        // A changed input runs it again.
        plan.generation = 3;
        plan.files[0].content = "two\n".into();
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "one\ntwo\n");

        // A failing task fails its step with the end of its log, and what follows never starts.
        plan.generation = 4;
        plan.services[0].command = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo image is corrupt >&2; exit 3".into(),
        ];
        let after = host.text("after");
        plan.services.push(service(
            "after",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("touch {after}; exec sleep 1000"),
            ],
            Vec::new(),
        ));
        let err = applier.apply(&plan, &source, &report).await.unwrap_err();
        assert!(
            matches!(&err, ApplyError::Step { step, .. } if step == "task:import"),
            "{err:?}"
        );
        let failed = report.borrow().clone();
        let message = step(&failed, "task:import").message.clone().unwrap();
        assert!(message.contains("exit status 3"), "{message}");
        assert!(message.contains("image is corrupt"), "{message}");
        assert_eq!(step(&failed, "service:after").state, StepState::Pending);
        assert!(!Path::new(&after).exists());
    }

    #[tokio::test]
    async fn a_task_whose_probe_finds_its_work_undone_runs_again() {
        let host = Host::new();
        let source = Source::default();
        let (_supervisor, applier) = host.agent();
        let report = watch::Sender::new(PlanReport::default());
        std::fs::create_dir_all(host.path("")).unwrap();
        // containerd's image list, as the stand-in ctr prints it; the import adds to it.
        let listed = host.text("listed");
        let runs = host.text("runs");
        let archive = crate::images::testing::archive(
            &host.path(""),
            &[serde_json::json!({"io.containerd.image.name": "qb.local/pause:3.2"})],
        );
        let ctr = crate::images::testing::ctr(
            &host.path(""),
            &format!("[ -f {listed}.down ] && exit 1; cat {listed} 2>/dev/null; true"),
        );
        let mut task = service(
            "import-pause-image",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo run >> {runs}; echo qb.local/pause:3.2 >> {listed}"),
            ],
            Vec::new(),
        );
        task.restart = RestartPolicy::Never;
        task.probe = Some(Probe::Images {
            ctr: ctr.to_str().unwrap().try_into().unwrap(),
            address: "/run/qb/containerd/containerd.sock".try_into().unwrap(),
            namespace: "k8s.io".into(),
            archive: archive.to_str().unwrap().try_into().unwrap(),
        });
        let mut plan = Plan {
            node_id: NodeId::new(),
            cluster_id: Some(ClusterId::new()),
            generation: 1,
            services: vec![task],
            ..Plan::default()
        };
        let runs_so_far = || std::fs::read_to_string(&runs).unwrap().lines().count();
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(runs_so_far(), 1);
        plan.generation = 2;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(&report.borrow(), "task:import-pause-image", "done earlier");
        assert!(applier.redo_undone_tasks(&plan).await.is_empty());
        assert_eq!(runs_so_far(), 1);

        // The image is deleted (by the kubelet, short of disk): it is imported again.
        std::fs::write(&listed, "").unwrap();
        assert_eq!(
            applier.redo_undone_tasks(&plan).await,
            ["import-pause-image"]
        );
        assert_eq!(runs_so_far(), 2);
        assert!(applier.redo_undone_tasks(&plan).await.is_empty());

        // containerd not answering is no reason to import anything.
        std::fs::write(&listed, "").unwrap();
        std::fs::write(format!("{listed}.down"), "").unwrap();
        assert!(applier.redo_undone_tasks(&plan).await.is_empty());
        plan.generation = 3;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(&report.borrow(), "task:import-pause-image", "done earlier");
        assert_eq!(runs_so_far(), 2);

        // Applying the same plan again (an agent restart) finds it gone too.
        std::fs::remove_file(format!("{listed}.down")).unwrap();
        plan.generation = 4;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(&report.borrow(), "task:import-pause-image", "done");
        assert_eq!(runs_so_far(), 3);
    }

    #[tokio::test]
    async fn the_api_balancer_is_a_service_of_its_own_that_new_settings_do_not_restart() {
        use std::os::unix::fs::PermissionsExt as _;
        let host = Host::new();
        let source = Source::default();
        let (supervisor, applier) = host.agent();
        // A stand-in for the agent's own binary; its `api-balancer` is tested in `balancer`.
        std::fs::create_dir_all(host.path("")).unwrap();
        let program = host.path("qb-agent");
        let args = host.path("args");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\nexec sleep 1000\n",
                args.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, Permissions::from_mode(0o755)).unwrap();
        let applier = applier.with_balancer_program(program.clone());
        let report = watch::Sender::new(PlanReport::default());
        // Its probe connects where it listens: a listener of the test's stands in there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        let spec = |upstreams: &[&str]| ApiBalancer {
            listen,
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
        };
        let mut plan = Plan {
            node_id: NodeId::new(),
            cluster_id: Some(ClusterId::new()),
            generation: 1,
            api_balancer: Some(spec(&["10.0.0.1:6443"])),
            ..Plan::default()
        };
        let settings = host.root.path().join("agent").join(BALANCER_SETTINGS);
        let balancer = |supervisor: &Supervisor| {
            supervisor
                .reports()
                .into_iter()
                .find(|r| r.name == BALANCER_SERVICE)
        };
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "api-balancer",
            &format!("{listen} -> 10.0.0.1:6443; started, healthy"),
        );
        assert_eq!(
            service_names(&plan),
            [BALANCER_SERVICE],
            "its log can be read"
        );
        let read = || serde_json::from_slice::<ApiBalancer>(&std::fs::read(&settings).unwrap());
        assert_eq!(read().unwrap(), spec(&["10.0.0.1:6443"]));
        let first = balancer(&supervisor).and_then(|r| r.pid).unwrap();
        let mut given = String::new();
        for _ in 0..100 {
            given = std::fs::read_to_string(&args).unwrap_or_default();
            if !given.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            given.trim(),
            format!("api-balancer --settings {}", settings.display())
        );

        // Another API server: new settings in the file, the same process.
        plan.generation = 2;
        plan.api_balancer = Some(spec(&["10.0.0.2:6443", "10.0.0.1:6443"]));
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "api-balancer",
            &format!("{listen} -> 10.0.0.2:6443, 10.0.0.1:6443; unchanged, healthy"),
        );
        assert_eq!(read().unwrap(), spec(&["10.0.0.2:6443", "10.0.0.1:6443"]));
        assert_eq!(balancer(&supervisor).and_then(|r| r.pid), Some(first));

        // A plan without one retires it.
        plan.generation = 3;
        plan.api_balancer = None;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "service:api-balancer",
            "stopped: no longer in the plan",
        );
        assert!(balancer(&supervisor).is_none());
        assert!(!settings.exists());

        // A plan cannot declare a service of that name itself.
        plan.generation = 4;
        plan.services = vec![service(
            BALANCER_SERVICE,
            vec!["/bin/true".into()],
            Vec::new(),
        )];
        let err = applier.apply(&plan, &source, &report).await.unwrap_err();
        assert!(matches!(err, ApplyError::Invalid(_)), "{err}");
    }

    #[tokio::test]
    async fn a_plan_converges_and_applying_it_again_changes_nothing() {
        let host = Host::new();
        let mut source = Source::default();
        let (plan, port) = plan(&host, &mut source).await;
        let (supervisor, applier) = host.agent();
        let report = watch::Sender::new(PlanReport::default());
        let mut updates = report.subscribe();

        applier.apply(&plan, &source, &report).await.unwrap();
        let done = report.borrow().clone();
        assert_eq!(done.state, PlanState::Applied);
        assert_eq!(done.generation, 1);
        let names: Vec<&str> = done.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "artifacts",
                "files",
                "routes",
                "cgroups",
                "api-balancer",
                "service:server",
                "service:worker"
            ]
        );
        assert!(
            done.steps.iter().all(|s| s.state == StepState::Done),
            "{done:?}"
        );
        assert_step_message(&done, "service:server", "started, healthy");
        assert!(
            done.services.iter().all(|s| s.running && s.healthy),
            "{done:?}"
        );
        assert!(updates.has_changed().unwrap());
        updates.mark_unchanged();

        // Everything is in place, with its mode and owner.
        let installed = host.path("bin/server");
        assert_eq!(
            std::fs::metadata(&installed).unwrap().mode() & 0o7777,
            0o755
        );
        assert!(
            std::fs::read_to_string(&installed)
                .unwrap()
                .contains("nc -ll")
        );
        let conf = std::fs::metadata(host.path("etc/server.conf")).unwrap();
        assert_eq!(conf.mode() & 0o7777, 0o640);
        assert_eq!((conf.uid(), conf.gid()), (owner().uid, owner().gid));
        assert_eq!(
            std::fs::read_to_string(host.path("etc/deep/down/extra.conf")).unwrap(),
            "nested\n"
        );
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the server serves its port");
        assert_eq!(source.fetches(), 1);

        // Again: no download, no write, no restart.
        let pids = (pid(&supervisor, "server"), pid(&supervisor, "worker"));
        let paths = [
            installed.clone(),
            host.path("etc/server.conf"),
            host.path("etc/worker.conf"),
        ];
        let mtimes: Vec<SystemTime> = paths.iter().map(|p| mtime(p)).collect();
        applier.apply(&plan, &source, &report).await.unwrap();
        let again = report.borrow().clone();
        assert_eq!(again.state, PlanState::Applied);
        assert_step_message(&again, "artifacts", "0 installed, 1 unchanged, 0 removed");
        assert_step_message(&again, "files", "0 written, 3 unchanged, 0 removed");
        assert_step_message(&again, "service:worker", "unchanged, healthy");
        assert_eq!(source.fetches(), 1);
        assert_eq!(
            (pid(&supervisor, "server"), pid(&supervisor, "worker")),
            pids
        );
        assert_eq!(paths.iter().map(|p| mtime(p)).collect::<Vec<_>>(), mtimes);

        // A changed input restarts only the service that reads it.
        let mut changed = plan.clone();
        changed.generation = 2;
        changed.files[1].content = "threads = 4\n".into();
        applier.apply(&changed, &source, &report).await.unwrap();
        assert_eq!(
            pid(&supervisor, "server"),
            pids.0,
            "server is not restarted"
        );
        assert_ne!(pid(&supervisor, "worker"), pids.1, "worker is restarted");
        until_dead(pids.1).await;
        assert_eq!(
            std::fs::read_to_string(host.path("etc/worker.conf")).unwrap(),
            "threads = 4\n"
        );
        assert_eq!(mtime(&paths[1]), mtimes[1], "server.conf is not rewritten");
        let third = report.borrow().clone();
        assert_step_message(&third, "service:worker", "restarted, healthy");

        // An older plan is refused.
        let err = applier.apply(&plan, &source, &report).await.unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::Stale {
                    plan: 1,
                    applied: 2
                }
            ),
            "{err}"
        );
        assert_eq!(report.borrow().state, PlanState::Refused);
        stop_all(&supervisor).await;
    }

    #[test]
    fn a_wipe_looks_again_for_each_kind_of_state_it_removed() {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p).display().to_string();
        for dir in ["gone", "kept-mount", "emptied-mount", "left/sub"] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        std::fs::remove_dir(at("gone")).unwrap();
        std::fs::write(at("left/file"), b"x").unwrap();
        std::fs::write(at("kept-mount/file"), b"x").unwrap();
        let wiped = Wiped {
            paths: vec![at("left/file"), at("removed-file")],
            dirs: [
                at("gone"),
                at("left"),
                at("kept-mount"),
                at("emptied-mount"),
            ]
            .into(),
            premounted: [at("kept-mount"), at("emptied-mount")].into(),
            cgroups: vec!["/qb/never-made-by-this-test".to_owned()],
        };
        let mounts: BTreeSet<PathBuf> = ["/", &at("emptied-mount"), &at("gone/pod/volume")]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            wiped.leftovers(&mounts).unwrap(),
            [
                format!("file {}", at("left/file")),
                format!("files in {}", at("kept-mount")),
                format!("directory {}", at("left")),
                format!("mount {}", at("gone/pod/volume")),
            ]
        );
        let many: Vec<String> = (0..10).map(|i| format!("file /f{i}")).collect();
        let message = StepError::Leftovers(many).to_string();
        assert!(
            message.starts_with("the wipe left 10: file /f0, ")
                && message.ends_with(", file /f7 and 2 more"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn removed_services_and_files_go_and_a_plan_without_cluster_wipes_everything() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        applier.apply(&plan, &source, &report).await.unwrap();
        let worker = pid(&supervisor, "worker");
        let server = pid(&supervisor, "server");
        // The worker has no probe: it counts as ready once it runs, perhaps before it wrote.
        assert!(
            until_exists(&host.path("var/lib/worker/member")).await,
            "the worker writes its state"
        );

        // Without the worker and its file.
        let mut smaller = plan.clone();
        smaller.generation = 2;
        smaller.services.retain(|s| s.name != "worker");
        smaller.files.retain(|f| !f.path.ends_with("worker.conf"));
        applier.apply(&smaller, &source, &report).await.unwrap();
        let done = report.borrow().clone();
        assert_eq!(done.steps[0].name, "service:worker");
        assert_eq!(
            done.steps[0].message.as_deref(),
            Some("stopped: no longer in the plan")
        );
        until_dead(worker).await;
        assert_eq!(supervisor.names(), ["server"]);
        assert_eq!(pid(&supervisor, "server"), server);
        assert!(!host.path("etc/worker.conf").exists());
        assert!(host.path("etc/server.conf").exists());
        assert!(
            host.path("var/lib/worker/member").exists(),
            "state directories stay until the node leaves its cluster"
        );

        // The node leaves its cluster (while a download was left half-way).
        std::fs::write(
            host.root.path().join("agent/cache/0123.partial"),
            b"half a download",
        )
        .unwrap();
        let wipe = Plan {
            node_id: plan.node_id,
            cluster_id: None,
            generation: 3,
            ..Plan::default()
        };
        applier.apply(&wipe, &source, &report).await.unwrap();
        let done = report.borrow().clone();
        assert_eq!(done.state, PlanState::Applied);
        assert_eq!(done.steps.len(), 1);
        assert_eq!(done.steps[0].name, "wipe");
        assert_eq!(done.steps[0].state, StepState::Done);
        assert!(done.services.is_empty());
        until_dead(server).await;
        assert!(supervisor.names().is_empty());
        for gone in [
            "bin/server",
            "etc/server.conf",
            "etc/deep/down/extra.conf",
            "etc/deep",
            "bin",
            "var/lib/worker",
        ] {
            assert!(!host.path(gone).exists(), "{gone} is left");
        }
        // The wipe keeps the verified artifacts (a re-attach need not download them), but no
        // partial download.
        let mut kept: Vec<String> = plan
            .artifacts
            .iter()
            .map(|a| a.sha256.to_string())
            .collect();
        kept.sort();
        let mut cached = host.cache_entries();
        cached.sort();
        assert_eq!(cached, kept);
        let ledger: Installed = serde_json::from_slice(
            &std::fs::read(host.root.path().join("agent/installed.json")).unwrap(),
        )
        .unwrap();
        assert!(
            ledger.files.is_empty()
                && ledger.artifacts.is_empty()
                && ledger.services.is_empty()
                && ledger.state_dirs.is_empty()
        );
        assert_eq!(ledger.generation, Some(3));

        // Wiping again is a no-op.
        applier.apply(&wipe, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "wipe",
            "0 services stopped, 0 files removed, 0 state directories removed; nothing left",
        );
    }

    #[tokio::test]
    async fn a_retired_services_data_goes_with_it_and_it_comes_back_from_nothing() {
        let (host, source, mut plan, supervisor, applier, report) = set_up().await;
        let data = host.text("var/lib/member");
        // Says whether it found data of an earlier run, then keeps some of its own.
        let mut member = service(
            "member",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "mkdir -p {data}; if [ -e {data}/db ]; then echo reused; else echo fresh; fi > {data}/start; \
                     echo data > {data}/db; exec sleep 1000"
                ),
            ],
            Vec::new(),
        );
        member.data_dirs = vec![data.parse().unwrap()];
        plan.services.push(member);
        let start = host.path("var/lib/member/start");
        let started_as = |expected: &'static str| {
            let start = start.clone();
            async move {
                for _ in 0..200 {
                    if std::fs::read_to_string(&start).is_ok_and(|s| s.trim() == expected)
                        && start.with_file_name("db").exists()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("the member did not start {expected}");
            }
        };
        applier.apply(&plan, &source, &report).await.unwrap();
        started_as("fresh").await;
        // The worker (no probe) writes its own state a moment after it starts.
        let worker_state = host.path("var/lib/worker/member");
        until_exists(&worker_state).await;

        // Retired: stopped, and its data removed (the other state directories stay).
        let mut without = plan.clone();
        without.generation = 2;
        without.services.retain(|s| s.name != "member");
        applier.apply(&without, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "service:member",
            "stopped: no longer in the plan; its 1 data directories removed",
        );
        assert!(!host.path("var/lib/member").exists());
        assert!(worker_state.exists());

        // Back: it starts from nothing.
        let mut again = plan.clone();
        again.generation = 3;
        applier.apply(&again, &source, &report).await.unwrap();
        started_as("fresh").await;
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn a_plan_of_another_cluster_starts_from_a_wiped_node() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        applier.apply(&plan, &source, &report).await.unwrap();
        // (The worker makes its state directory itself, maybe not yet.)
        let old_state = host.path("var/lib/worker/from-the-old-cluster");
        std::fs::create_dir_all(old_state.parent().unwrap()).unwrap();
        std::fs::write(&old_state, "old").unwrap();
        let server = pid(&supervisor, "server");

        // The same cluster's next plan keeps the state.
        let mut next = plan.clone();
        next.generation = 2;
        applier.apply(&next, &source, &report).await.unwrap();
        assert!(old_state.exists());
        assert_eq!(pid(&supervisor, "server"), server);

        // Another cluster's plan, without a wipe between (the host was away when it left):
        // nothing of the old cluster's state is left, and the services start anew.
        let mut other = plan.clone();
        other.generation = 3;
        other.cluster_id = Some(ClusterId::new());
        applier.apply(&other, &source, &report).await.unwrap();
        assert!(
            !old_state.exists(),
            "the old cluster's state was wiped first"
        );
        assert_ne!(pid(&supervisor, "server"), server);
        assert_eq!(report.borrow().state, PlanState::Applied);
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn a_tampered_artifact_fails_its_step_and_installs_nothing() {
        let (host, mut source, plan, supervisor, applier, report) = set_up().await;
        source.tamper = true;

        let err = applier.apply(&plan, &source, &report).await.unwrap_err();
        assert!(
            matches!(&err, ApplyError::Step { step, .. } if step == "artifacts"),
            "{err}"
        );
        let failed = report.borrow().clone();
        assert_eq!(failed.state, PlanState::Failed);
        let artifacts = step(&failed, "artifacts");
        assert_eq!(artifacts.state, StepState::Failed);
        let message = artifacts.message.as_deref().unwrap();
        let expected = &plan.artifacts[0].sha256;
        assert!(
            message.starts_with(&format!(
                "artifact server: checksum mismatch: expected {expected}, got "
            )),
            "{message}"
        );
        assert!(
            failed.steps[1..]
                .iter()
                .all(|s| s.state == StepState::Pending)
        );
        assert!(!host.path("bin/server").exists());
        assert_cache_is_empty(&host);
        assert!(supervisor.names().is_empty());

        // Honest bytes next time.
        source.tamper = false;
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(report.borrow().state, PlanState::Applied);
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn an_apply_cut_short_is_finished_by_the_next_agent() {
        let (host, source, mut plan, supervisor, applier, report) = set_up().await;
        // The worker's readiness gate: a port nobody serves yet.
        let gate = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate_address = gate.local_addr().unwrap();
        drop(gate);
        plan.services[1].probe = Some(Probe::Tcp {
            address: gate_address.to_string(),
        });

        // The agent dies while the worker's gate waits.
        cut_short(
            Duration::from_secs(3),
            applier.apply(&plan, &source, &report),
        )
        .await;
        let interrupted = report.borrow().clone();
        assert_eq!(interrupted.state, PlanState::Applying);
        assert_eq!(
            step(&interrupted, "service:worker").state,
            StepState::Running
        );
        let pids = (pid(&supervisor, "server"), pid(&supervisor, "worker"));
        let conf = host.path("etc/server.conf");
        let conf_mtime = mtime(&conf);
        drop(applier);
        drop(supervisor);

        // The worker becomes ready; a new agent adopts the services and finishes the plan.
        let _gate = TcpListener::bind(gate_address).await.unwrap();
        let (supervisor, applier) = host.agent();
        applier.apply(&plan, &source, &report).await.unwrap();
        let done = report.borrow().clone();
        assert_eq!(done.state, PlanState::Applied);
        assert_eq!(
            (pid(&supervisor, "server"), pid(&supervisor, "worker")),
            pids,
            "nothing was restarted"
        );
        assert_step_message(&done, "service:worker", "unchanged, healthy");
        assert_eq!(mtime(&conf), conf_mtime);
        assert_eq!(source.fetches(), 1);
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn an_interrupted_download_resumes_where_it_stopped() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        let content = &source.blobs[plan.artifacts[0].sha256.as_str()];
        let half: &'static [u8] = content[..content.len() / 2].to_vec().leak();
        cut_short(
            Duration::from_millis(500),
            applier.apply(&plan, &Stuck(half), &report),
        )
        .await;
        assert!(!host.path("bin/server").exists());

        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(
            *source.offsets.lock().unwrap(),
            [half.len() as u64],
            "only the rest was asked for"
        );
        assert_eq!(
            host.cache_entries(),
            [plan.artifacts[0].sha256.to_string()],
            "the partial download became the artifact"
        );
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn a_partial_download_that_does_not_match_is_fetched_again_from_zero() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        let garbage = b"not the start of it";
        cut_short(
            Duration::from_millis(500),
            applier.apply(&plan, &Stuck(garbage), &report),
        )
        .await;

        // Resumed, the whole does not match: refused, nothing installed, the partial dropped.
        applier.apply(&plan, &source, &report).await.unwrap_err();
        let why = step(&report.borrow(), "artifacts")
            .message
            .clone()
            .unwrap_or_default();
        assert!(why.contains("checksum mismatch"), "{why}");
        assert!(!host.path("bin/server").exists());
        assert_cache_is_empty(&host);

        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(*source.offsets.lock().unwrap(), [garbage.len() as u64, 0]);
        assert_eq!(host.cache_entries(), [plan.artifacts[0].sha256.to_string()]);
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn a_changed_artifact_is_reinstalled_from_a_verified_copy() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        applier.apply(&plan, &source, &report).await.unwrap();
        let server = pid(&supervisor, "server");

        // Someone edits the installed binary: the stamp differs, the content is checked.
        let installed = host.path("bin/server");
        let mut content = std::fs::read(&installed).unwrap();
        content.push(b'\n');
        std::fs::write(&installed, &content).unwrap();
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_step_message(
            &report.borrow(),
            "artifacts",
            "1 installed, 0 unchanged, 0 removed",
        );
        let sha = hex::encode(Sha256::digest(std::fs::read(&installed).unwrap()));
        assert_eq!(plan.artifacts[0].sha256, sha);
        assert_eq!(source.fetches(), 1, "reinstalled from the cache");
        assert_eq!(
            pid(&supervisor, "server"),
            server,
            "same content, no restart"
        );

        // A damaged cached copy is never installed: the step fails, the copy is dropped, and
        // the next attempt downloads it again.
        let cached = host
            .root
            .path()
            .join("agent/cache")
            .join(plan.artifacts[0].sha256.as_str());
        let mut damaged = std::fs::read(&cached).unwrap();
        damaged[0] ^= 1;
        std::fs::write(&cached, &damaged).unwrap();
        std::fs::write(&installed, &content).unwrap();
        let err = applier.apply(&plan, &source, &report).await.unwrap_err();
        assert!(
            error_chain(&err).contains("artifact server: checksum mismatch"),
            "{}",
            error_chain(&err)
        );
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            content,
            "left as it was"
        );
        assert!(!cached.exists());
        applier.apply(&plan, &source, &report).await.unwrap();
        assert_eq!(source.fetches(), 2);
        let sha = hex::encode(Sha256::digest(std::fs::read(&installed).unwrap()));
        assert_eq!(plan.artifacts[0].sha256, sha);
        stop_all(&supervisor).await;
    }

    #[tokio::test]
    async fn unsafe_plans_are_refused() {
        let (host, source, plan, supervisor, applier, report) = set_up().await;
        // What no plan can even say: it does not decode.
        let json = serde_json::to_value(&plan).unwrap();
        let undecodable: [(&str, &str, serde_json::Value); 5] = [
            ("relative", "/files/0/path", "etc/x".into()),
            (
                "dot-dot",
                "/files/0/path",
                "/etc/qb/../../etc/shadow".into(),
            ),
            ("root", "/state_dirs", serde_json::json!(["/"])),
            ("checksum", "/artifacts/0/sha256", "../../etc/passwd".into()),
            ("name", "/services/0/name", "../x".into()),
        ];
        for (case, pointer, value) in undecodable {
            let mut bad = json.clone();
            *bad.pointer_mut(pointer).unwrap() = value;
            assert!(serde_json::from_value::<Plan>(bad).is_err(), "{case}");
        }
        type Breakage = Box<dyn Fn(&mut Plan)>;
        let cases: Vec<(&str, Breakage)> = vec![
            (
                "twice",
                Box::new(|p| p.files[1].path = p.files[0].path.clone()),
            ),
            ("wipe with content", Box::new(|p| p.cluster_id = None)),
        ];
        for (case, break_it) in cases {
            let mut bad = plan.clone();
            break_it(&mut bad);
            let err = applier.apply(&bad, &source, &report).await.unwrap_err();
            assert!(matches!(err, ApplyError::Invalid(_)), "{case}: {err}");
            let refused = report.borrow().clone();
            assert_eq!(refused.state, PlanState::Refused, "{case}");
            assert_eq!(refused.steps[0].name, "plan");
            assert!(
                refused.steps[0]
                    .message
                    .as_deref()
                    .unwrap()
                    .contains("invalid plan")
            );
        }
        assert!(!host.path("etc").exists(), "nothing was written");
        assert!(supervisor.names().is_empty());
        assert_eq!(source.fetches(), 0);
    }

    #[test]
    fn fingerprints_follow_the_definition_and_the_inputs_content() {
        let mut plan = Plan {
            files: vec![
                file("/etc/a.conf".into(), "a"),
                file("/etc/b.conf".into(), "b"),
            ],
            ..Plan::default()
        };
        let reader = service("svc", vec!["/bin/svc".into()], vec!["/etc/a.conf".into()]);
        let before = fingerprint(&reader, &plan);
        plan.files[1].content = "b2".into();
        assert_eq!(
            fingerprint(&reader, &plan),
            before,
            "b.conf is not an input"
        );
        plan.files[0].content = "a2".into();
        let after = fingerprint(&reader, &plan);
        assert_ne!(after, before);
        let mut other = reader.clone();
        other.env.insert("X".into(), "1".into());
        assert_ne!(fingerprint(&other, &plan), after);
    }
}
