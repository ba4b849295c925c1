//! Reading the services' logs for the controller: the last part of a log, or what follows a
//! place already read (to follow it), always whole lines.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use qb_agent_proto::{LogPiece, LogRequest};

/// The agent's own log, `qb-agent.log` beside the services' (its standard error goes to the
/// host's journal as well).
pub const AGENT: &str = "qb-agent";

/// Opens the agent's own log in `dir` for appending (made if missing; readable by its group,
/// as the services' logs are).
pub fn open_own(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(dir.join(format!("{AGENT}.log")))
}

/// Rotates the agent's own log in `dir` as the services' logs are rotated, until aborted.
pub async fn keep_own_rotated(dir: PathBuf) {
    let settings = crate::supervise::Settings::default();
    let path = dir.join(format!("{AGENT}.log"));
    loop {
        tokio::time::sleep(settings.check_interval).await;
        let (log, max, keep) = (
            path.clone(),
            settings.log_max_bytes,
            settings.log_generations,
        );
        let rotated = tokio::task::spawn_blocking(move || {
            crate::supervise::rotate_if_larger(&log, max, keep)
        })
        .await;
        if let Ok(Err(e)) = rotated {
            tracing::warn!(path = %path.display(), error = %e, "cannot rotate the agent's log");
        }
    }
}

/// The piece of the log of `request.service`, one of `services` (the plan's) or the agent's
/// own ([`AGENT`]), in `dir`.
pub fn read(dir: &Path, services: &[String], request: &LogRequest) -> Result<LogPiece, String> {
    if request.service != AGENT && !services.contains(&request.service) {
        return Err(format!(
            "no service {:?} on this node; it has the logs of {}",
            request.service,
            services
                .iter()
                .map(String::as_str)
                .chain([AGENT])
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let path = dir.join(format!("{}.log", request.service));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // Not started yet: nothing logged.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogPiece {
                text: String::new(),
                start: 0,
                end: 0,
                rotated: false,
            });
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let size = file
        .metadata()
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .len();
    let max = u64::from(request.max_bytes.clamp(1, LogRequest::MAX_BYTES));
    // Copied and truncated when rotated: a place past the end is in an older generation.
    let rotated = request.offset.is_some_and(|o| o > size);
    let (start, tail) = match request.offset {
        Some(offset) if !rotated => (offset, false),
        Some(_) => (0, false),
        None => (size.saturating_sub(max), true),
    };
    // From the end: one byte more, before, says whether the piece begins a line.
    let before = u64::from(tail && start > 0);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(start - before))
        .and_then(|_| file.take(max + before).read_to_end(&mut bytes))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let partial_first = before == 1 && bytes.first() != Some(&b'\n');
    if before == 1 && !bytes.is_empty() {
        bytes.remove(0);
    }
    let (skip, keep) = whole_lines(&bytes, partial_first);
    Ok(LogPiece {
        text: String::from_utf8_lossy(&bytes[skip..keep]).into_owned(),
        start: start + skip as u64,
        end: start + keep as u64,
        rotated,
    })
}

/// The range of `bytes` that holds whole lines: after the first newline when `partial_first`
/// (the read began mid-line), up to and including the last newline.
fn whole_lines(bytes: &[u8], partial_first: bool) -> (usize, usize) {
    let skip = if partial_first {
        bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        0
    };
    let keep = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(skip, |i| (i + 1).max(skip));
    (skip, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(service: &str, offset: Option<u64>, max_bytes: u32) -> LogRequest {
        LogRequest {
            service: service.to_owned(),
            offset,
            max_bytes,
        }
    }

    #[test]
    fn pieces_are_whole_lines_and_follow_the_log_through_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let services = vec!["etcd".to_owned(), "kubelet".to_owned()];
        let log = dir.path().join("etcd.log");
        std::fs::write(&log, "one\ntwo\nthree\nfour, half").unwrap();

        // The end: whole lines only, the half-written one left for later.
        let tail = read(dir.path(), &services, &request("etcd", None, 16)).unwrap();
        assert_eq!(tail.text, "three\n");
        assert_eq!((tail.start, tail.end, tail.rotated), (8, 14, false));
        // Begun mid-line: that line is left out.
        let tail = read(dir.path(), &services, &request("etcd", None, 18)).unwrap();
        assert_eq!((tail.text.as_str(), tail.start), ("three\n", 8));
        // Following on: nothing until the line is whole.
        let next = read(
            dir.path(),
            &services,
            &request("etcd", Some(tail.end), 1000),
        )
        .unwrap();
        assert_eq!((next.text.as_str(), next.end), ("", 14));
        std::fs::write(&log, "one\ntwo\nthree\nfour, half done\nfive\n").unwrap();
        let next = read(dir.path(), &services, &request("etcd", Some(14), 1000)).unwrap();
        assert_eq!(next.text, "four, half done\nfive\n");
        // Rotated (copied away, truncated) and written again: read from its new start.
        std::fs::write(&log, "six\n").unwrap();
        let after = read(
            dir.path(),
            &services,
            &request("etcd", Some(next.end), 1000),
        )
        .unwrap();
        assert_eq!(
            (after.text.as_str(), after.start, after.rotated),
            ("six\n", 0, true)
        );
        // Invalid UTF-8 is replaced, not refused.
        std::fs::write(&log, b"bad \xff byte\n").unwrap();
        assert_eq!(
            read(dir.path(), &services, &request("etcd", None, 100))
                .unwrap()
                .text,
            "bad \u{fffd} byte\n"
        );
        // A service not started yet has an empty log.
        let none = read(dir.path(), &services, &request("kubelet", None, 100)).unwrap();
        assert_eq!(none.text, "");
    }

    #[test]
    fn only_the_plans_services_and_the_agents_own_log_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let services = vec!["etcd".to_owned()];
        for bad in ["../../etc/shadow", "kubelet", "", "qb-agent.log"] {
            let err = read(dir.path(), &services, &request(bad, None, 100)).unwrap_err();
            assert!(
                err.contains("it has the logs of etcd, qb-agent"),
                "{bad}: {err}"
            );
        }
        let err = read(dir.path(), &[], &request("etcd", None, 100)).unwrap_err();
        assert!(err.ends_with("it has the logs of qb-agent"), "{err}");
        // The agent's own log, with or without a plan.
        std::fs::write(dir.path().join("qb-agent.log"), "INFO connected\n").unwrap();
        for services in [&services[..], &[]] {
            let piece = read(dir.path(), services, &request(AGENT, None, 100)).unwrap();
            assert_eq!(piece.text, "INFO connected\n");
        }
    }
}
