//! Supervising the plan's services as native child processes.
//!
//! Each service runs in its own process group, so signals meant for the agent never reach it,
//! with stdout and stderr appended straight to `<logs>/<name>.log` (a file, not a pipe): a
//! service outlives the agent, even one killed with SIGKILL. What the agent needs to find a
//! service again is kept in `<records>/<name>.json` (pid, the process start time that tells a
//! reused pid apart, the service's definition and fingerprint, its restart count), and
//! [`Supervisor::adopt`] re-attaches to those processes after the agent restarts, watching them
//! through a pidfd instead of restarting them: restarting the agent does not restart etcd.
//!
//! A service that exits is restarted per its [`RestartPolicy`] with exponential backoff; its
//! probe runs every few seconds; its log is rotated when it grows too large. Every change of a
//! service's running, healthy or restart state ticks [`Supervisor::changes`].
//!
//! Durable: the records and the logs. Rebuilt at start: everything else (by `adopt`).
//!
//! One long file: starting, adopting, watching and stopping a process share the one rule that
//! a pid is trusted only with its start time (and then through a pidfd); kept together, every
//! path through it can be read against that rule.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use qb_agent_proto::plan::{Probe, RestartPolicy, Service, ServiceName, ServiceReport};
use qb_api::error_chain;
use qb_host::process::ProcStat;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::probe;

/// The `PATH` of services whose plan does not set one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the supervisor keeps its records and the services' logs.
#[derive(Clone, Debug)]
pub struct SupervisorDirs {
    /// `<name>.json` per service: what [`Supervisor::adopt`] needs after a restart.
    pub records: PathBuf,
    /// `<name>.log` per service, rotated to `<name>.log.1` ... `.N`.
    pub logs: PathBuf,
}

/// Tunables; the defaults suit production, tests shrink them.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A log larger than this is rotated.
    pub log_max_bytes: u64,
    /// Rotated logs kept (`.1` is the newest).
    pub log_generations: u32,
    /// How often services are probed and their logs checked.
    pub check_interval: Duration,
    /// How long one probe may take.
    pub probe_timeout: Duration,
    /// The first restart delay; it doubles with every quick exit ...
    pub backoff_initial: Duration,
    /// ... up to this ...
    pub backoff_max: Duration,
    /// ... and starts over once a process ran this long.
    pub backoff_reset_after: Duration,
    /// How long a service has after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            log_max_bytes: 10 * 1024 * 1024,
            log_generations: 3,
            check_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`Supervisor::ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The service was not supervised; now it runs.
    Started,
    /// Its fingerprint changed: the old process was stopped and a new one started.
    Restarted,
    /// Already supervised with this fingerprint; nothing done.
    Unchanged,
}

/// What went wrong supervising a service.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("invalid service name {0:?}: expected [a-z0-9-]+")]
    InvalidName(String),
    #[error("service {0}: the command must start with an absolute program path")]
    BadCommand(String),
    #[error("creating {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting service {name} ({program})")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the record {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the records in {path}")]
    Records {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("service {0} is not supervised")]
    Unknown(String),
    #[error("task {name} failed: {exit}; its log ends with: {log_tail}")]
    TaskFailed {
        name: String,
        exit: String,
        log_tail: String,
    },
    #[error("task {name} did not finish within {waited:?}")]
    TaskTimeout { name: String, waited: Duration },
    #[error("service {name} was not healthy within {waited:?}: {reason}")]
    NotHealthy {
        name: String,
        waited: Duration,
        reason: String,
    },
}

/// Runs and watches the services. Dropping it leaves the services running (see
/// [`Supervisor::adopt`]); [`Supervisor::stop`] ends one.
pub struct Supervisor {
    shared: Arc<Shared>,
}

struct Shared {
    dirs: SupervisorDirs,
    settings: Settings,
    services: Mutex<BTreeMap<String, Entry>>,
    changes: watch::Sender<u64>,
    next_id: Mutex<u64>,
}

/// One supervised service. `id` tells it apart from a later entry of the same name, so the
/// tasks of a replaced entry never touch the new one.
struct Entry {
    id: u64,
    service: Service,
    fingerprint: String,
    status: Status,
    stop: watch::Sender<bool>,
    /// Ends after stopping the process; yields the last pid.
    monitor: Option<JoinHandle<Option<u32>>>,
    checker: Option<JoinHandle<()>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Status {
    pid: Option<u32>,
    running: bool,
    healthy: bool,
    restarts: u32,
    last_exit: Option<String>,
}

/// `<records>/<name>.task`: a task's process while it runs.
#[derive(Debug, Serialize, Deserialize)]
struct TaskRecord {
    pid: u32,
    start_time: u64,
}

/// `<records>/<name>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    service: Service,
    fingerprint: String,
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: with the pid, names one process for the life of the host.
    start_time: u64,
    restarts: u32,
}

impl Supervisor {
    /// Runs a task (a service with `restart: never`) to completion, its output appended to its
    /// log like a service's. `Ok` on exit status 0; a task still running after `timeout` is
    /// killed with its process group. A run of the task that an earlier agent started and
    /// left going (it stopped mid-task) ends first, so that the task never runs twice at once;
    /// how that run ended is unknown, so the task runs again.
    pub async fn run_task(&self, task: &Service, timeout: Duration) -> Result<(), SuperviseError> {
        let record = self.shared.dirs.records.join(format!("{}.task", task.name));
        if let Some(mut earlier) = std::fs::read(&record)
            .ok()
            .and_then(|json| serde_json::from_slice::<TaskRecord>(&json).ok())
            .and_then(|r| Process::adopt(r.pid, r.start_time))
        {
            tracing::info!(task = %task.name, pid = earlier.pid, "waiting for the run an earlier agent started");
            if tokio::time::timeout(timeout, earlier.exited())
                .await
                .is_err()
            {
                terminate(&mut earlier, self.shared.settings.stop_timeout).await;
            }
        }
        let mut process = spawn(&self.shared.dirs, task, |pid, start_time| {
            let json = serde_json::to_vec(&TaskRecord { pid, start_time })
                .expect("records always serialize");
            crate::state::write_private(&record, &json).map_err(|source| SuperviseError::Record {
                path: record.clone(),
                source,
            })
        })?;
        tracing::info!(task = %task.name, pid = process.pid, "task started");
        let result = self.finish_task(task, &mut process, timeout).await;
        remove_file(&record);
        result
    }

