//! The agent's crash points (see [`qb_host::crash`]): where it dies, with
//! `QB_CRASH_AT=<point>`, with work half done.

/// Every crash point, in the order a join and a wipe reach them.
pub const POINTS: &[&str] = &[
    // A new plan saved, not yet taken up.
    "plan.kept",
    // An artifact copied into place, its ledger entry not yet stamped.
    "apply.artifact.copied",
    // A plan file written (the ledger recorded it first).
    "apply.file.written",
    // A service's process spawned, held at its gate, not yet recorded.
    "service.spawned",
    // A service recorded, its process not yet let go.
    "service.recorded",
    // A wipe's services stopped, their files not yet removed.
    "apply.wipe.services_stopped",
];

/// Dies here if the environment names this point (see [`qb_host::crash`]).
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "{name} is not in POINTS");
    qb_host::crash::point(name);
}
