//! What the packages hold besides the agent and its config: the systemd unit, the maintainer and
//! install scripts, the README, the manual page, and the deb's copyright file and changelog.
//! Every script is POSIX `sh` and uses only what busybox has, besides the init system's own
//! tools.
//!
//! The scripts of all three formats are assembled from the same fragments. Each fragment takes a
//! `root` prefix for its paths: empty in the deb and rpm (dpkg and rpm run them chrooted into the
//! target), `$root` in the tarball's scripts (the optional `QB_ROOT` to install under). The deb's
//! scripts go through Debian's `deb-systemd-helper` (enable, mask, purge: it works with or
//! without systemd running) and `deb-systemd-invoke` (start, stop: it asks the host's
//! `policy-rc.d`, which image builds use to keep services from starting), as debhelper's do.

/// The systemd unit (the same in every format).
pub(crate) const UNIT: &str = "\
[Unit]
Description=qb agent: runs this host's part of the clusters its qb controller manages
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=/usr/bin/qb-agent --config /etc/qb-agent/config.toml
Restart=always
RestartSec=5
# The cluster components the agent supervises outlive an agent restart or upgrade: stopping
# the agent stops only the agent.
KillMode=process
StateDirectory=qb-agent
StateDirectoryMode=0700

[Install]
WantedBy=multi-user.target
";

/// The one-line summary of the package.
pub(crate) const SUMMARY: &str = "Node agent of qb, preconfigured for one qb controller";

/// The longer description, one paragraph.
pub(crate) const DESCRIPTION: &str = "qb-agent joins this host to the qb controller it was \
downloaded from, which then manages the Kubernetes clusters placed on it. The package holds the \
agent, its systemd unit and its configuration, which includes a bootstrap secret.";

/// The Debian `Description` field: the summary, then the description folded into lines starting
/// with a space.
pub(crate) fn debian_description() -> String {
    let mut out = String::from(SUMMARY);
    for line in fold(DESCRIPTION) {
        out.push_str("\n ");
        out.push_str(&line);
    }
    out
}

/// The RPM description: folded, as rpmlint wants lines of at most 79 characters.
pub(crate) fn rpm_description() -> String {
    fold(DESCRIPTION).join("\n")
}