    /// Waits for a task's process to end; kills it after `timeout`.
    async fn finish_task(
        &self,
        task: &Service,
        process: &mut Process,
        timeout: Duration,
    ) -> Result<(), SuperviseError> {
        let Ok(exit) = tokio::time::timeout(timeout, process.exited()).await else {
            terminate(process, self.shared.settings.stop_timeout).await;
            return Err(SuperviseError::TaskTimeout {
                name: task.name.to_string(),
                waited: timeout,
            });
        };
        signal_group(process.pid, Signal::KILL);
        if exit.clean {
            tracing::info!(task = %task.name, "task done");
            return Ok(());
        }
        let log = std::fs::read_to_string(log_path(&self.shared.dirs.logs, &task.name))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        Err(SuperviseError::TaskFailed {
            name: task.name.to_string(),
            exit: exit.description,
            log_tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        })
    }

    /// A supervisor with the default [`Settings`]; creates the directories.
    pub fn new(dirs: SupervisorDirs) -> Result<Arc<Self>, SuperviseError> {
        Self::with_settings(dirs, Settings::default())
    }

    /// A supervisor with the given [`Settings`]; creates the directories.
    pub fn with_settings(
        dirs: SupervisorDirs,
        settings: Settings,
    ) -> Result<Arc<Self>, SuperviseError> {
        for dir in [&dirs.records, &dirs.logs] {
            std::fs::create_dir_all(dir).map_err(|source| SuperviseError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                dirs,
                settings,
                services: Mutex::default(),
                changes: watch::Sender::new(0),
                next_id: Mutex::new(0),
            }),
        }))
    }

    /// Re-attaches to the services a previous agent process started: those with a record whose
    /// process still runs (same pid and start time). Records of processes that are gone (or
    /// whose pid now names another process) are deleted; the next [`Supervisor::ensure`]
    /// starts those services again. Returns the names adopted. Call it inside the runtime,
    /// before the first `ensure`.
    pub fn adopt(&self) -> Result<Vec<String>, SuperviseError> {
        let dir = &self.shared.dirs.records;
        let entries = std::fs::read_dir(dir).map_err(|source| SuperviseError::Records {
            path: dir.clone(),
            source,
        })?;
        let mut adopted = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = record_name(&path) else {
                continue;
            };
            if self.shared.lock().contains_key(&name) {
                continue;
            }
            match self.adopt_one(&name, &path) {
                Ok(true) => adopted.push(name),
                Ok(false) => remove_file(&path),
                Err(reason) => {
                    tracing::warn!(service = %name, %reason, "not adopting");
                    remove_file(&path);
                }
            }
        }
        Ok(adopted)
    }

    /// `Ok(false)`: the recorded process is gone.
    fn adopt_one(&self, name: &str, path: &Path) -> Result<bool, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading the record: {e}"))?;
        let record: Record =
            serde_json::from_str(&text).map_err(|e| format!("damaged record: {e}"))?;
        if record.service.name != name {
            return Err(format!("the record is for {:?}", record.service.name));
        }
        let Some(process) = Process::adopt(record.pid, record.start_time) else {
            tracing::info!(service = %name, pid = record.pid, "the recorded process is gone");
            return Ok(false);
        };
        tracing::info!(service = %name, pid = record.pid, "adopted a running service");
        self.supervise(record.service, record.fingerprint, record.restarts, process);
        Ok(true)
    }

    /// Makes `service` run with `fingerprint` (a digest of its definition and inputs): starts it
    /// when it is not supervised, restarts it when its fingerprint changed, else does nothing.
    pub async fn ensure(
        &self,
        service: &Service,
        fingerprint: &str,
    ) -> Result<Change, SuperviseError> {
        validate(service)?;
        let old = {
            let mut services = self.shared.lock();
            match services.get(service.name.as_str()) {
                Some(entry) if entry.fingerprint == fingerprint => return Ok(Change::Unchanged),
                Some(_) => services.remove(service.name.as_str()),
                None => None,
            }
        };
        let change = match old {
            Some(old) => {
                tracing::info!(service = %service.name, "definition changed, restarting");
                self.shared.finish(old).await;
                self.shared.notify();
                Change::Restarted
            }
            None => Change::Started,
        };
        let process = spawn(&self.shared.dirs, service, |pid, start_time| {
            self.shared
                .write_record(service, fingerprint, pid, start_time, 0)
        })?;
        tracing::info!(service = %service.name, pid = process.pid, "started");
        self.supervise(service.clone(), fingerprint.to_owned(), 0, process);
        Ok(change)
    }

    /// Stops a service: SIGTERM to its process group, SIGKILL after the stop timeout, and its
    /// record removed. `Ok(false)` when it was not supervised (a leftover record is removed,
    /// and its process, if it still runs, stopped too).
    /// Removes the logs of a service that no longer runs (the current one and its rotations).
    pub fn remove_logs(&self, name: &str) -> Result<usize, SuperviseError> {
        check_name(name)?;
        let prefix = format!("{name}.log");
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(&self.shared.dirs.logs) else {
            return Ok(0);
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let rotation = file.strip_prefix(&prefix);
            if rotation.is_some_and(|r| {
                r.is_empty()
                    || r.strip_prefix('.')
                        .is_some_and(|n| n.parse::<u32>().is_ok())
            }) {
                remove_file(&entry.path());
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub async fn stop(&self, name: &str) -> Result<bool, SuperviseError> {
        check_name(name)?;
        let entry = self.shared.lock().remove(name);
        let Some(entry) = entry else {
            self.stop_unsupervised(name).await;
            return Ok(false);
        };
        tracing::info!(service = %name, "stopping");
        self.shared.finish(entry).await;
        self.shared.notify();
        Ok(true)
    }

    async fn stop_unsupervised(&self, name: &str) {
        let path = self.shared.record_path(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        if let Ok(record) = serde_json::from_str::<Record>(&text)
            && let Some(mut process) = Process::adopt(record.pid, record.start_time)
        {
            tracing::info!(service = %name, pid = record.pid, "stopping an unsupervised service");
            terminate(&mut process, self.shared.settings.stop_timeout).await;
        }
        remove_file(&path);
    }

    /// The services supervised now, by name.
    pub fn names(&self) -> Vec<String> {
        self.shared.lock().keys().cloned().collect()
    }

    /// The state of every supervised service, by name.
    pub fn reports(&self) -> Vec<ServiceReport> {
        self.shared
            .lock()
            .values()
            .map(|entry| ServiceReport {
                name: entry.service.name.to_string(),
                running: entry.status.running,
                healthy: entry.status.healthy,
                restarts: entry.status.restarts,
                pid: entry.status.pid,
                last_exit: entry.status.last_exit.clone(),
            })
            .collect()
    }

    /// Ticks whenever a service starts, stops, restarts or changes health.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Waits until the service runs and its probe passes (at once when it has no probe), probing
    /// every quarter second: the readiness gate before the next service starts.
    pub async fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<(), SuperviseError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (id, status, probe) = {
                let services = self.shared.lock();
                let entry = services
                    .get(name)
                    .ok_or_else(|| SuperviseError::Unknown(name.to_owned()))?;
                (entry.id, entry.status.clone(), entry.service.probe.clone())
            };
            let reason = match (status.running, probe) {
                (true, None) => return Ok(()),
                (true, Some(probe)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let limit = remaining.min(self.shared.settings.probe_timeout);
                    match probe::check(&probe, limit).await {
                        Ok(()) => {
                            self.shared.set_healthy(name, id, true);
                            return Ok(());
                        }
                        Err(e) => error_chain(&e),
                    }
                }
                (false, _) => match status.last_exit {
                    Some(exit) => format!("not running (last exit: {exit})"),
                    None => "not running".to_owned(),
                },
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(SuperviseError::NotHealthy {
                    name: name.to_owned(),
                    waited: timeout,
                    reason,
                });
            }
            tokio::time::sleep(remaining.min(Duration::from_millis(250))).await;
        }
    }

    /// Registers a running process and starts its watcher and checker tasks.
    fn supervise(&self, service: Service, fingerprint: String, restarts: u32, process: Process) {
        let name = service.name.clone();
        let id = self.shared.next_id();
        let (stop, stop_rx) = watch::channel(false);
        let status = Status {
            pid: Some(process.pid),
            running: true,
            healthy: service.probe.is_none(),
            restarts,
            last_exit: None,
        };
        let probe = service.probe.clone();
        // The entry exists before its tasks run, so none of their updates is lost.
        self.shared.lock().insert(
            name.to_string(),
            Entry {
                id,
                service: service.clone(),
                fingerprint: fingerprint.clone(),
                status,
                stop,
                monitor: None,
                checker: None,
            },
        );
        let monitor = tokio::spawn(monitor(
            self.shared.clone(),
            Watch {
                id,
                service,
                fingerprint,
                restarts,
            },
            process,
            stop_rx,
        ));
        let checker = tokio::spawn(checker(self.shared.clone(), name.to_string(), id, probe));
        if let Some(entry) = self
            .shared
            .lock()
            .get_mut(name.as_str())
            .filter(|e| e.id == id)
        {
            entry.monitor = Some(monitor);
            entry.checker = Some(checker);
        }
        self.shared.notify();
    }
}

impl Drop for Supervisor {
    /// Leaves the processes running: only the agent's tasks end.
    fn drop(&mut self) {
        for entry in self.shared.lock().values() {
            if let Some(monitor) = &entry.monitor {
                monitor.abort();
            }
            if let Some(checker) = &entry.checker {
                checker.abort();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.services
            .lock()
            .expect("no code panics while holding the services lock")
    }

    fn next_id(&self) -> u64 {
        let mut next = self
            .next_id
            .lock()
            .expect("no code panics while holding the id lock");
        *next += 1;
        *next
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Applies `change` to the status of entry `id`, ticking the watch if anything changed.
    fn update(&self, name: &str, id: u64, change: impl FnOnce(&mut Status)) {
        let changed = {
            let mut services = self.lock();
            let Some(entry) = services.get_mut(name).filter(|e| e.id == id) else {
                return;
            };
            let before = entry.status.clone();
            change(&mut entry.status);
            before != entry.status
        };
        if changed {
            self.notify();
        }
    }

    fn set_healthy(&self, name: &str, id: u64, healthy: bool) {
        self.update(name, id, |status| {
            if status.running {
                status.healthy = healthy;
            }
        });
    }

    /// Ends an entry already taken out of the map: its checker, its process, its record.
    async fn finish(&self, mut entry: Entry) {
        if let Some(checker) = entry.checker.take() {
            checker.abort();
        }
        // The receiver may be gone with a monitor that already ended.
        let _ = entry.stop.send(true);
        let last_pid = match entry.monitor.take() {
            Some(monitor) => monitor.await.ok().flatten(),
            None => entry.status.pid,
        };
        let path = self.record_path(&entry.service.name);
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<Record>(&text).ok());
        if recorded.is_none_or(|r| Some(r.pid) == last_pid) {
            remove_file(&path);
        }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dirs.records.join(format!("{name}.json"))
    }

    fn write_record(
        &self,
        service: &Service,
        fingerprint: &str,
        pid: u32,
        start_time: u64,
        restarts: u32,
    ) -> Result<(), SuperviseError> {
        let record = Record {
            service: service.clone(),
            fingerprint: fingerprint.to_owned(),
            pid,
            start_time,
            restarts,
        };
        let path = self.record_path(&service.name);
        let json = serde_json::to_vec_pretty(&record).expect("records always serialize");
        crate::state::write_private(&path, &json)
            .map_err(|source| SuperviseError::Record { path, source })
    }

    fn log_path(&self, name: &str) -> PathBuf {
        log_path(&self.dirs.logs, name)
    }
}

/// What the monitor task needs to know about its service.
struct Watch {
    id: u64,
    service: Service,
    fingerprint: String,
    restarts: u32,
}

/// Watches one service's process: restarts it per its policy with backoff, and stops it when
/// told to. Returns the pid it last ran.
async fn monitor(
    shared: Arc<Shared>,
    mut watch: Watch,
    mut process: Process,
    mut stop: watch::Receiver<bool>,
) -> Option<u32> {
    let name = watch.service.name.clone();
    let settings = shared.settings.clone();
    let mut quick_exits = 0;
    loop {
        let started = Instant::now();
        let exit = tokio::select! {
            exit = process.exited() => exit,
            () = stopped(&mut stop) => {
                terminate(&mut process, settings.stop_timeout).await;
                tracing::info!(service = %name, pid = process.pid, "stopped");
                return Some(process.pid);
            }
        };
        // Whatever the service left behind in its process group goes with it.
        signal_group(process.pid, Signal::KILL);
        let restart = match watch.service.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.clean,
            // Tasks are run by `run_task`, never supervised.
            RestartPolicy::Never => false,
        };
        tracing::warn!(service = %name, pid = process.pid, exit = %exit.description, restart, "service exited");
        shared.update(&name, watch.id, |status| {
            status.running = false;
            status.healthy = false;
            status.last_exit = Some(exit.description);
        });
        if !restart {
            return Some(process.pid);
        }
        if started.elapsed() >= settings.backoff_reset_after {
            quick_exits = 0;
        }
        loop {
            let delay = backoff(&settings, quick_exits);
            quick_exits += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut stop) => return Some(process.pid),
            }
            let restarts = watch.restarts + 1;
            let record = |pid, start_time| {
                shared.write_record(
                    &watch.service,
                    &watch.fingerprint,
                    pid,
                    start_time,
                    restarts,
                )
            };
            match spawn(&shared.dirs, &watch.service, record) {
                Ok(next) => {
                    process = next;
                    watch.restarts = restarts;
                    break;
                }
                Err(e) => {
                    tracing::error!(service = %name, error = %error_chain(&e), "restart failed");
                }
            }
        }
        tracing::info!(service = %name, pid = process.pid, restarts = watch.restarts, "restarted");
        let healthy = watch.service.probe.is_none();
        shared.update(&name, watch.id, |status| {
            status.running = true;
            status.healthy = healthy;
            status.pid = Some(process.pid);
            status.restarts = watch.restarts;
        });
    }
}

