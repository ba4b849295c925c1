//! qb's cluster DNS: the zone the Kubernetes DNS specification defines, built from the
//! cluster's objects ([`zone`]), kept current by watching them ([`watch`]), and the server that
//! answers from it and forwards every other name to the host's resolvers ([`server`]), writing
//! its responses from bytes prepared with each snapshot (`wire`).

pub mod server;
pub mod watch;
mod wire;
pub mod zone;

/// For the fuzzer (`cargo xtask fuzz`): answers `query` from a small zone by both paths and
/// panics where they differ.
#[cfg(fuzzing)]
pub fn fuzz_query(query: &[u8]) {
    wire::fuzz(query);
}
