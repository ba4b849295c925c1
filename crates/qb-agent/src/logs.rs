//! Reading the services' logs for the controller: the last part of a log, or what follows a
//! place already read (to follow it), always whole lines.

use std::io::{BufRead as _, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use qb_agent_proto::{LogPiece, LogRequest};
use time::OffsetDateTime;

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
    let (start, tail) = match (request.offset, request.since_seconds) {
        (Some(offset), _) if !rotated => (offset, false),
        (Some(_), _) => (0, false),
        (None, Some(seconds)) => {
            let now = OffsetDateTime::now_utc();
            let since =
                now - time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX / 2));
            let at = first_line_since(&mut file, since, now)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            (at.unwrap_or(size), false)
        }
        (None, None) => (size.saturating_sub(max), true),
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
    let (skip, mut keep) = whole_lines(&bytes, partial_first);
    // A line longer than a whole piece comes in parts, or reading on would never get past it.
    if keep == skip && !tail && bytes.len() as u64 == max {
        keep = bytes.len();
    }
    Ok(LogPiece {
        text: String::from_utf8_lossy(&bytes[skip..keep]).into_owned(),
        start: start + skip as u64,
        end: start + keep as u64,
        rotated,
    })
}

/// Where the first line of `file` written at `since` or later begins; `None` when none was.
/// Lines without a timestamp (a message's continuation) are passed over.
fn first_line_since(
    file: &mut std::fs::File,
    since: OffsetDateTime,
    now: OffsetDateTime,
) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, &*file);
    let mut line = Vec::new();
    let mut at = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        if line_time(&line, now).is_some_and(|t| t >= since) {
            return Ok(Some(at));
        }
        at += n as u64;
    }
}

