//! A throwaway DNS resolver: Debian's `unbound` answering records of its own from zones it
//! alone serves, on an address the test chooses, stopped when dropped. Nothing is asked of
//! the internet: names outside those zones are not the tests' business.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// How long unbound may take to start.
const START: Duration = Duration::from_secs(10);

pub struct Unbound {
    child: Child,
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// What it serves.
pub struct Records<'a> {
    /// Zones answered from `data` alone (`local-zone: ... static`), e.g. `example.test.`.
    pub zones: &'a [&'a str],
    /// Records as unbound writes them, e.g. `www.example.test. 60 IN A 192.0.2.10`.
    pub data: &'a [String],
}

impl Unbound {
    /// unbound on `ip`, port `port` (0: one free for UDP and TCP alike), with `threads`
    /// threads, serving `records`; returns once it serves.
    pub fn start(ip: IpAddr, port: u16, threads: u32, records: &Records) -> Result<Self> {
        let port = match port {
            0 => free_port(ip)?,
            port => port,
        };
        let dir = tempfile::tempdir()?;
        let mut config = format!(
            "server:\n  interface: {ip}\n  port: {port}\n  do-daemonize: no\n  use-syslog: no\n  \
             logfile: \"\"\n  verbosity: 1\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  \
             pidfile: \"{dir}/pid\"\n  num-threads: {threads}\n  so-reuseport: yes\n  \
             access-control: 0.0.0.0/0 allow\n  access-control: ::/0 allow\n",
            dir = dir.path().display()
        );
        for zone in records.zones {
            config.push_str(&format!("  local-zone: \"{zone}\" static\n"));
        }
        for record in records.data {
            config.push_str(&format!("  local-data: \"{record}\"\n"));
        }
        config.push_str("remote-control:\n  control-enable: no\n");
        let file = dir.path().join("unbound.conf");
        std::fs::write(&file, config)?;
        let mut child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("unbound is not installed: run `apt-get install -y unbound`")?;
        let stderr = child.stderr.take().context("unbound's stderr")?;
        let me = Self {
            child,
            addr: SocketAddr::new(ip, port),
            _dir: dir,
        };
        // It says when it serves; everything it says is kept for the error.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let serving = line.contains("start of service");
                if tx.send((serving, line)).is_err() {
                    return;
                }
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(START) {
                Ok((true, _)) => return Ok(me),
                Ok((false, line)) => said.push(line),
                Err(_) => bail!("unbound did not start on {}:\n{}", me.addr, said.join("\n")),
            }
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of `ip` free for both UDP and TCP.
fn free_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port of {ip} is free for both UDP and TCP")
}