/// Resolves once the stop flag is set; never when its sender is gone (the supervisor was
/// dropped: the process must keep running).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The delay before restart number `quick_exits + 1` of a service that keeps exiting quickly.
fn backoff(settings: &Settings, quick_exits: u32) -> Duration {
    settings
        .backoff_initial
        .saturating_mul(1 << quick_exits.min(16))
        .min(settings.backoff_max)
}

/// Probes a service and rotates its log, every check interval, until aborted.
async fn checker(shared: Arc<Shared>, name: String, id: u64, probe: Option<Probe>) {
    let settings = shared.settings.clone();
    let log = shared.log_path(&name);
    let mut tick = tokio::time::interval(settings.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (max, keep, path) = (
            settings.log_max_bytes,
            settings.log_generations,
            log.clone(),
        );
        match tokio::task::spawn_blocking(move || rotate_if_larger(&path, max, keep)).await {
            Ok(Ok(true)) => tracing::debug!(service = %name, "log rotated"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(service = %name, error = %e, "cannot rotate the log"),
            Err(e) => tracing::warn!(service = %name, error = %e, "log rotation task failed"),
        }
        let Some(probe) = &probe else {
            continue;
        };
        let running = shared
            .lock()
            .get(&name)
            .is_some_and(|e| e.id == id && e.status.running);
        if !running {
            continue;
        }
        let healthy = match probe::check(probe, settings.probe_timeout).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(service = %name, error = %error_chain(&e), "probe failed");
                false
            }
        };
        shared.set_healthy(&name, id, healthy);
    }
}

