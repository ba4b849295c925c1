//! The standing lab of `cargo xtask lab`: agents installed from the controller's own tarball
//! register; `down` leaves nothing behind, also after a crash or a failed `up`.

use std::path::{Path, PathBuf};

use qb_lab::Lab;
use qb_lab::standing::{self, Binaries, Options, Record};

use crate::harness::{agent_binary, controller_binary};

pub(crate) fn options(dir: &Path, prefix: &str, hosts: usize, bundle: Option<PathBuf>) -> Options {
    let agent = agent_binary();
    Options {
        dir: dir.to_owned(),
        hosts,
        replicas: 1,
        name_prefix: prefix.to_owned(),
        bundle,
        binaries: Binaries {
            controller: controller_binary(),
            qb: qb_test_support::workspace_binary("qb-cli", "qb", &agent)
                .expect("these tests need qb"),
            agent,
        },
    }
}

fn alive(pid: Option<u32>) -> bool {
    pid.is_some_and(standing::alive)
}

/// Everything of `record`'s lab that is still there: namespaces, links, processes, cgroups,
/// mounts and files.
fn leftovers(record: &Record, dir: &Path) -> Vec<String> {
    let mut left = Lab::existing(record.k, record.hosts.len()).leftovers();
    let pids = record
        .controller_pids()
        .map(Some)
        .chain(record.postgres.as_ref().map(|p| p.pid))
        .chain(record.hosts.iter().map(|h| h.agent_pid));
    left.extend(pids.filter(|p| alive(*p)).map(|p| format!("process {p:?}")));
    for host in &record.hosts {
        left.extend(
            qb_lab::cgroups::node_cgroups(&host.name)
                .into_iter()
                .map(|c| c.display().to_string()),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir_name = dir.display().to_string();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&dir_name))
            .map(str::to_owned),
    );
    if dir.exists() {
        left.push(format!("{} exists", dir.display()));
    }
    left
}

/// Starts a process as the kubelet starts a pod's: in its own network namespace, in the cgroup
/// `/qb/<node>/pod` of the pids hierarchy; its pid.
fn spawn_pod(node: &str) -> u32 {
    let cgroup = Path::new("/sys/fs/cgroup/pids/qb").join(node).join("pod");
    std::fs::create_dir_all(&cgroup).expect("the pod's cgroup");
    let pod = std::process::Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .expect("start the pod");
    // Reaped by a thread once killed, so it does not stay a zombie of the test.
    let pid = pod.id();
    std::thread::spawn(move || {
        let mut pod = pod;
        let _ = pod.wait();
    });
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).expect("move the pod");
    pid
}

#[test]
fn a_standing_lab_installs_agents_from_the_tarball_and_down_leaves_nothing_even_after_a_crash() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("lab");
    let record = standing::up(&options(&dir, "standing", 2, None)).expect("the lab comes up");
    let dir = dir.canonicalize().expect("the lab's directory");

    // Each host got the agent from the tarball's install.sh, with the package's config, and
    // registered under its own host name and machine id.
    for host in &record.hosts {
        let root = standing::host_root(&dir, &host.name);
        assert!(root.join("usr/bin/qb-agent").is_file(), "{}", host.name);
        let config = std::fs::read_to_string(root.join("etc/qb-agent/config.toml"))
            .expect("the package's config");
        assert!(config.contains("bootstrap_token"), "{config}");
        assert!(alive(host.agent_pid), "{}", host.name);
    }
    assert_ne!(record.hosts[0].machine_id, record.hosts[1].machine_id);
    let status = standing::status(&dir).expect("status");
    assert!(status.contains("standing-2"), "{status}");
    assert!(status.contains("link up"), "{status}");

    // A second lab in the same place is refused, and the first is untouched.
    let again =
        standing::up(&options(&dir, "standing", 1, None)).expect_err("one lab per directory");
    assert!(format!("{again:#}").contains("already up"), "{again:#}");
    assert!(alive(record.controller_pid));

    // A cut cable shows in the status; a restarted host gets a new agent.
    standing::cable(&dir, "standing-1", false).expect("cut");
    assert!(
        standing::status(&dir).expect("status").contains("link cut"),
        "the cut shows"
    );
    standing::cable(&dir, "standing-1", true).expect("mend");
    standing::restart(&dir, "standing-2").expect("restart");

    // A pod of standing-1: in a network namespace of its own (the host's process list does not
    // show it), in the host's cgroup.
    let pod = spawn_pod("standing-1");

    // A crash: the controller and an agent die with SIGKILL; `down` still removes everything.
    for pid in [record.controller_pid, record.hosts[0].agent_pid]
        .into_iter()
        .flatten()
    {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
    }
    let left = standing::down(&dir).expect("down");
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(leftovers(&record, &dir), Vec::<String>::new());
    assert!(!alive(Some(pod)), "the pod {pod} survived");
    // And `down` on nothing is no error.
    assert_eq!(
        standing::down(&dir).expect("down again"),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_up_says_why_and_leaves_nothing() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("lab");
    // Everything comes up, then the bundle import fails: there is no such bundle.
    let missing = parent.path().join("no-such-bundle");
    let error =
        standing::up(&options(&dir, "failing", 1, Some(missing))).expect_err("a missing bundle");
    let message = format!("{error:#}");
    assert!(message.contains("no-such-bundle"), "{message}");
    assert!(!dir.exists(), "{} is left", dir.display());
    // A new lab can take its place.
    let record =
        standing::up(&options(&dir, "failing", 1, None)).expect("a lab after the failed one");
    let left = standing::down(&dir).expect("down");
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(leftovers(&record, &dir), Vec::<String>::new());
}

