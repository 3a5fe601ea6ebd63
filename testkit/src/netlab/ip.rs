//! The `ip` and `tc` commands the lab runs, and the sweep of namespaces
//! that killed earlier test processes left behind.
//!
//! Every lab namespace is named `lfnl-{pid}-{seq}-{what}`, and every lab
//! folder `lorafleet-netlab-{pid}-...`: the pid of the test process that
//! made it, so [`sweep_stale`] and [`sweep_stale_folders`] can tell whose
//! it is.
//! Not here: which namespaces and links a lab has (`super`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// The start of every namespace name a lab makes.
pub(super) const NAMESPACE_PREFIX: &str = "lfnl-";
/// Where `ip netns add` mounts named namespaces.
pub(super) const NETNS_DIR: &str = "/run/netns";

/// Runs `program args`; its stderr as the error when it fails.
pub(super) fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `ip ARGS`; panics with `ip`'s message when it fails (lab set-up).
pub(super) fn ip(args: &[&str]) {
    if let Err(e) = run("ip", args) {
        panic!("netlab: {e}");
    }
}

/// `ip -n NAMESPACE ARGS`; panics when it fails.
pub(super) fn ip_in(namespace: &str, args: &[&str]) {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    ip(&all);
}

/// `tc -n NAMESPACE ARGS`; panics when it fails.
pub(super) fn tc_in(namespace: &str, args: &[&str]) {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    if let Err(e) = run("tc", &all) {
        panic!("netlab: {e}");
    }
}

/// Deletes the lab namespaces whose test process is gone (killed before
/// its lab's drop ran), and those of a process whose pid has since been
/// reused by a process younger than the namespace.
pub(super) fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner_pid(&name) else {
            continue;
        };
        if owner == me {
            continue;
        }
        let created = entry.metadata().and_then(|m| m.modified()).ok();
        if !owner_alive(owner, created) {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// Deletes the lab folders (`{prefix}{pid}-...` in the temporary folder)
/// whose test process is gone, as [`sweep_stale`] does for namespaces.
pub(super) fn sweep_stale_folders(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = pid_after(&name, prefix) else {
            continue;
        };
        let created = entry.metadata().and_then(|m| m.modified()).ok();
        if owner != me && !owner_alive(owner, created) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in `lfnl-{pid}-...`.
fn owner_pid(namespace: &str) -> Option<u32> {
    pid_after(namespace, NAMESPACE_PREFIX)
}

/// The number between `prefix` and the next `-` of `name`.
fn pid_after(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Whether process `pid` exists and was started before `created`.
fn owner_alive(pid: u32, created: Option<SystemTime>) -> bool {
    let proc_dir = format!("/proc/{pid}");
    let Ok(meta) = std::fs::metadata(&proc_dir) else {
        return false;
    };
    match (meta.modified(), created) {
        // /proc/PID's time is the process's start (close enough).
        (Ok(started), Some(created)) => started <= created,
        _ => true,
    }
}

/// Whether `/run/netns/NAME` exists.
pub(super) fn namespace_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_the_pid_after_the_prefix() {
        assert_eq!(owner_pid("lfnl-1234-0-br"), Some(1234));
        assert_eq!(owner_pid("lfnl-x-0-br"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }
}
