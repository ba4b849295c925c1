//! Reading the services' logs for the controller: the last part of a log, or what follows a
//! place already read (to follow it), always whole lines.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use qb_agent_proto::{LogPiece, LogRequest};

/// The piece of the log of `request.service`, one of `services` (the plan's), in `dir`.
pub fn read(dir: &Path, services: &[String], request: &LogRequest) -> Result<LogPiece, String> {
    if !services.contains(&request.service) {
        return Err(if services.is_empty() {
            format!("no service {:?}: this node runs none", request.service)
        } else {
            format!(
                "no service {:?} on this node; it runs {}",
                request.service,
                services.join(", ")
            )
        });
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
    fn only_the_plans_services_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let services = vec!["etcd".to_owned()];
        for bad in ["../../etc/shadow", "kubelet", ""] {
            let err = read(dir.path(), &services, &request(bad, None, 100)).unwrap_err();
            assert!(err.contains("it runs etcd"), "{bad}: {err}");
        }
        let err = read(dir.path(), &[], &request("etcd", None, 100)).unwrap_err();
        assert!(err.contains("runs none"), "{err}");
    }
}
