//! Taking down what a cluster's pod network left on the host when the node is wiped: the pod
//! bridge and its pods' veths, the network namespaces the container runtime made for pods, the
//! iptables rules of kube-proxy, the kubelet and the CNI plugins, and the CNI's result cache.
//!
//! Everything is found by name, so nothing of the host's own networking is touched: the bridge
//! is [`qb_api::POD_BRIDGE`]; kube-proxy's and the kubelet's chains are `KUBE-*`, the CNI
//! plugins' `CNI-*` — except those the host had before the cluster came (another Kubernetes,
//! podman's CNI networks), which the agent records then and leaves alone; the CNI caches results
//! under the network's name, `qb`.

use std::collections::BTreeSet;
use std::path::Path;

use tokio::process::Command;

/// The CNI network's name in the plan's configuration: its cached results start with it.
const CNI_NETWORK: &str = "qb";
/// Where libcni caches what each plugin returned.
const CNI_CACHE: &str = "/var/lib/cni";
/// Where the container runtime pins pods' network namespaces (`cni-<uuid>`).
const NETNS_DIR: &str = "/run/netns";
/// Where containerd's CRI plugin keeps a directory per pod sandbox, below its root.
const CRI_SANDBOXES: &str = "io.containerd.grpc.v1.cri/sandboxes";
/// Chains of kube-proxy and the kubelet, and of the CNI plugins (masquerading, port maps).
const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-"];

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {path}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pod sandboxes of the container runtimes whose roots are among `state_dirs` (containerd
/// keeps one directory per sandbox, named by its id): the CNI caches results under their ids.
pub fn sandbox_ids<'d>(state_dirs: impl IntoIterator<Item = &'d str>) -> BTreeSet<String> {
    state_dirs
        .into_iter()
        .flat_map(|d| {
            std::fs::read_dir(Path::new(d).join(CRI_SANDBOXES))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Removes the pod network's interfaces, namespaces, rules and cache (the results of the `qb`
/// network, and any result of `sandboxes`: the runtime's loopback network has its own name).
/// Returns a summary.
pub async fn teardown(
    sandboxes: &BTreeSet<String>,
    foreign: &BTreeSet<String>,
) -> Result<String, TeardownError> {
    let bridge = qb_api::POD_BRIDGE;
    let mut links = 0;
    if let Some(listing) = run_ok("ip", &["-j", "link", "show", "master", bridge]).await? {
        for name in names(&listing) {
            if delete_link(&name).await? {
                links += 1;
            }
        }
    }
    if delete_link(bridge).await? {
        links += 1;
    }
    let namespaces = remove_empty_pod_namespaces().await?;
    let mut rules = 0;
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        rules += remove_chains(save, restore, foreign).await?;
    }
    let cached = remove_cni_cache(Path::new(CNI_CACHE), sandboxes)?;
    Ok(format!(
        "{links} interfaces, {namespaces} pod network namespaces, {rules} iptables lines, {cached} CNI cache entries removed"
    ))
}

/// What of the pod network is still on the host after [`teardown`]: the bridge, interfaces
/// enslaved to it, the cluster's iptables chains and the `qb` network's cached results. Empty
/// when the host is clean.
pub async fn leftovers(foreign: &BTreeSet<String>) -> Result<Vec<String>, TeardownError> {
    let bridge = qb_api::POD_BRIDGE;
    let mut left = Vec::new();
    if run_ok("ip", &["link", "show", "dev", bridge])
        .await?
        .is_some()
    {
        left.push(format!("interface {bridge}"));
    }
    if let Some(listing) = run_ok("ip", &["-j", "link", "show", "master", bridge]).await? {
        left.extend(
            names(&listing)
                .into_iter()
                .map(|n| format!("interface {n}")),
        );
    }
    left.extend(
        cluster_chains_now()
            .await?
            .difference(foreign)
            .map(|c| format!("iptables chain {c}")),
    );
    if let Ok(entries) = std::fs::read_dir(Path::new(CNI_CACHE).join("results")) {
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&format!("{CNI_NETWORK}-")))
                .map(|name| format!("CNI result {name}")),
        );
    }
    Ok(left)
}

