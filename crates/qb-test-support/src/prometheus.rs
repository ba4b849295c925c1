//! A throwaway Prometheus server: Debian's `prometheus` with a scrape configuration the caller
//! gives, its data in a temporary directory, stopped when dropped.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How long Prometheus may take to be ready.
const START: Duration = Duration::from_secs(30);

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus with `scrape_configs` (YAML, the list under that key) scraping every second,
    /// returned once it is ready.
    pub fn start(scrape_configs: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = crate::free_port()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("prometheus is not installed: run `apt-get install -y prometheus`")?;
        let mut me = Self { child, port, dir };
        let started = Instant::now();
        while !me.get("/-/ready").is_ok_and(|(status, _)| status == 200) {
            if let Some(status) = me.child.try_wait()? {
                bail!("prometheus exited ({status}): {}", me.log());
            }
            if started.elapsed() > START {
                bail!("prometheus was not ready within {START:?}: {}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// The answer of the query API to `expr` (its JSON, as text).
    pub fn query(&self, expr: &str) -> Result<String> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}"))?;
        if status != 200 {
            bail!("query {expr:?}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// A GET on the server's HTTP API: its status and body.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            // HTTP/1.0: the answer is never chunked.
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
