//! A throwaway HAProxy: Debian's `haproxy` in the foreground, balancing TCP connections on one
//! port over the servers given, each health-checked; its log (a line per connection, naming the
//! server that took it) in a temporary directory; stopped when dropped.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// How long HAProxy may take to start.
const START: Duration = Duration::from_secs(10);

pub struct HaProxy {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl HaProxy {
    /// Balances connections to 127.0.0.1:`port` round-robin over `servers` (name, address), as
    /// an operator puts one in front of controller replicas: a connection a server refuses is
    /// sent to the next one, and a server failing its checks is left out until it passes again.
    pub fn start(port: u16, servers: &[(&str, SocketAddr)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let lines: String = servers
            .iter()
            .map(|(name, addr)| {
                format!("    server {name} {addr} check inter 500ms fall 2 rise 2\n")
            })
            .collect();
        let config = format!(
            "global\n    log stdout format raw local0\n\
             defaults\n    mode tcp\n    log global\n    option tcplog\n    timeout connect 1s\n    \
             timeout client 1m\n    timeout server 1m\n    retries 3\n    option redispatch 1\n\
             frontend api\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n{lines}"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config)?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("HAProxy is not installed: run `apt-get install -y haproxy`")?;
        let mut me = Self { child, dir, port };
        let log = me.dir.path().join("haproxy.log");
        crate::wait_ready(
            "haproxy",
            &mut me.child,
            START,
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )?;
        Ok(me)
    }

    /// What it logged: a line per connection, with `<backend>/<server>` that took it.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// How many connections the server `name` took (its health checks aside).
    pub fn connections_to(&self, name: &str) -> usize {
        let server = format!(" api replicas/{name} ");
        self.log().lines().filter(|l| l.contains(&server)).count()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
