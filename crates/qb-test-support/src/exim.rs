//! A throwaway mail server: Debian's Exim (`exim4-daemon-light`) on a loopback port the test
//! gets, offering STARTTLS with the certificate the test gives, accepting mail only from an
//! authenticated user (AUTH PLAIN, after STARTTLS) for its own mailboxes, and delivering it
//! into a Maildir per mailbox that the test reads. Stopped when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The domain its mailboxes are in.
pub const DOMAIN: &str = "mail.test";
/// The system user Debian's package runs Exim as; it owns the spool and the mailboxes.
const EXIM_USER: &str = "Debian-exim";
/// How long Exim may take to start.
const START: Duration = Duration::from_secs(10);

pub struct Exim {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Exim {
    /// Exim serving `mailboxes` (local parts in [`DOMAIN`]) to `user` with `password`, with
    /// the certificate and key (PEM) for STARTTLS.
    pub fn start(
        mailboxes: &[&str],
        user: &str,
        password: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        if !Path::new("/usr/sbin/exim4").exists() {
            bail!("Exim is not installed: run `apt-get install -y exim4-daemon-light`");
        }
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        // Exim's own user reads the key and writes the spool, log and mailboxes.
        run(Command::new("chmod").arg("755").arg(root))?;
        for sub in ["spool", "log", "mail"] {
            std::fs::create_dir(root.join(sub))?;
        }
        std::fs::write(root.join("cert.pem"), cert_pem)?;
        std::fs::write(root.join("key.pem"), key_pem)?;
        for owned in ["spool", "log", "mail", "cert.pem", "key.pem"] {
            run(Command::new("chown")
                .arg(format!("{EXIM_USER}:"))
                .arg(root.join(owned)))?;
        }
        let port = crate::free_port()?;
        let config = CONFIG
            .replace("@ROOT@", &root.display().to_string())
            .replace("@DOMAIN@", DOMAIN)
            .replace("@PORT@", &port.to_string())
            .replace("@USER@", EXIM_USER)
            .replace("@BOXES@", &mailboxes.join(" : "))
            .replace("@AUTH_USER@", &escape(user))
            .replace("@AUTH_PASSWORD@", &escape(password));
        let file = root.join("exim.conf");
        std::fs::write(&file, config)?;
        let child = Command::new("/usr/sbin/exim4")
            .arg("-bdf")
            .arg("-C")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting exim4")?;
        let me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = Instant::now() + START;
        while TcpStream::connect(me.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "Exim did not listen within {START:?}; its log:\n{}",
                    me.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The messages delivered to `mailbox`, each in full (headers and body), oldest first.
    pub fn messages(&self, mailbox: &str) -> Vec<String> {
        let dir = self.dir.path().join("mail").join(mailbox);
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(dir.join(sub)).into_iter().flatten())
            .flatten()
            .map(|e| e.path())
            .collect();
        // Maildir names start with the delivery time: `<seconds>.M<microseconds>P<pid>...`
        // (the microseconds not zero-padded, so compared as numbers).
        let when = |f: &PathBuf| {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let number = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
            let (secs, rest) = name.split_once(".M").unwrap_or((&name, ""));
            let micros = rest.split('P').next().unwrap_or_default();
            (number(secs), number(micros), name.clone())
        };
        files.sort_by_key(when);
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    }

    /// The messages of `mailbox` once it holds at least `count` (Exim delivers a moment after
    /// it accepts); fails after `timeout`, with Exim's log.
    pub fn wait_for(&self, mailbox: &str, count: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages(mailbox);
            if messages.len() >= count {
                return Ok(messages);
            }
            if Instant::now() > deadline {
                bail!(
                    "{mailbox} holds {} message(s), not {count}, after {timeout:?}; Exim's log:\n{}",
                    messages.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What Exim logged: each message received, delivered or refused.
    pub fn log(&self) -> String {
        ["mainlog", "rejectlog", "paniclog"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join("log").join(f)).ok())
            .collect::<Vec<_>>()
            .join("")
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Exim's configuration, `@NAME@` filled in by [`Exim::start`].
const CONFIG: &str = r"primary_hostname = @DOMAIN@
spool_directory = @ROOT@/spool
log_file_path = @ROOT@/log/%slog
pid_file_path = @ROOT@/exim.pid
daemon_smtp_ports = @PORT@
local_interfaces = 127.0.0.1
domainlist local_domains = @DOMAIN@
acl_smtp_rcpt = check_rcpt
tls_advertise_hosts = *
tls_certificate = @ROOT@/cert.pem
tls_privatekey = @ROOT@/key.pem
# AUTH only once the connection is encrypted.
auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}

begin acl
check_rcpt:
  deny    !authenticated = *
  accept  domains = +local_domains
  deny

begin routers
inbox:
  driver = accept
  domains = +local_domains
  local_parts = @BOXES@
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = @ROOT@/mail/$local_part_data
  maildir_format
  create_directory
  envelope_to_add
  user = @USER@

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and{{eq{$auth2}{@AUTH_USER@}}{eq{$auth3}{@AUTH_PASSWORD@}}}}
  server_set_id = $auth2
";

/// `s` as a literal in an Exim string expansion.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = matches!(c, '\\' | '$' | '{' | '}');
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
