//! The controller's crash points (see [`qb_host::crash`]): where it dies, with
//! `QB_CRASH_AT=<point>`, with work half done.

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

/// Dies here if the environment names this point (see [`qb_host::crash`]).
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "{name} is not in POINTS");
    qb_host::crash::point(name);
}
