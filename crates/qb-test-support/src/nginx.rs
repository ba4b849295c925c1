//! A throwaway nginx: Debian's `nginx` in the foreground with a configuration the caller gives
//! (the body of its `http` block), its files in a temporary directory, stopped when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// How long nginx may take to start.
const START: Duration = Duration::from_secs(10);

pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx with `workers` worker processes and `http` as its `http { }` block (server blocks,
    /// upstreams; access logging is off), returned once `ready_port` on 127.0.0.1 accepts.
    pub fn start(workers: u32, http: &str, ready_port: u16) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        let config = format!(
            "user root;\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}\n}}\n"
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nginx is not installed: run `apt-get install -y nginx`")?;
        let mut me = Self { child, dir };
        let log = me.dir.path().join("error.log");
        crate::wait_ready(
            "nginx",
            &mut me.child,
            START,
            || TcpStream::connect(("127.0.0.1", ready_port)).is_ok(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )?;
        Ok(me)
    }

    /// The master process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master leaves its workers; they exit once they see it gone, but a
        // quick stop (SIGTERM) takes them down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