/// `text`'s words in lines of at most 78 characters.
fn fold(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > 78 {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Make the state directory.
fn make_state_dir(root: &str) -> String {
    format!(
        r#"mkdir -p -m 0700 "{root}/var/lib/qb-agent"
chmod 0700 "{root}/var/lib/qb-agent"
"#
    )
}

/// Without systemd: say how to start the agent.
const NOT_STARTED: &str = r#"echo "qb-agent: systemd is not running on this host, so qb-agent was not started."
echo "qb-agent: start it as root, and have the host's init system start it at boot:"
echo "qb-agent:     /usr/bin/qb-agent --config /etc/qb-agent/config.toml"
"#;

/// Without systemd: say that stopping the agent is the administrator's.
const NOT_STOPPED: &str = r#"echo "qb-agent: systemd is not running on this host: stop qb-agent if you started it by hand."
"#;

/// After the files are in place: make the state directory; with systemd, enable and start the
/// agent on a first install and restart it (if it runs) on an upgrade; without, say how to start
/// it. `upgrade` is a shell condition that holds on an upgrade.
fn after_install(root: &str, upgrade: &str) -> String {
    format!(
        r#"{state}if [ -d "{root}/run/systemd/system" ]; then
    systemctl daemon-reload || true
    if {upgrade}; then
        systemctl try-restart qb-agent.service || true
    else
        systemctl enable --now qb-agent.service ||
            echo "qb-agent: could not enable and start qb-agent.service; see: systemctl status qb-agent.service" >&2
    fi
else
{not_started}fi
"#,
        state = make_state_dir(root),
        not_started = indent(NOT_STARTED, 4),
    )
}

/// Before the files go: stop and disable the agent.
fn before_remove(root: &str) -> String {
    format!(
        r#"if [ -d "{root}/run/systemd/system" ]; then
    systemctl disable --now qb-agent.service || true
else
{not_stopped}fi
"#,
        not_stopped = indent(NOT_STOPPED, 4),
    )
}

/// After the files are gone: let systemd forget the unit.
fn after_remove(root: &str) -> String {
    format!(
        r#"if [ -d "{root}/run/systemd/system" ]; then
    systemctl daemon-reload || true
fi
"#
    )
}

/// Remove the agent's state and config (its secret) for good.
fn purge(root: &str) -> String {
    format!("rm -rf \"{root}/var/lib/qb-agent\" \"{root}/etc/qb-agent\"\n")
}

fn script(name: &str, body: &str) -> String {
    format!("#!/bin/sh\n# {name} of qb-agent, generated by qb-package.\nset -e\n\n{body}")
}

/// Indents every non-empty line by `n` spaces (to nest a fragment in a `case` or `if`).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

/// Debian `postinst`: `configure [<old version>]`. The unit is enabled whether systemd runs or
/// not (unless the administrator disabled it); where systemd runs, it is started on a first
/// install and restarted on an upgrade unless disabled, as debhelper's scripts do.
pub(crate) fn deb_postinst() -> String {
    let configure = format!(
        r#"{state}deb-systemd-helper unmask qb-agent.service >/dev/null || true
if deb-systemd-helper --quiet was-enabled qb-agent.service; then
    deb-systemd-helper enable qb-agent.service >/dev/null || true
else
    deb-systemd-helper update-state qb-agent.service >/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "${{2:-}}" ]; then
        deb-systemd-invoke restart qb-agent.service || true
    else
        deb-systemd-invoke start qb-agent.service ||
            echo "qb-agent: could not start qb-agent.service; see: systemctl status qb-agent.service" >&2
    fi
else
{not_started}fi
"#,
        state = make_state_dir(""),
        not_started = indent(NOT_STARTED, 4),
    );
    let body = format!(
        "case \"$1\" in\nconfigure)\n{}    ;;\nesac\n\nexit 0\n",
        indent(&configure, 4)
    );
    script("postinst", &body)
}

/// Debian `prerm`: `remove` stops the agent; `upgrade <new version>` leaves it to the new
/// postinst, which restarts it.
pub(crate) fn deb_prerm() -> String {
    let remove = format!(
        r#"if [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop qb-agent.service >/dev/null || true
else
{not_stopped}fi
"#,
        not_stopped = indent(NOT_STOPPED, 4),
    );
    let body = format!(
        "case \"$1\" in\nremove)\n{}    ;;\nesac\n\nexit 0\n",
        indent(&remove, 4)
    );
    script("prerm", &body)
}

/// Debian `postrm`: `remove` masks the unit (its links stay until the purge, as the config does),
/// `purge` forgets it and removes the state and config. `deb-systemd-helper` may be gone by then.
pub(crate) fn deb_postrm() -> String {
    let remove = format!(
        r#"{after}if command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask qb-agent.service >/dev/null || true
fi
"#,
        after = after_remove(""),
    );
    let purge = format!(
        r#"if command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge qb-agent.service >/dev/null || true
    deb-systemd-helper unmask qb-agent.service >/dev/null || true
fi
{purge}"#,
        purge = purge(""),
    );
    let body = format!(
        "case \"$1\" in\nremove)\n{}    ;;\npurge)\n{}    ;;\nesac\n\nexit 0\n",
        indent(&remove, 4),
        indent(&purge, 4)
    );
    script("postrm", &body)
}

/// RPM `%post`; `$1` is the number of versions installed once this one is: 1 on a first install.
pub(crate) fn rpm_post() -> String {
    after_install("", "[ \"$1\" -ge 2 ]")
}

/// RPM `%preun`; `$1` is 0 on an erase, 1 on an upgrade.
pub(crate) fn rpm_preun() -> String {
    format!(
        "if [ \"$1\" -eq 0 ]; then\n{}fi\n",
        indent(&before_remove(""), 4)
    )
}

/// RPM `%postun`: an erase is the RPM's only removal, so it purges too.
pub(crate) fn rpm_postun() -> String {
    format!(
        "if [ \"$1\" -eq 0 ]; then\n{}{}fi\n",
        indent(&after_remove(""), 4),
        indent(&purge(""), 4)
    )
}

/// The tarball's `install.sh`.
pub(crate) fn install_sh(version: &str) -> String {
    let body = format!(
        r#"# Installs qb-agent {version} from the directory this script is in:
#   /usr/bin/qb-agent                       (0755)
#   /etc/qb-agent/config.toml               (0600: it holds a secret; an existing one is kept)
#   /etc/systemd/system/qb-agent.service
#   /var/lib/qb-agent                       (0700)
# then enables and starts the agent when systemd runs. Run it as root.
# QB_ROOT=/some/dir installs under /some/dir instead of /; systemd is then used only if
# /some/dir/run/systemd/system exists.

root="${{QB_ROOT:-}}"
root="${{root%/}}"
here=$(cd "$(dirname "$0")" && pwd)

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run me as root (or set QB_ROOT to install under another directory)" >&2
    exit 1
fi

# install_file SOURCE DEST MODE: copies through a private temporary file, then renames it into
# place, so the secret is never readable by others and a running binary is replaced safely.
install_file() {{
    tmp="$2.qb-install.$$"
    (umask 077 && cp "$1" "$tmp")
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}}

upgrade=no
if [ -e "$root/usr/bin/qb-agent" ]; then
    upgrade=yes
fi

mkdir -p "$root/usr/bin" "$root/etc/systemd/system"
mkdir -p -m 0755 "$root/etc/qb-agent"
install_file "$here/qb-agent" "$root/usr/bin/qb-agent" 0755
install_file "$here/qb-agent.service" "$root/etc/systemd/system/qb-agent.service" 0644
config="$root/etc/qb-agent/config.toml"
if [ -e "$config" ] && ! cmp -s "$here/config.toml" "$config"; then
    install_file "$here/config.toml" "$config.new" 0600
    echo "install.sh: kept the existing /etc/qb-agent/config.toml; this package's is /etc/qb-agent/config.toml.new"
else
    install_file "$here/config.toml" "$config" 0600
fi

{after}
echo "install.sh: qb-agent {version} installed"
"#,
        after = after_install("$root", "[ \"$upgrade\" = yes ]"),
    );
    script("install.sh", &body)
}

/// The tarball's `uninstall.sh`: undoes `install.sh`, config and state included.
pub(crate) fn uninstall_sh() -> String {
    let body = format!(
        r#"# Removes what install.sh installed, including the config (with its secret) and the agent's
# state in /var/lib/qb-agent. Run it as root. QB_ROOT works as for install.sh.

root="${{QB_ROOT:-}}"
root="${{root%/}}"

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run me as root (or set QB_ROOT to uninstall from another directory)" >&2
    exit 1
fi

{before}
rm -f "$root/usr/bin/qb-agent" "$root/etc/systemd/system/qb-agent.service"

{after}
{purge}
echo "uninstall.sh: qb-agent removed"
"#,
        before = before_remove("$root"),
        after = after_remove("$root"),
        purge = purge("$root"),
    );
    script("uninstall.sh", &body)
}

/// The tarball's README.
pub(crate) fn readme(version: &str) -> String {
    format!(
        r#"qb-agent {version}
{underline}

{DESCRIPTION}

This directory holds:

  qb-agent           the agent
  config.toml        its configuration: the controller's address, the certificates to trust and
                     a bootstrap token. The token is a secret: keep this file private (mode 0600).
  qb-agent.service   the systemd unit
  install.sh         installs all of the above (run it as root)
  uninstall.sh       removes the agent, its configuration and its state

Install:

  sudo ./install.sh

This puts the agent in /usr/bin/qb-agent, its configuration in /etc/qb-agent/config.toml, the unit
in /etc/systemd/system/qb-agent.service, makes /var/lib/qb-agent for its state and, when the host
runs systemd, enables and starts it (see: systemctl status qb-agent). Without systemd, start it
as root and have the host's init system start it at boot:

  /usr/bin/qb-agent --config /etc/qb-agent/config.toml

An existing /etc/qb-agent/config.toml is kept; the new one is then written next to it as
config.toml.new.

Uninstall:

  sudo ./uninstall.sh

Debian, Ubuntu, Fedora, RHEL and SUSE hosts can install the .deb or .rpm package from the same
controller instead.
"#,
        underline = "=".repeat("qb-agent ".len() + version.len()),
    )
}

/// The date of the man page and of the changelog entry: [`crate::MTIME`]'s.
const DATE: &str = "2025-01-01";
/// [`crate::MTIME`] as Debian's changelog writes dates (RFC 2822).
const CHANGELOG_DATE: &str = "Wed, 01 Jan 2025 00:00:00 +0000";

/// The agent's manual page, `qb-agent(1)`, in roff.
pub(crate) fn man_page(version: &str) -> String {
    format!(
        r#".TH QB\-AGENT 1 "{DATE}" "qb\-agent {version}" "qb"
.SH NAME
qb\-agent \- the qb node agent
.SH SYNOPSIS
.B qb\-agent
.RB [ \-\-config
.IR file ]
.RB [ run | facts | check\-config ]
.SH DESCRIPTION
.B qb\-agent
joins this host to the qb controller its configuration names, which then manages the
Kubernetes clusters placed on it. It registers with the configuration's bootstrap token, then
keeps one outbound, mutually authenticated connection to the controller and does the host's
part of its clusters.
.PP
The package that installed it also installed its configuration and its systemd unit,
.BR qb\-agent.service .
Without systemd, run it as root and have the host's init system start it at boot.
.SH COMMANDS
.TP
.B run
Run the agent (the default).
.TP
.B facts
Print the facts the agent reports about this host, as JSON.
.TP
.B check\-config
Check the configuration file and exit.
.SH OPTIONS
.TP
.BI \-\-config " file"
The configuration file (default:
.IR /etc/qb\-agent/config.toml ).
.TP
.BR \-h ", " \-\-help
Print the usage and exit.
.TP
.BR \-V ", " \-\-version
Print the version and exit.
.SH ENVIRONMENT
.TP
.B QB_AGENT_CONFIG
The configuration file, when
.B \-\-config
is not given.
.TP
.B QB_LOG
What the agent logs to its standard error, as a tracing filter (default:
.BR info ).
.SH FILES
.TP
.I /etc/qb\-agent/config.toml
The configuration: the controller's address, the certificates to trust and a bootstrap token,
which is a secret (mode 0600).
.TP
.I /var/lib/qb\-agent
The agent's state: its key, its certificate, the host's identity.
.SH SEE ALSO
.BR systemctl (1)
"#
    )
}

/// The deb's `copyright` file, in Debian's machine-readable format (DEP-5).
pub(crate) fn debian_copyright() -> String {
    format!(
        r#"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: qb
Comment: qb-agent is statically linked with the Rust libraries (crates) it is
 built from, each under its own permissive license.

Files: *
Copyright: 2026 the qb authors
License: {LICENSE}

License: {LICENSE}
{APACHE_2_0}"#
    )
}

/// The workspace's license (its SPDX name).
const LICENSE: &str = env!("CARGO_PKG_LICENSE");

/// The license paragraph's text: the Apache License's notice, and where Debian keeps its text.
const APACHE_2_0: &str = r#" Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
     https://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
"#;

/// The deb's changelog: one entry, for this version (the package is native: no Debian
/// revision).
pub(crate) fn debian_changelog(version: &str) -> String {
    format!(
        "{name} ({version}) stable; urgency=medium\n\n  \
         * qb-agent {version}, packaged by its qb controller.\n\n \
         -- {maintainer}  {CHANGELOG_DATE}\n",
        name = crate::PACKAGE_NAME,
        maintainer = crate::MAINTAINER,
    )
}

/// lintian's overrides for the deb, each with why the tag does not apply.
pub(crate) const LINTIAN_OVERRIDES: &str = "\
# The config holds this host's bootstrap token, a secret: only root may read it.
qb-agent: non-standard-file-perm 0600 != 0644 [etc/qb-agent/config.toml]
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_agent_with_its_config_and_restarts_it() {
        for line in [
            "ExecStart=/usr/bin/qb-agent --config /etc/qb-agent/config.toml",
            "Restart=always",
            "RestartSec=5",
            "KillMode=process",
            "StateDirectory=qb-agent",
            "StateDirectoryMode=0700",
            "WantedBy=multi-user.target",
        ] {
            assert!(UNIT.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn debian_description_is_folded() {
        let d = debian_description();
        let mut lines = d.lines();
        assert_eq!(lines.next(), Some(SUMMARY));
        for line in lines {
            assert!(line.starts_with(' ') && line.len() <= 80, "{line:?}");
        }
    }

    #[test]
    fn dates_are_mtimes() {
        let mtime = time::OffsetDateTime::from_unix_timestamp(i64::from(crate::MTIME)).unwrap();
        let rfc2822 = mtime
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap();
        assert_eq!(CHANGELOG_DATE, rfc2822);
        assert_eq!(DATE, mtime.date().to_string());
    }

    #[test]
    fn the_copyright_file_states_the_workspace_license() {
        // The license paragraph's text is Apache's: a change of license must change it too.
        assert_eq!(LICENSE, "Apache-2.0");
        let copyright = debian_copyright();
        assert!(copyright.contains("\nLicense: Apache-2.0\n Licensed under the Apache License"));
        assert!(
            copyright.lines().skip(1).all(|l| l.len() <= 80),
            "{copyright}"
        );
    }

    #[test]
    fn rpm_description_lines_are_short() {
        assert!(rpm_description().lines().all(|l| l.len() <= 79));
        assert_eq!(
            rpm_description().split_whitespace().collect::<Vec<_>>(),
            DESCRIPTION.split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn scripts_start_with_a_shebang_and_stop_on_errors() {
        for s in [
            deb_postinst(),
            deb_prerm(),
            deb_postrm(),
            install_sh("0.1.0"),
            uninstall_sh(),
        ] {
            assert!(s.starts_with("#!/bin/sh\n"), "{s}");
            assert!(s.contains("\nset -e\n"), "{s}");
        }
    }
}
