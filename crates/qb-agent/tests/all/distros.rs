//! The agent as it ships, on another distribution: a Debian 11 root made with debootstrap
//! (minbase: glibc 2.31, no machine id, no systemd), entered as a lab host is — its own network
//! namespace, and a private mount namespace with its own /proc and /sys — registers with the
//! controller and stays online. `cargo xtask test` makes the root once and caches it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{AgentConfig, Controller, Proc, SHORT, command, poll, run};
use crate::http::online;
use qb_lab::Lab;

#[test]
fn the_shipped_agent_registers_from_a_debian_11_root_without_a_machine_id() {
    let agent = crate::binary::shipped_agent();
    let cached = debian_11_root();
    // Declared first, dropped last: the agent is gone before its root is removed.
    let work = tempfile::tempdir().expect("temp dir");
    let root = work.path().join("root");
    let copy = run(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&cached)
        .arg(&root));
    assert!(copy.status.success(), "{copy:?}");
    std::fs::copy(&agent, root.join("usr/bin/qb-agent")).expect("the agent in the root");
    assert!(
        !root.join("etc/machine-id").exists(),
        "a minbase root has no machine id"
    );

    let lab = Lab::new(1).expect("the lab");
    let controller = Controller::start(&lab.bridge_ip());
    let api = controller.api();
    let token = api.bootstrap_token(1, 1);
    let config = AgentConfig::new(&controller, &token.secret, "bullseye");
    let file = serde_json::json!({
        "controller_url": config.controller_url,
        "ca_pins": config.ca_pins,
        "bootstrap_token": token.secret,
        "state_dir": "/var/lib/qb/agent",
        "node_name": config.node_name,
    });
    std::fs::create_dir_all(root.join("etc/qb")).expect("/etc/qb");
    std::fs::write(
        root.join("etc/qb/agent.toml"),
        toml::to_string(&file).expect("TOML"),
    )
    .expect("the agent's configuration");
    let r = root.display();
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && \
         exec chroot {r} /usr/bin/qb-agent --config /etc/qb/agent.toml"
    );
    let mut cmd = command(Path::new("unshare"), Some(&lab.netns(0)));
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("QB_LOG", "info");
    let (_agent, _stdout) = Proc::spawn("qb-agent in Debian 11", cmd);

    let node = poll("the Debian 11 host online", SHORT, || {
        let node = api.get("/nodes/bullseye");
        (node.status == 200 && online(&node.body))
            .then_some(node.body.clone())
            .ok_or(node.body.to_string())
    });
    let os = node["facts"]["os"].as_str().unwrap_or_default();
    assert!(os.contains("Debian GNU/Linux 11"), "{node}");
    assert!(
        node["facts"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|ip| ip == lab.host_ip(0).as_str())),
        "{node}"
    );
    let own = std::fs::read_to_string(root.join("var/lib/qb/agent/machine-id"))
        .expect("qb's own machine id, made for a host without one");
    assert_eq!(own.trim().len(), 32, "{own}");
}

/// The Debian 11 root `cargo xtask test` makes once (debootstrap minbase, cached), never
/// changed by a test: each copies it.
fn debian_11_root() -> PathBuf {
    let root = std::env::var_os("QB_DEBIAN_11_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "QB_DEBIAN_11_ROOT is not set: run the suite with `cargo xtask test`, or set it \
                 to a root made with `debootstrap --variant=minbase bullseye DIR`"
            )
        });
    assert!(
        root.join("etc/debian_version").exists(),
        "{} is no Debian root",
        root.display()
    );
    root
}
