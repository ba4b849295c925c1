//! `qb agent-package`: agent packages preconfigured for this controller, each with a new bootstrap
//! token inside. The files are secrets: written with mode 0600, never over an existing file unless
//! asked, and never left half-written under their final name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qb_api::CreateBootstrapToken;
use qb_api::endpoints;
use reqwest::header::CONTENT_DISPOSITION;
use serde::Serialize;

use super::App;
use crate::cli::{AgentPackageCommand, DownloadArgs, PackageFormat};
use crate::output;

pub async fn run(app: &App, cmd: AgentPackageCommand) -> anyhow::Result<()> {
    match cmd {
        AgentPackageCommand::Download(args) => download(app, args).await,
    }
}

/// Where the package goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// This file.
    File(PathBuf),
    /// This directory, under the controller's file name.
    Dir(PathBuf),
}

impl Target {
    fn of(arg: Option<&Path>) -> Self {
        match arg {
            None => Self::Dir(PathBuf::new()),
            Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
                Self::Dir(p.to_owned())
            }
            Some(p) => Self::File(p.to_owned()),
        }
    }
}

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
struct Downloaded {
    path: String,
    format: &'static str,
    bytes: u64,
    install: String,
}

async fn download(app: &App, args: DownloadArgs) -> anyhow::Result<()> {
    // Every download mints a bootstrap token: refuse what can be refused before asking for one.
    let target = Target::of(args.output_file.as_deref());
    let dir = match &target {
        Target::File(path) => {
            refuse_to_overwrite(path, args.force)?;
            path.parent().unwrap_or(Path::new(""))
        }
        Target::Dir(dir) => dir.as_path(),
    };
    if !dir.as_os_str().is_empty() && !dir.is_dir() {
        bail!("cannot write into {}: no such directory", dir.display());
    }
    let client = app.client()?;
    let query = [
        ("max_uses", args.max_uses.map(|n| n.to_string())),
        (
            "expires_in_hours",
            args.expires_in_hours.map(|h| h.to_string()),
        ),
    ];
    let package = client.request(&endpoints::AGENT_PACKAGE, &[args.format.as_str()], &query);
    let mut body = client.download(package).await?;
    let path = match target {
        Target::File(path) => path,
        Target::Dir(dir) => {
            let name = body
                .header(CONTENT_DISPOSITION)
                .and_then(attachment_file_name)
                .unwrap_or_else(|| default_file_name(args.format));
            let path = dir.join(name);
            if let Err(e) = refuse_to_overwrite(&path, args.force) {
                bail!(
                    "{e:#}; the bootstrap token made for this download stays unused until it \
                     expires (see `qb token bootstrap list`)"
                );
            }
            path
        }
    };

    let mut file = PrivateFile::create(&path)?;
    let mut head = Vec::new();
    // On Ctrl-C, return so that the partial file (maybe holding the secret already) is removed.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let chunk = tokio::select! {
            chunk = body.chunk() => chunk?,
            Ok(()) = &mut interrupted => bail!("interrupted; nothing was written"),
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.as_ref();
        if head.len() < MAGIC_LEN {
            head.extend(chunk.iter().take(MAGIC_LEN - head.len()));
        }
        file.write(chunk)?;
    }
    if !has_magic(args.format, &head) {
        bail!(
            "the controller's answer is not a {} package (it starts with \"{}\"); nothing was written",
            args.format.as_str(),
            head.escape_ascii()
        );
    }
    let bytes = file.written;
    file.finish(args.force)?;

    let shown = shell_word(&path.to_string_lossy());
    let install = install_command(args.format, &shown);
    let uses = args.max_uses.unwrap_or(CreateBootstrapToken::DEFAULT_USES);
    let hours = args
        .expires_in_hours
        .unwrap_or(CreateBootstrapToken::DEFAULT_HOURS);
    eprintln!(
        "Wrote {shown} ({}B, mode 0600).\n\
         It holds a bootstrap token that lets {} register within {hours} hour{}: keep the file private \
         and delete it once installed.\n\
         Copy it to the host and install it:\n    {install}",
        output::bytes(bytes),
        if uses == 1 {
            "1 host".to_owned()
        } else {
            format!("up to {uses} hosts")
        },
        if hours == 1 { "" } else { "s" },
    );
    if !app.table() {
        let summary = Downloaded {
            path: path.to_string_lossy().into_owned(),
            format: args.format.as_str(),
            bytes,
            install,
        };
        app.out.emit(&summary, String::new)?;
    }
    Ok(())
}

fn refuse_to_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    // symlink_metadata: a dangling link is in the way too.
    if !force && fs::symlink_metadata(path).is_ok() {
        bail!(
            "{} exists; pass --force to replace it, or choose another file with --output-file",
            path.display()
        );
    }
    if force && path.is_dir() {
        bail!("{} is a directory", path.display());
    }
    Ok(())
}

/// How many leading bytes identify a package.
const MAGIC_LEN: usize = 8;

