//! Crash points: places where a test makes a program die as `kill -9` would, to show that what
//! it was doing completes, or is undone, once it runs again. `QB_CRASH_AT=<point>` in the
//! program's environment picks one (a test's doing; unset, a point costs one comparison). Each
//! program lists its own points.
//!
//! Hand-written rather than the `fail` crate: its actions panic, pause or return, and none
//! ends the process on the spot.

use std::sync::OnceLock;

/// The environment variable that names the point to die at.
pub const ENV: &str = "QB_CRASH_AT";

/// Dies here, with SIGKILL, if the environment names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("crash point {name}: dying here");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