/// A service's process: a child of this agent, or one adopted from a previous agent.
struct Process {
    pid: u32,
    start_time: u64,
    kind: Kind,
}

enum Kind {
    Child(tokio::process::Child),
    /// Not our child: only a pidfd tells when it ends, not how.
    Adopted(AsyncFd<OwnedFd>),
}

struct Exit {
    /// Exit status 0.
    clean: bool,
    description: String,
}

impl Process {
    /// The process `pid` if it still is the one that started at `start_time`, leads its own
    /// process group (as every service does) and has not ended.
    fn adopt(pid: u32, start_time: u64) -> Option<Self> {
        let raw = Pid::from_raw(i32::try_from(pid).ok()?)?;
        // Open the pidfd first: from then on the pid cannot name another process.
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty()).ok()?;
        let stat = ProcStat::read(pid).ok()?;
        if stat.start_time != start_time || stat.state == 'Z' || stat.pgrp != pid {
            return None;
        }
        // Tokio deprecated its safe constructors for types whose descriptor could change or
        // close behind the registration; an `OwnedFd` owned by the `AsyncFd` cannot, and the
        // replacement is `unsafe`, which this workspace forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(pidfd, Interest::READABLE).ok()?;
        Some(Self {
            pid,
            start_time,
            kind: Kind::Adopted(fd),
        })
    }

    /// Waits for the process to end. Cancel-safe.
    async fn exited(&mut self) -> Exit {
        match &mut self.kind {
            Kind::Child(child) => match child.wait().await {
                Ok(status) => Exit {
                    clean: status.success(),
                    description: describe(status),
                },
                Err(e) => Exit {
                    clean: false,
                    description: format!("unknown (waiting failed: {e})"),
                },
            },
            Kind::Adopted(fd) => {
                if let Err(e) = fd.readable().await {
                    tracing::warn!(pid = self.pid, error = %e, "pidfd unusable, polling /proc");
                    while ProcStat::read(self.pid)
                        .is_ok_and(|s| s.start_time == self.start_time && s.state != 'Z')
                    {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Exit {
                    clean: false,
                    description: "exited (status unknown: started by a previous agent)".to_owned(),
                }
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// SIGTERM to the process group, SIGKILL after `timeout`, then SIGKILL to what is left.
async fn terminate(process: &mut Process, timeout: Duration) {
    signal_group(process.pid, Signal::TERM);
    if tokio::time::timeout(timeout, process.exited())
        .await
        .is_err()
    {
        tracing::warn!(
            pid = process.pid,
            ?timeout,
            "no exit after SIGTERM, sending SIGKILL"
        );
        signal_group(process.pid, Signal::KILL);
        process.exited().await;
    }
    signal_group(process.pid, Signal::KILL);
}

/// Signals the process group led by `pid`; a group that is gone is fine.
fn signal_group(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => {
            tracing::warn!(pid = pid.as_raw_nonzero().get(), error = %e, "signalling the process group")
        }
    }
}

/// Starts a service's process in its own process group, its output appended to its log. The
/// program runs only once `record` has kept the process's pid and start time: the process
/// starts as `/bin/sh` waiting for one line on a pipe, which it gets after `record` succeeded,
/// and then becomes the program (`exec`, same pid). An agent killed in between closes the pipe
/// and the shell exits without running the program, so no service ever runs that the next
/// agent could not find again (and would start a second time, its ports taken by the first).
fn spawn(
    dirs: &SupervisorDirs,
    service: &Service,
    record: impl FnOnce(u32, u64) -> Result<(), SuperviseError>,
) -> Result<Process, SuperviseError> {
    let path = log_path(&dirs.logs, &service.name);
    let log_error = |source| SuperviseError::Log {
        path: path.clone(),
        source,
    };
    let stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(log_error)?;
    let stderr = stdout.try_clone().map_err(log_error)?;
    let (program, args) = service
        .command
        .split_first()
        .ok_or_else(|| SuperviseError::BadCommand(service.name.to_string()))?;
    let spawn_error = |source| SuperviseError::Spawn {
        name: service.name.to_string(),
        program: program.clone(),
        source,
    };
    // The shell would only say so in the log, after the fact.
    executable(Path::new(program)).map_err(spawn_error)?;
    let (gate, release) = std::io::pipe().map_err(spawn_error)?;
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", r#"read -r go || exit 125; exec "$@" </dev/null"#])
        .arg(service.name.as_str())
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&service.env)
        .current_dir("/")
        .stdin(gate)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(spawn_error)?;
    let pid = child
        .id()
        .expect("a child that was never waited for has a pid");
    // Until it is reaped, even an exited child has its /proc entry. `exec` keeps the start time.
    let start_time = ProcStat::read(pid).map_err(spawn_error)?.start_time;
    crate::crash::point("service.spawned");
    // On an error the pipe closes unwritten: the shell exits, and tokio reaps it.
    record(pid, start_time)?;
    crate::crash::point("service.recorded");
    if let Err(e) = (&release).write_all(b"go\n") {
        // The shell is gone already: the caller sees the process exit.
        tracing::warn!(service = %service.name, pid, error = %e, "could not release the service");
    }
    Ok(Process {
        pid,
        start_time,
        kind: Kind::Child(child),
    })
}

/// `Ok` when `program` is a file someone may execute.
fn executable(program: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(program)?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not an executable file",
        ))
    }
}

