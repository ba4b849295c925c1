//! Processes and memory, as `/proc` shows them (read with the `procfs` crate).

use procfs::FromRead;

/// What the agent keeps of a process: with the pid, `start_time` names one process for the life
/// of the host (a pid is reused, the pair is not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` ... (`Z`: exited, not yet reaped).
    pub state: char,
    /// The process group.
    pub pgrp: u32,
    /// Clock ticks after boot when it started (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

impl ProcStat {
    /// The process's `/proc/<pid>/stat`; an error when it is gone.
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let raw = i32::try_from(pid).map_err(std::io::Error::other)?;
        let stat = procfs::process::Process::new(raw)
            .and_then(|p| p.stat())
            .map_err(|e| std::io::Error::other(format!("/proc/{pid}/stat: {e}")))?;
        Ok(Self::from(stat))
    }

    /// A `/proc/<pid>/stat` line.
    pub fn parse(text: &str) -> Option<Self> {
        procfs::process::Stat::from_read(text.as_bytes())
            .ok()
            .map(Self::from)
    }
}

impl From<procfs::process::Stat> for ProcStat {
    fn from(stat: procfs::process::Stat) -> Self {
        Self {
            state: stat.state,
            pgrp: u32::try_from(stat.pgrp).unwrap_or(0),
            start_time: stat.starttime,
        }
    }
}

/// The command name of a process (`/proc/<pid>/comm`), if it still runs.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// The host's memory and swap, in bytes (0 where `/proc/meminfo` cannot be read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    /// What new work could take without swapping (`MemAvailable`; free memory on kernels
    /// before 3.14, which lack it).
    pub available_bytes: u64,
    pub swap_bytes: u64,
}

impl Memory {
    pub fn read() -> Self {
        std::fs::read("/proc/meminfo")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// A `/proc/meminfo` text; 0 for what it lacks.
    pub fn parse(text: &[u8]) -> Self {
        match procfs::Meminfo::from_read(text) {
            Ok(m) => Self {
                total_bytes: m.mem_total,
                available_bytes: m.mem_available.unwrap_or(m.mem_free),
                swap_bytes: m.swap_total,
            },
            Err(_) => Self::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_from_its_last_parenthesis() {
        // A command name may hold spaces and parentheses.
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!((stat.state, stat.pgrp, stat.start_time), ('S', 4242, 98765));
        assert!(ProcStat::parse("4242 (truncated").is_none());
    }

    #[test]
    fn this_process_is_found_and_has_a_name() {
        let pid = std::process::id();
        let stat = ProcStat::read(pid).unwrap();
        assert_eq!(stat, ProcStat::read(pid).unwrap(), "the same process");
        assert!(comm(pid).is_some_and(|c| !c.is_empty()));
        assert!(Memory::read().total_bytes > 0);
    }

    #[test]
    fn memory_is_in_bytes() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        assert_eq!(Memory::parse(meminfo.as_bytes()).total_bytes, kib * 1024);
        assert_eq!(Memory::parse(b"nonsense"), Memory::default());
    }
}
