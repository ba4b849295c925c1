//! The lab of hosts (network namespaces on a private bridge) comes from `qb-lab`; here is its
//! self-check.

use std::process::Command;

use qb_lab::Lab;

/// The lab's own self-check: a panicking test leaves nothing behind, processes included.
#[test]
fn the_lab_is_torn_down_even_when_the_test_panics() {
    let (k, pid) = {
        let lab = Lab::new(2).expect("the lab");
        let k = lab.k();
        assert_eq!(lab.leftovers().len(), 5, "{:?}", lab.leftovers());
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", &lab.netns(1), "sleep", "60"])
            .spawn()
            .expect("start a process in the namespace");
        let pid = sleeper.id().to_string();
        crate::harness::poll(
            "the process to be in the namespace",
            crate::harness::SHORT,
            || {
                if lab.pids(1).contains(&pid) {
                    Ok(())
                } else {
                    Err(format!("{:?}", lab.pids(1)))
                }
            },
        );
        let lab_in_a_panic = std::panic::AssertUnwindSafe(lab);
        let result = std::panic::catch_unwind(move || {
            let _lab = lab_in_a_panic;
            panic!("a test fails half-way");
        });
        assert!(result.is_err());
        // Reap our child; the lab's teardown killed it.
        let status = crate::harness::poll("the process to end", crate::harness::SHORT, || {
            sleeper
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_owned())
        });
        assert!(!status.success());
        (k, pid)
    };
    assert_eq!(Lab::existing(k, 2).leftovers(), Vec::<String>::new());
    assert!(!std::path::Path::new("/proc").join(&pid).exists());
}