/// When a log line says it was written: a date and time near its start, as etcd, containerd
/// and the agent write them (`2026-12-06T05:30:00.123Z`, `2026-12-06 05:30:00.123456`, UTC
/// unless an offset follows), or klog's `I1206 05:30:00.123456` at its start, as the Kubernetes
/// components write it (its year taken from `now`).
pub fn line_time(line: &[u8], now: OffsetDateTime) -> Option<OffsetDateTime> {
    let head = &line[..line.len().min(100)];
    let digits = |b: &[u8]| -> Option<u32> {
        b.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let clock = |b: &[u8]| -> Option<time::Time> {
        (b.len() >= 8 && b[2] == b':' && b[5] == b':').then_some(())?;
        let (h, m, s) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
        time::Time::from_hms(h.try_into().ok()?, m.try_into().ok()?, s.try_into().ok()?).ok()
    };
    let month = |m: u32| time::Month::try_from(u8::try_from(m).ok()?).ok();
    // klog: `I1206 05:30:00.123456`
    if head.len() >= 14
        && b"IWEF".contains(&head[0])
        && head[5] == b' '
        && let (Some(m), Some(d), Some(t)) = (
            digits(&head[1..3]).and_then(month),
            digits(&head[3..5]),
            clock(&head[6..]),
        )
    {
        let on = |year| time::Date::from_calendar_date(year, m, u8::try_from(d).ok()?).ok();
        let at = on(now.year())?.with_time(t).assume_utc();
        // Written late in December, read in January.
        if at > now + time::Duration::days(1) {
            return Some(on(now.year() - 1)?.with_time(t).assume_utc());
        }
        return Some(at);
    }
    // `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH:MM]` anywhere near the start.
    (0..head.len().saturating_sub(18)).find_map(|i| {
        let b = &head[i..];
        if !(b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b' ')) {
            return None;
        }
        let date = time::Date::from_calendar_date(
            i32::try_from(digits(&b[0..4])?).ok()?,
            month(digits(&b[5..7])?)?,
            u8::try_from(digits(&b[8..10])?).ok()?,
        )
        .ok()?;
        let at = date.with_time(clock(&b[11..])?);
        let mut rest = &b[19..];
        if rest.first() == Some(&b'.') {
            let fraction = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            rest = &rest[1 + fraction..];
        }
        let offset = match rest {
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2, ..] => {
                let minutes = i64::from(digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?);
                if *sign == b'-' { -minutes } else { minutes }
            }
            _ => 0,
        };
        Some(at.assume_utc() - time::Duration::minutes(offset))
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
            since_seconds: None,
            max_bytes,
        }
    }

    fn at(t: &str) -> OffsetDateTime {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn lines_say_when_they_were_written_in_each_components_own_way() {
        let now = at("2026-12-06T10:00:00Z");
        let cases: [(&str, Option<&str>); 9] = [
            // etcd 3.4 (capnslog)
            (
                "2026-12-06 09:58:01.123456 I | etcdserver: published",
                Some("2026-12-06T09:58:01Z"),
            ),
            // etcd (zap, JSON)
            (
                r#"{"level":"info","ts":"2026-12-06T09:58:02.5+01:00","msg":"x"}"#,
                Some("2026-12-06T08:58:02Z"),
            ),
            // containerd
            (
                r#"time="2026-12-06T09:58:03.123456789Z" level=info msg="loading""#,
                Some("2026-12-06T09:58:03Z"),
            ),
            // the agent (tracing)
            (
                "2026-12-06T09:58:04.000001Z  INFO qb_agent::apply: plan applied",
                Some("2026-12-06T09:58:04Z"),
            ),
            // klog: kubelet, kube-apiserver, ...
            (
                "I1206 09:58:05.123456   4242 server.go:416] Version: v1.20.2",
                Some("2026-12-06T09:58:05Z"),
            ),
            (
                "E1231 23:59:59.000000       1 x.go:1] late last year",
                Some("2025-12-31T23:59:59Z"),
            ),
            // A continuation, and things that only look like times.
            ("    goroutine 1 [running]:", None),
            ("I9999 99:99:99 nonsense", None),
            ("2026-13-40 25:61:00 nonsense", None),
        ];
        for (line, want) in cases {
            assert_eq!(line_time(line.as_bytes(), now), want.map(at), "{line}");
        }
    }

    #[test]
    fn since_starts_at_the_first_line_that_recent() {
        let dir = tempfile::tempdir().unwrap();
        let services = vec!["kubelet".to_owned()];
        let now = OffsetDateTime::now_utc();
        let klog = |ago: i64, what: &str| {
            let t = now - time::Duration::seconds(ago);
            format!(
                "I{:02}{:02} {:02}:{:02}:{:02}.000000   1 x.go:1] {what}\n",
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        };
        let text = [
            klog(3600, "an hour ago"),
            "  a continuation of it\n".to_owned(),
            klog(120, "two minutes ago"),
            "  and its continuation\n".to_owned(),
            klog(5, "just now"),
        ]
        .concat();
        std::fs::write(dir.path().join("kubelet.log"), &text).unwrap();
        let since = |seconds| LogRequest {
            since_seconds: Some(seconds),
            ..request("kubelet", None, 1000)
        };
        let piece = read(dir.path(), &services, &since(600)).unwrap();
        assert!(
            piece.text.starts_with(&klog(120, "two minutes ago")),
            "{piece:?}"
        );
        assert!(piece.text.ends_with("just now\n"), "{piece:?}");
        assert_eq!(piece.end, text.len() as u64);
        // Nothing that recent: an empty piece at the end, to follow from.
        let quiet = read(dir.path(), &services, &since(0)).unwrap();
        assert_eq!((quiet.text.as_str(), quiet.start), ("", text.len() as u64));
        // Longer ago than the log goes: all of it, a piece at a time; a line longer than a
        // piece comes in parts.
        let all = read(
            dir.path(),
            &services,
            &LogRequest {
                max_bytes: 40,
                ..since(86400)
            },
        )
        .unwrap();
        assert_eq!((all.start, all.end), (0, 40));
        assert_eq!(all.text, text[..40]);
        let next = read(
            dir.path(),
            &services,
            &request("kubelet", Some(all.end), 40),
        )
        .unwrap();
        assert_eq!(next.start, 40);
        assert!(
            next.text.starts_with(&text[40..=text.find('\n').unwrap()]),
            "{next:?}"
        );
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