/// The chains named like the cluster's (`KUBE-*`, `CNI-*`) the host has now, in either family.
pub async fn cluster_chains_now() -> Result<BTreeSet<String>, TeardownError> {
    let mut chains = BTreeSet::new();
    for save in ["iptables-save", "ip6tables-save"] {
        if let Some(dump) = run_ok(save, &[]).await? {
            chains.extend(cluster_chains(&dump));
        }
    }
    Ok(chains)
}

/// The chains named like the cluster's an `iptables-save` dump declares, once each.
fn cluster_chains(dump: &str) -> BTreeSet<String> {
    dump.lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|decl| decl.split_whitespace().next())
        .filter(|chain| CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// The `ifname`s of `ip -j link` output.
fn names(json: &str) -> Vec<String> {
    let links: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// Deletes a link; `false` when there was none.
async fn delete_link(name: &str) -> Result<bool, TeardownError> {
    if run_ok("ip", &["link", "show", "dev", name])
        .await?
        .is_none()
    {
        return Ok(false);
    }
    run("ip", &["link", "delete", "dev", name]).await?;
    Ok(true)
}

/// Deletes the pods' network namespaces the runtime left pinned (`/run/netns/cni-*`) that hold
/// nothing but loopback once the pods' veths are gone; a namespace of another program's
/// containers keeps its interfaces and is left alone.
async fn remove_empty_pod_namespaces() -> Result<usize, TeardownError> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cni-") {
            continue;
        }
        let Some(listing) = run_ok("ip", &["-n", &name, "-j", "link", "show"]).await? else {
            continue;
        };
        if names(&listing).iter().all(|n| n == "lo") {
            run("ip", &["netns", "delete", &name]).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every chain named with [`CHAIN_PREFIXES`] but the `foreign` ones, its rules and
/// every rule that jumps to it, from every table, in one `*-restore`. Returns how many lines
/// went; 0 without iptables.
async fn remove_chains(
    save: &str,
    restore: &str,
    foreign: &BTreeSet<String>,
) -> Result<usize, TeardownError> {
    let Some(dump) = run_ok(save, &[]).await? else {
        return Ok(0);
    };
    let (kept, removed) = without_cluster_chains(&dump, foreign);
    if removed == 0 {
        return Ok(0);
    }
    let spawn_error = |source| TeardownError::Spawn {
        command: restore.to_owned(),
        source,
    };
    let mut child = Command::new(restore)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin
            .write_all(kept.as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    succeeded(restore.to_owned(), child.wait_with_output().await)?;
    Ok(removed)
}

/// An `iptables-save` dump without the cluster's chains (named with [`CHAIN_PREFIXES`], not
/// `foreign`) and the rules into them, and how many lines went.
fn without_cluster_chains(dump: &str, foreign: &BTreeSet<String>) -> (String, usize) {
    let ours = |chain: &str| {
        CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p)) && !foreign.contains(chain)
    };
    let mut kept = String::with_capacity(dump.len());
    let mut removed = 0;
    for line in dump.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let drop = match words.first() {
            Some(decl) if decl.starts_with(':') => ours(&decl[1..]),
            Some(&"-A") => {
                words.get(1).is_some_and(|c| ours(c))
                    || words
                        .windows(2)
                        .any(|w| matches!(w[0], "-j" | "-g") && ours(w[1]))
            }
            _ => false,
        };
        if drop {
            removed += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    (kept, removed)
}

/// Removes the CNI's cached results (`<network>-<container id>-<interface>`) of the `qb`
/// network and of the runtime's `sandboxes`.
fn remove_cni_cache(cache: &Path, sandboxes: &BTreeSet<String>) -> Result<usize, TeardownError> {
    let results = cache.join("results");
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(&results) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let of_sandbox = name
                .split('-')
                .any(|part| part.len() == 64 && sandboxes.contains(part));
            if name.starts_with(&format!("{CNI_NETWORK}-")) || of_sandbox {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|source| TeardownError::Remove {
                    path: path.display().to_string(),
                    source,
                })?;
                removed += 1;
            }
        }
    }
    // The directories stay: they may be another program's, or have been there before.
    Ok(removed)
}