/// Whether `head` starts the way a package of `format` does.
fn has_magic(format: PackageFormat, head: &[u8]) -> bool {
    let magic: &[u8] = match format {
        PackageFormat::Deb => b"!<arch>\n",
        PackageFormat::Rpm => b"\xed\xab\xee\xdb",
        PackageFormat::TarGz => b"\x1f\x8b",
    };
    head.starts_with(magic)
}

/// `qb-agent.deb`: the name when the controller gives none usable.
fn default_file_name(format: PackageFormat) -> String {
    format!("qb-agent.{}", format.as_str())
}

/// The file name of a `content-disposition: attachment; filename="..."` header, made safe to
/// create in the current directory: a plain name (no directories, not hidden, not an option),
/// of letters, digits and `._+~-` only. `filename*=UTF-8''...` is preferred when present.
pub fn attachment_file_name(header: &str) -> Option<String> {
    let params = parameters(header);
    let extended = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("filename*"))
        .and_then(|(_, v)| decode_extended(v));
    let plain = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("filename"))
        .map(|(_, v)| v.clone());
    extended
        .and_then(|name| sanitize_file_name(&name))
        .or_else(|| plain.and_then(|name| sanitize_file_name(&name)))
}

/// The `name=value` parameters after the disposition type; quoted values unquoted.
fn parameters(header: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = header.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        let mut name = String::new();
        for c in chars.by_ref() {
            if c == '=' || c == ';' {
                break;
            }
            name.push(c);
        }
        let name = name.trim().to_owned();
        let mut value = String::new();
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
            // Anything up to the next ';' is garbage.
            for c in chars.by_ref() {
                if c == ';' {
                    break;
                }
            }
        } else {
            for c in chars.by_ref() {
                if c == ';' {
                    break;
                }
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        if !name.is_empty() {
            params.push((name, value));
        }
        if chars.peek().is_none() {
            return params;
        }
    }
}