/// `lab up --replicas 2`: two controller replicas share a PostgreSQL server of the lab, one
/// certificate and one secrets key file; when the first dies, the agents move to the second,
/// which `qb` reaches with the same pinned certificate. `down` stops PostgreSQL too.
#[test]
fn a_standing_lab_with_two_replicas_keeps_its_agents_when_one_dies() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().expect("temp dir");
    // PostgreSQL runs as its own user, which must get through to the lab's directory.
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let dir = parent.path().join("lab");
    let mut ha = options(&dir, "ha", 2, None);
    ha.replicas = 2;
    let record = standing::up(&ha).expect("the lab comes up");
    let dir = dir.canonicalize().expect("the lab's directory");
    assert_eq!(record.more_replicas.len(), 1);
    let status = standing::status(&dir).expect("status");
    for part in ["replica 2", "postgres://"] {
        assert!(status.contains(part), "{part} not in {status}");
    }

    // qb logged in to the second replica, pinning the certificate the first made.
    let log = std::fs::read_to_string(dir.join("controller.log")).expect("the log");
    let fingerprint = log
        .lines()
        .find_map(|l| l.strip_prefix("certificate fingerprint "))
        .expect("the fingerprint")
        .trim()
        .to_owned();
    let token = std::fs::read_to_string(standing::controller_dir(&dir).join("admin-token"))
        .expect("the admin token");
    let second = record.more_replicas[0].api_url.clone().expect("its URL");
    let config = dir.join("qb-2.yaml");
    let qb = |args: &[&str]| {
        let out = std::process::Command::new(&ha.binaries.qb)
            .env("QB_CONFIG", &config)
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .expect("qb");
        assert!(out.status.success(), "qb {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    qb(&[
        "login",
        &second,
        "--token",
        token.trim(),
        "--fingerprint",
        &fingerprint,
    ]);

    // The first replica dies; the agents move to the second: each connects once more.
    let connections = |host: &str| {
        std::fs::read_to_string(dir.join("hosts").join(host).join("agent.log"))
            .unwrap_or_default()
            .matches("connected to the controller")
            .count()
    };
    let before: Vec<usize> = record.hosts.iter().map(|h| connections(&h.name)).collect();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &record.controller_pid.expect("a pid").to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    crate::harness::poll(
        "the agents online on the second replica",
        std::time::Duration::from_secs(60),
        || {
            let nodes: serde_json::Value =
                serde_json::from_str(&qb(&["node", "list", "-o", "json"])).expect("JSON");
            let online = nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["agent"]["online"] == true)
                .count();
            let moved = record
                .hosts
                .iter()
                .zip(&before)
                .all(|(h, before)| connections(&h.name) > *before);
            if online == 2 && moved {
                Ok(())
            } else {
                Err(nodes.to_string())
            }
        },
    );

    let left = standing::down(&dir).expect("down");
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(leftovers(&record, &dir), Vec::<String>::new());
}