/// Runs a command; its output, or `None` when it failed or is not installed.
async fn run_ok(program: &str, args: &[&str]) -> Result<Option<String>, TeardownError> {
    match Command::new(program).args(args).output().await {
        Ok(out) if out.status.success() => {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TeardownError::Spawn {
            command: program.to_owned(),
            source,
        }),
    }
}

async fn run(program: &str, args: &[&str]) -> Result<String, TeardownError> {
    let command = format!("{program} {}", args.join(" "));
    let out = succeeded(command, Command::new(program).args(args).output().await)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `command` left, or why it failed: it did not run, or it exited unsuccessfully.
fn succeeded(
    command: String,
    out: std::io::Result<std::process::Output>,
) -> Result<std::process::Output, TeardownError> {
    let out = out.map_err(|source| TeardownError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(TeardownError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clusters_chains_and_the_jumps_into_them_go() {
        let dump = "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:CNI-4f1e2d - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.20.1.0/24 -m comment --comment \"name: qb\" -j CNI-4f1e2d
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A KUBE-SERVICES -d 10.21.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A CNI-4f1e2d -d 10.20.1.0/24 -j ACCEPT
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -p tcp --dport 22 -j ACCEPT
-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
";
        let none = BTreeSet::new();
        let (kept, removed) = without_cluster_chains(dump, &none);
        assert_eq!(removed, 9);
        assert_eq!(
            kept,
            "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 22 -j ACCEPT
COMMIT
"
        );
        // Nothing of the cluster's: nothing to restore, and nothing a wipe's check finds.
        assert_eq!(without_cluster_chains(&kept, &none).1, 0);
        assert_eq!(
            cluster_chains(dump).into_iter().collect::<Vec<_>>(),
            ["CNI-4f1e2d", "KUBE-FIREWALL", "KUBE-SERVICES"]
        );
        assert!(cluster_chains(&kept).is_empty());

        // A chain the host had before the cluster came stays, with its rules and the jumps
        // into it.
        let foreign = BTreeSet::from(["KUBE-FIREWALL".to_owned()]);
        let (kept, removed) = without_cluster_chains(dump, &foreign);
        assert_eq!(removed, 6);
        for stays in [
            ":KUBE-FIREWALL - [0:0]",
            "-A INPUT -j KUBE-FIREWALL",
            "-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP",
        ] {
            assert!(kept.lines().any(|l| l == stays), "{stays} in {kept}");
        }
    }

    #[test]
    fn the_cache_loses_the_qb_networks_results_and_those_of_the_runtimes_sandboxes() {
        let cache = tempfile::tempdir().unwrap();
        let results = cache.path().join("results");
        std::fs::create_dir_all(&results).unwrap();
        let ours = "a".repeat(64);
        let theirs = "b".repeat(64);
        let files = [
            format!("qb-{ours}-eth0"),
            format!("cni-loopback-{ours}-lo"),
            format!("qb-{}-eth0", "c".repeat(64)),
            format!("cni-loopback-{theirs}-lo"),
            format!("podman-{theirs}-eth0"),
        ];
        for f in &files {
            std::fs::write(results.join(f), "{}").unwrap();
        }
        let sandboxes = BTreeSet::from([ours]);
        assert_eq!(remove_cni_cache(cache.path(), &sandboxes).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&results)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [files[3].clone(), files[4].clone()]);
    }

    #[test]
    fn sandboxes_are_found_below_the_runtimes_root() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(CRI_SANDBOXES);
        std::fs::create_dir_all(dir.join("1234")).unwrap();
        std::fs::create_dir_all(dir.join("5678")).unwrap();
        let dirs = [root.path().display().to_string(), "/nonexistent".to_owned()];
        assert_eq!(
            sandbox_ids(dirs.iter().map(String::as_str)),
            BTreeSet::from(["1234".to_owned(), "5678".to_owned()])
        );
    }
}