/// RFC 8187: `UTF-8'lang'percent-encoded`.
fn decode_extended(value: &str) -> Option<String> {
    let (charset, rest) = value.split_once('\'')?;
    let (_lang, encoded) = rest.split_once('\'')?;
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    let mut bytes = Vec::new();
    let mut iter = encoded.bytes();
    while let Some(b) = iter.next() {
        if b == b'%' {
            let hi = iter.next()?;
            let lo = iter.next()?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(&[hi, lo]).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// A name that is safe to create and to paste into a shell command, or `None`.
fn sanitize_file_name(name: &str) -> Option<String> {
    const MAX: usize = 200;
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']);
    let cleaned: String = cleaned.chars().take(MAX).collect();
    cleaned
        .chars()
        .any(|c| c.is_ascii_alphanumeric())
        .then_some(cleaned)
}

/// `s` as one shell word: as is when it has nothing special, else single-quoted. A relative path
/// starting with `-` gets `./`, so no command takes it for an option.
pub(super) fn shell_word(s: &str) -> String {
    let s = if s.starts_with('-') {
        format!("./{s}")
    } else {
        s.to_owned()
    };
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~/:=@%,-".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to install the package at `file` (already a shell word) on a host.
fn install_command(format: PackageFormat, file: &str) -> String {
    match format {
        PackageFormat::Deb => format!("sudo dpkg -i {file}"),
        PackageFormat::Rpm => format!("sudo rpm -i {file}"),
        PackageFormat::TarGz => format!("tar xzf {file} && sudo ./qb-agent-*/install.sh"),
    }
}

/// A file being downloaded: written to a private temporary file beside its destination, which
/// takes the final name only when complete. Removed if dropped before [`PrivateFile::finish`].
pub(super) struct PrivateFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<fs::File>,
    written: u64,
}

impl PrivateFile {
    pub(super) fn create(path: &Path) -> anyhow::Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.part-{}", std::process::id()));
        let open = || {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            options.open(&tmp)
        };
        let file = match open() {
            // A leftover of an earlier run with the same process id.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&tmp);
                open()
            }
            other => other,
        }
        .with_context(|| format!("cannot create {}", path.display()))?;
        // The umask may only have removed bits; make sure of exactly 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", tmp.display()))?;
        }
        Ok(Self {
            path: path.to_owned(),
            tmp,
            file: Some(file),
            written: 0,
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(bytes)
                .with_context(|| format!("cannot write {}", self.tmp.display()))?;
            self.written += bytes.len() as u64;
        }
        Ok(())
    }

    /// Gives the file its name: replacing what is there with `force`, else only if nothing is.
    pub(super) fn finish(mut self, force: bool) -> anyhow::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()
                .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        }
        let placed = if force {
            fs::rename(&self.tmp, &self.path)
        } else {
            // A hard link never replaces anything: the no-clobber rename.
            match fs::hard_link(&self.tmp, &self.path) {
                Ok(()) => fs::remove_file(&self.tmp),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    bail!(
                        "{} appeared while downloading; pass --force to replace it",
                        self.path.display()
                    )
                }
                // A file system without hard links.
                Err(_) if fs::symlink_metadata(&self.path).is_err() => {
                    fs::rename(&self.tmp, &self.path)
                }
                Err(e) => Err(e),
            }
        };
        placed.with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        // After `finish` the temporary name is gone and this fails harmlessly.
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_content_disposition() {
        for (header, name) in [
            (
                r#"attachment; filename="qb-agent_0.1.0_amd64.deb""#,
                Some("qb-agent_0.1.0_amd64.deb"),
            ),
            (
                "attachment; filename=qb-agent-0.1.0-1.x86_64.rpm",
                Some("qb-agent-0.1.0-1.x86_64.rpm"),
            ),
            (
                r#"attachment;filename="qb-agent-0.1.0.tar.gz"; size=3"#,
                Some("qb-agent-0.1.0.tar.gz"),
            ),
            (r#"attachment; filename="a \"b\".deb""#, Some("a__b_.deb")),
            // The extended form wins.
            (
                r#"attachment; filename="fallback.deb"; filename*=UTF-8''qb%2Dagent.deb"#,
                Some("qb-agent.deb"),
            ),
            // Directories, hidden files and options are cut away.
            (r#"attachment; filename="../../etc/cron.d/x""#, Some("x")),
            (r#"attachment; filename="C:\\evil\\q.rpm""#, Some("q.rpm")),
            (r#"attachment; filename=".bashrc""#, Some("bashrc")),
            (r#"attachment; filename="-rf.deb""#, Some("rf.deb")),
            ("attachment; filename=\"a b\tc.deb\"", Some("a_b_c.deb")),
            (r#"attachment; filename="..""#, None),
            (r#"attachment; filename="/""#, None),
            (r#"attachment; filename="""#, None),
            ("attachment", None),
            ("inline; name=x", None),
        ] {
            assert_eq!(attachment_file_name(header).as_deref(), name, "{header}");
        }
        let long = format!(r#"attachment; filename="{}.deb""#, "a".repeat(300));
        assert_eq!(attachment_file_name(&long).map(|n| n.len()), Some(200));
        assert_eq!(default_file_name(PackageFormat::TarGz), "qb-agent.tar.gz");
    }

    #[test]
    fn packages_are_recognized_by_their_first_bytes() {
        assert!(has_magic(PackageFormat::Deb, b"!<arch>\ndebian-binary"));
        assert!(has_magic(PackageFormat::Rpm, b"\xed\xab\xee\xdb\x03\x00"));
        assert!(has_magic(PackageFormat::TarGz, b"\x1f\x8b\x08\x00"));
        assert!(!has_magic(PackageFormat::Deb, b"\x1f\x8b\x08\x00"));
        assert!(!has_magic(PackageFormat::Rpm, b"<html>"));
        assert!(!has_magic(PackageFormat::TarGz, b""));
    }

    #[test]
    fn install_hints_quote_the_file() {
        assert_eq!(
            install_command(PackageFormat::Deb, &shell_word("qb-agent_0.1.0_amd64.deb")),
            "sudo dpkg -i qb-agent_0.1.0_amd64.deb"
        );
        assert_eq!(
            install_command(PackageFormat::Rpm, &shell_word("/tmp/my pkgs/it's.rpm")),
            r"sudo rpm -i '/tmp/my pkgs/it'\''s.rpm'"
        );
        assert_eq!(
            install_command(PackageFormat::TarGz, &shell_word("-x.tar.gz")),
            "tar xzf ./-x.tar.gz && sudo ./qb-agent-*/install.sh"
        );
    }

    #[test]
    fn targets() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(Target::of(None), Target::Dir(PathBuf::new()));
        assert_eq!(
            Target::of(Some(dir.path())),
            Target::Dir(dir.path().to_owned())
        );
        assert_eq!(
            Target::of(Some(Path::new("new/"))),
            Target::Dir(PathBuf::from("new/"))
        );
        let file = dir.path().join("a.deb");
        assert_eq!(Target::of(Some(&file)), Target::File(file.clone()));
    }

    #[test]
    fn files_are_private_complete_and_never_clobbered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.deb");
        let mut f = PrivateFile::create(&path).expect("create");
        f.write(b"!<arch>\n").expect("write");
        assert!(!path.exists(), "not under its name before it is complete");
        f.finish(false).expect("finish");
        assert_eq!(fs::read(&path).expect("read"), b"!<arch>\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(refuse_to_overwrite(&path, false).is_err());
        assert!(refuse_to_overwrite(&path, true).is_ok());

        // Without --force an existing file stays; with it, it is replaced.
        let mut f = PrivateFile::create(&path).expect("create");
        f.write(b"new").expect("write");
        assert!(f.finish(false).is_err());
        assert_eq!(fs::read(&path).expect("read"), b"!<arch>\n");
        let mut f = PrivateFile::create(&path).expect("create");
        f.write(b"new").expect("write");
        f.finish(true).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"new");

        // Abandoned downloads leave nothing behind.
        let other = dir.path().join("b.rpm");
        let mut f = PrivateFile::create(&other).expect("create");
        f.write(b"partial").expect("write");
        drop(f);
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("a.deb")]);
    }
}