fn log_path(logs: &Path, name: &str) -> PathBuf {
    logs.join(format!("{name}.log"))
}

/// Rotates `log` when it is larger than `max`: `.1` → `.2` ... (keeping `keep`), the log copied
/// to `.1`, then truncated in place, the service writing on with `O_APPEND`. Lines written
/// between the copy and the truncation are lost. `Ok(true)` when it rotated.
pub(crate) fn rotate_if_larger(log: &Path, max: u64, keep: u32) -> std::io::Result<bool> {
    let size = match std::fs::metadata(log) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max || keep == 0 {
        return Ok(false);
    }
    let generation = |n: u32| {
        let mut name = log.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    for n in (1..keep).rev() {
        match std::fs::rename(generation(n), generation(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::copy(log, generation(1))?;
    OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove");
    }
}

/// `<name>` of `<records>/<name>.json`, when it is a valid service name.
fn record_name(path: &Path) -> Option<String> {
    if path.extension()? != "json" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    check_name(name).ok()?;
    Some(name.to_owned())
}

/// Names become file names: a name read from a file or given as text must be a service's
/// (`ServiceName`).
fn check_name(name: &str) -> Result<(), SuperviseError> {
    ServiceName::try_from(name)
        .map(drop)
        .map_err(|_| SuperviseError::InvalidName(name.to_owned()))
}

fn validate(service: &Service) -> Result<(), SuperviseError> {
    match service.command.first() {
        Some(program) if program.starts_with('/') => Ok(()),
        _ => Err(SuperviseError::BadCommand(service.name.to_string())),
    }
}

/// Kills the process group of every recorded service that still runs: what a failed test
/// leaves behind (services outlive their supervisor by design).
#[cfg(test)]
pub(crate) fn kill_recorded(records: &Path) {
    let Ok(entries) = std::fs::read_dir(records) else {
        return;
    };
    for entry in entries.flatten() {
        // A service's record has a task record's fields too.
        if let Ok(text) = std::fs::read_to_string(entry.path())
            && let Ok(record) = serde_json::from_str::<TaskRecord>(&text)
            && ProcStat::read(record.pid)
                .is_ok_and(|s| s.start_time == record.start_time && s.state != 'Z')
        {
            signal_group(record.pid, Signal::KILL);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::process::CommandExt;

    use tokio::net::TcpListener;

    use super::*;

    /// Fast timings, so tests see several restarts, probes and rotations in little time.
    fn fast() -> Settings {
        Settings {
            log_max_bytes: 2_000,
            log_generations: 3,
            check_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            backoff_reset_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(5),
        }
    }

    /// A temporary directory whose recorded services are killed when the test ends.
    struct Root(tempfile::TempDir);

    impl Root {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        /// A supervisor on this root with the [`fast`] timings.
        fn supervisor(&self) -> Arc<Supervisor> {
            Supervisor::with_settings(dirs(self.path()), fast()).unwrap()
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            kill_recorded(&self.path().join("records"));
        }
    }

    fn dirs(root: &Path) -> SupervisorDirs {
        SupervisorDirs {
            records: root.join("records"),
            logs: root.join("logs"),
        }
    }

    fn sh(name: &str, script: &str) -> Service {
        Service {
            name: name.parse().unwrap(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            restart: RestartPolicy::Always,
            probe: None,
            ports: Vec::new(),
            inputs: Vec::new(),
            data_dirs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_task_an_earlier_agent_left_running_ends_before_it_runs_again() {
        let root = Root::new();
        let marker = root.path().join("marker");
        let task = sh(
            "import",
            &format!(
                "echo start >> {m}; sleep 1; echo end >> {m}",
                m = marker.display()
            ),
        );
        let first = root.supervisor();
        // The agent stops mid-task; the task's process goes on.
        let stopped = tokio::time::timeout(
            Duration::from_millis(300),
            first.run_task(&task, Duration::from_secs(10)),
        )
        .await;
        assert!(stopped.is_err(), "the task ended within 300 ms");
        drop(first);

        let next = root.supervisor();
        next.run_task(&task, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "start\nend\nstart\nend\n",
            "two runs of the task overlapped"
        );
        assert!(!root.path().join("records/import.task").exists());
    }

    fn report(supervisor: &Supervisor, name: &str) -> ServiceReport {
        supervisor
            .reports()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap()
    }

    /// Waits (on the change channel) until `done` holds for the service's report.
    async fn until(
        supervisor: &Supervisor,
        name: &str,
        done: impl Fn(&ServiceReport) -> bool,
    ) -> ServiceReport {
        let mut changes = supervisor.changes();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let now = report(supervisor, name);
                if done(&now) {
                    return now;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{name}: condition not reached: {:?}",
                report(supervisor, name)
            )
        })
    }

    /// Whether `pid` is a live (not zombie) process.
    fn alive(pid: u32) -> bool {
        ProcStat::read(pid).is_ok_and(|s| s.state != 'Z')
    }

    /// Waits up to five seconds for `pid` to end (the apply tests use it too).
    pub(crate) async fn until_dead(pid: u32) {
        for _ in 0..200 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("process {pid} still runs");
    }

    async fn read_pid_file(path: &Path) -> u32 {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never appeared", path.display());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let settings = Settings::default();
        let delays: Vec<u64> = (0..8).map(|n| backoff(&settings, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(&settings, u32::MAX), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_crashing_service_is_restarted_with_growing_delays() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let service = sh("crasher", "exit 3");
        assert_eq!(
            supervisor.ensure(&service, "v1").await.unwrap(),
            Change::Started
        );

        // Note when each restart is seen.
        let mut changes = supervisor.changes();
        let mut seen = vec![(0, Instant::now())];
        tokio::time::timeout(Duration::from_secs(20), async {
            while seen.len() < 5 {
                changes.changed().await.unwrap();
                let restarts = report(&supervisor, "crasher").restarts;
                if restarts > seen.last().unwrap().0 {
                    seen.push((restarts, Instant::now()));
                }
            }
        })
        .await
        .unwrap();
        let restarts: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(restarts, [0, 1, 2, 3, 4], "every restart is counted");
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
        // 100 ms, 200 ms, 400 ms, 800 ms (plus the time to start a shell).
        assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
        for pair in gaps[1..].windows(2) {
            assert!(pair[1] > pair[0].mul_f32(1.5), "delays grow: {gaps:?}");
        }
        let now = report(&supervisor, "crasher");
        assert_eq!(now.last_exit.as_deref(), Some("exit status 3"));
        supervisor.stop("crasher").await.unwrap();
    }

    #[tokio::test]
    async fn on_failure_restarts_only_failures() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let mut clean = sh("clean", "exit 0");
        clean.restart = RestartPolicy::OnFailure;
        let mut failing = sh("failing", "exit 1");
        failing.restart = RestartPolicy::OnFailure;
        supervisor.ensure(&clean, "v1").await.unwrap();
        supervisor.ensure(&failing, "v1").await.unwrap();

        until(&supervisor, "failing", |r| r.restarts >= 2).await;
        let clean_now = report(&supervisor, "clean");
        assert!(!clean_now.running && !clean_now.healthy);
        assert_eq!(clean_now.restarts, 0, "a clean exit is not restarted");
        assert_eq!(clean_now.last_exit.as_deref(), Some("exit status 0"));
        // Still supervised with its fingerprint: ensuring it again does not re-run it.
        assert_eq!(
            supervisor.ensure(&clean, "v1").await.unwrap(),
            Change::Unchanged
        );
        for name in supervisor.names() {
            supervisor.stop(&name).await.unwrap();
        }
        assert!(supervisor.names().is_empty());
    }

    #[tokio::test]
    async fn stop_ends_the_whole_process_group_and_forgets_the_service() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let pid_file = root.path().join("grandchild.pid");
        let service = sh(
            "family",
            &format!("sleep 1000 & echo $! > {}; wait", pid_file.display()),
        );
        supervisor.ensure(&service, "v1").await.unwrap();
        let leader = report(&supervisor, "family").pid.unwrap();
        let grandchild = read_pid_file(&pid_file).await;
        assert!(alive(leader) && alive(grandchild));
        let record = root.path().join("records/family.json");
        assert!(record.exists());

        assert!(supervisor.stop("family").await.unwrap());
        until_dead(leader).await;
        until_dead(grandchild).await;
        assert!(!record.exists(), "the record goes with the service");
        assert!(supervisor.names().is_empty());
        assert!(!supervisor.stop("family").await.unwrap(), "already stopped");
    }

    #[tokio::test]
    async fn a_service_ignoring_sigterm_is_killed_after_the_stop_timeout() {
        let root = Root::new();
        let settings = Settings {
            stop_timeout: Duration::from_millis(500),
            ..fast()
        };
        let supervisor = Supervisor::with_settings(dirs(root.path()), settings).unwrap();
        let ready = root.path().join("ready");
        let service = sh(
            "stubborn",
            &format!(
                "trap '' TERM; echo $$ > {}; while :; do sleep 0.05; done",
                ready.display()
            ),
        );
        supervisor.ensure(&service, "v1").await.unwrap();
        let pid = read_pid_file(&ready).await;
        let started = Instant::now();
        supervisor.stop("stubborn").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        until_dead(pid).await;
    }

    #[tokio::test]
    async fn ensure_restarts_only_on_a_new_fingerprint() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let service = sh("web", "exec sleep 1000");
        assert_eq!(
            supervisor.ensure(&service, "v1").await.unwrap(),
            Change::Started
        );
        let first = report(&supervisor, "web").pid.unwrap();
        assert_eq!(
            supervisor.ensure(&service, "v1").await.unwrap(),
            Change::Unchanged
        );
        assert_eq!(report(&supervisor, "web").pid, Some(first));

        assert_eq!(
            supervisor.ensure(&service, "v2").await.unwrap(),
            Change::Restarted
        );
        let second = report(&supervisor, "web");
        assert!(second.running);
        assert_ne!(second.pid, Some(first));
        assert_eq!(second.restarts, 0, "a new definition starts counting anew");
        until_dead(first).await;
        supervisor.stop("web").await.unwrap();

        // A name that is no file name is not a service's name at all; given as text, refused.
        assert!("../etc".parse::<ServiceName>().is_err());
        assert!(matches!(
            supervisor.remove_logs("../etc"),
            Err(SuperviseError::InvalidName(_))
        ));
        let mut relative = service;
        relative.command[0] = "sh".into();
        assert!(matches!(
            supervisor.ensure(&relative, "v1").await,
            Err(SuperviseError::BadCommand(_))
        ));
    }

    #[tokio::test]
    async fn a_new_supervisor_adopts_running_services_and_restarts_them_when_they_exit() {
        let root = Root::new();
        let first = root.supervisor();
        first
            .ensure(&sh("etcd", "exec sleep 1000"), "v1")
            .await
            .unwrap();
        let pid = report(&first, "etcd").pid.unwrap();
        // The agent dies; its services do not.
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(pid));

        let second = root.supervisor();
        assert_eq!(second.adopt().unwrap(), ["etcd"]);
        let adopted = report(&second, "etcd");
        assert_eq!(adopted.pid, Some(pid), "the same process, not a restart");
        assert!(adopted.running && adopted.healthy);
        assert_eq!(adopted.restarts, 0);
        assert_eq!(
            second
                .ensure(&sh("etcd", "exec sleep 1000"), "v1")
                .await
                .unwrap(),
            Change::Unchanged
        );

        // It is watched: when it dies, it is restarted.
        rustix::process::kill_process(
            Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
            Signal::KILL,
        )
        .unwrap();
        let restarted = until(&second, "etcd", |r| r.running && r.pid != Some(pid)).await;
        assert_eq!(restarted.restarts, 1);
        assert!(
            restarted
                .last_exit
                .unwrap()
                .contains("started by a previous agent")
        );
        second.stop("etcd").await.unwrap();
    }

    #[tokio::test]
    async fn a_service_runs_only_once_its_record_is_kept() {
        let root = Root::new();
        let dirs = dirs(root.path());
        std::fs::create_dir_all(&dirs.logs).unwrap();
        let marker = root.path().join("ran");
        let service = sh(
            "etcd",
            &format!("touch {}; exec sleep 1000", marker.display()),
        );

        // Recording fails, as when the agent dies before it could record: the process ends
        // without running the program.
        let mut shell = None;
        let refused = spawn(&dirs, &service, |pid, _| {
            shell = Some(pid);
            Err(SuperviseError::Unknown("etcd".into()))
        });
        assert!(matches!(refused, Err(SuperviseError::Unknown(_))));
        until_dead(shell.unwrap()).await;
        assert!(!marker.exists(), "the program ran unrecorded");

        // Recorded: the recorded pid becomes the program.
        let mut recorded = None;
        let process = spawn(&dirs, &service, |pid, start_time| {
            recorded = Some((pid, start_time));
            Ok(())
        })
        .unwrap();
        assert_eq!(recorded, Some((process.pid, process.start_time)));
        let mut comm = String::new();
        for _ in 0..200 {
            comm = std::fs::read_to_string(format!("/proc/{}/comm", process.pid)).unwrap();
            if marker.exists() && comm.trim() == "sleep" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(marker.exists());
        assert_eq!(comm.trim(), "sleep", "the recorded process is the program");
        signal_group(process.pid, Signal::KILL);
    }

    #[tokio::test]
    async fn a_program_that_cannot_run_is_a_clear_error() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let not_executable = root.path().join("etcd");
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let mut service = sh("etcd", "");
        for program in ["/no/such/etcd", not_executable.to_str().unwrap()] {
            service.command = vec![program.to_owned()];
            let error = supervisor.ensure(&service, "v1").await.unwrap_err();
            assert!(
                matches!(&error, SuperviseError::Spawn { program: p, .. } if p == program),
                "{error:?}"
            );
            assert!(supervisor.names().is_empty());
        }
    }

    #[tokio::test]
    async fn a_record_whose_pid_names_another_process_is_not_adopted() {
        let root = Root::new();
        let supervisor = root.supervisor();
        // Some unrelated process now holds the recorded pid.
        let mut stranger = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = stranger.id();
        let start_time = ProcStat::read(pid).unwrap().start_time;
        let record = Record {
            service: sh("etcd", "exec sleep 1000"),
            fingerprint: "v1".into(),
            pid,
            start_time: start_time + 1,
            restarts: 0,
        };
        let path = root.path().join("records/etcd.json");
        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();

        assert!(supervisor.adopt().unwrap().is_empty());
        assert!(supervisor.names().is_empty());
        assert!(!path.exists(), "the stale record is dropped");

        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(!supervisor.stop("etcd").await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(alive(pid), "the stranger was never signalled");
        assert!(!path.exists());
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[tokio::test]
    async fn output_goes_to_the_log_file_which_rotates_while_the_service_writes() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let service = sh(
            "chatty",
            "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.005; done",
        );
        supervisor.ensure(&service, "v1").await.unwrap();
        let pid = report(&supervisor, "chatty").pid.unwrap();
        let log = root.path().join("logs/chatty.log");
        let generation = |n: u32| root.path().join(format!("logs/chatty.log.{n}"));

        tokio::time::timeout(Duration::from_secs(30), async {
            // Wait for the third rotation, then one more so `.3` is pushed out once.
            while !generation(3).exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let third = std::fs::read(generation(3)).unwrap();
            while std::fs::read(generation(3)).unwrap() == third {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the log was rotated three times and more");

        assert!(!generation(4).exists(), "three generations are kept");
        for n in 1..=3 {
            let old = std::fs::read_to_string(generation(n)).unwrap();
            assert!(old.contains("line "), "{n}: {old:?}");
        }
        // The service writes on into the truncated file, at its start (O_APPEND, no hole).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current = std::fs::read(&log).unwrap();
        assert!(!current.is_empty() && current[0] != 0, "{current:?}");
        assert_eq!(report(&supervisor, "chatty").pid, Some(pid));
        supervisor.stop("chatty").await.unwrap();
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_appended_to_the_log() {
        let root = Root::new();
        let supervisor = root.supervisor();
        let log = root.path().join("logs/talker.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "from before\n").unwrap();
        let mut service = sh("talker", "echo out; echo err >&2; echo $GREETING");
        service.restart = RestartPolicy::OnFailure;
        service.env.insert("GREETING".into(), "hello".into());
        supervisor.ensure(&service, "v1").await.unwrap();
        until(&supervisor, "talker", |r| !r.running).await;
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "from before\nout\nerr\nhello\n"
        );
    }

    #[tokio::test]
    async fn health_follows_the_probe() {
        let root = Root::new();
        let supervisor = root.supervisor();
        // A port nobody listens on yet.
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let mut service = sh("api", "exec sleep 1000");
        service.probe = Some(Probe::Tcp {
            address: address.to_string(),
        });
        supervisor.ensure(&service, "v1").await.unwrap();
        assert!(!report(&supervisor, "api").healthy);

        let err = supervisor
            .wait_healthy("api", Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not healthy") && err.to_string().contains("refused"),
            "{err}"
        );

        let listener = TcpListener::bind(address).await.unwrap();
        supervisor
            .wait_healthy("api", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(report(&supervisor, "api").healthy);

        // The periodic probe notices the service going unhealthy.
        drop(listener);
        until(&supervisor, "api", |r| !r.healthy).await;
        let _listener = TcpListener::bind(address).await.unwrap();
        until(&supervisor, "api", |r| r.healthy).await;

        assert!(matches!(
            supervisor
                .wait_healthy("nope", Duration::from_secs(1))
                .await,
            Err(SuperviseError::Unknown(_))
        ));
        supervisor.stop("api").await.unwrap();
    }
}
