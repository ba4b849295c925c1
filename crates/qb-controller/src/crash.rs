//! Crash points: places where a test makes the controller die as `kill -9` would, to show that
//! what it was doing completes, or is undone, once it runs again. `QB_CRASH_AT=<point>` in the
//! controller's environment picks one (a test's doing; unset, a point costs one comparison).
//! Hand-written rather than the `fail` crate: its actions panic, pause or return, and none
//! ends the process on the spot.

use std::sync::OnceLock;

/// Every crash point, in the order an attach and a detach reach them.
pub const POINTS: &[&str] = &[
    // A host's registration committed (node, token use, certificate), not yet answered.
    "register.committed",
    // A cluster's PKI stored, nothing issued from it yet.
    "engine.pki.stored",
    // A node's certificates stored, its plan not yet rendered.
    "engine.certs.stored",
    // A plan stored, its agent not yet told.
    "engine.plan.published",
    // etcd added a learner, the store does not know it yet.
    "engine.etcd.learner_added",
    // etcd promoted a learner, the store does not know it yet.
    "engine.etcd.promoted",
    // A leaving node's etcd member removed, its wipe not yet published.
    "engine.etcd.member_removed",
    // A leaving node wiped and gone from Kubernetes, not yet back in the pool.
    "engine.detach.finishing",
];

/// Dies here if the environment names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(POINTS.contains(&name), "{name} is not in POINTS");
    if AT
        .get_or_init(|| std::env::var("QB_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("crash point {name}: the controller dies here");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
