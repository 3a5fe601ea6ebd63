//! [`Host`]: one machine of the lab, and [`HostProcess`]: a process
//! running on it.
//!
//! A host is a network namespace with one interface (`eth0`, into the
//! lab's bridge) and an address of its own. A process "on" it runs under
//! `ip netns exec NS unshare --uts --mount`, in a shell prologue that gives
//! it the host's hostname, a tmpfs of its own on `/dev/shm`, the host's
//! kernel boot id (lorafleet decides "same machine" by boot id, and then
//! uses shared memory instead of TCP), and empty tmpfs mounts over the
//! folders it must not see (the other hosts' private folders), before it
//! execs the program. Each process leads a process group of its own and
//! gets SIGKILL when the thread that started it ends.
//!
//! Not here: building the namespaces (`super::Lab`), cutting links.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One machine of the lab.
#[derive(Debug, Clone)]
pub struct Host {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) ip: String,
    /// This host's own folder, hidden from every other host.
    pub(super) private_dir: PathBuf,
    /// The file bind-mounted over `/proc/sys/kernel/random/boot_id`.
    pub(super) boot_id_file: PathBuf,
    /// Folders covered by an empty tmpfs in this host's processes.
    pub(super) hidden: Vec<PathBuf>,
    pub(super) groups: ProcessGroups,
}

impl Host {
    /// The host's name, which is also its hostname.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the lab's bridge (reachable only from lab hosts).
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The network namespace's name (`ip -n NAME ...`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A folder only this host's processes see (empty at the start).
    pub fn private_dir(&self) -> &Path {
        &self.private_dir
    }

    /// A command that runs `program` on this host; add arguments,
    /// environment and output as with any [`Command`], then start it with
    /// [`Host::spawn`] or [`Host::output`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_hiding(program, &[])
    }

    /// As [`Host::command`], with `extra_hidden` folders also covered by an
    /// empty tmpfs.
    pub fn command_hiding(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        extra_hidden: &[&Path],
    ) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .args(["unshare", "--uts", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &self.prologue(extra_hidden), "sh"])
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// The shell that makes a process look like it runs on this host,
    /// then execs `"$@"`.
    fn prologue(&self, extra_hidden: &[&Path]) -> String {
        let mut script = String::from("set -e\n");
        script.push_str("mount -t tmpfs -o mode=1777 netlab-shm /dev/shm\n");
        script.push_str(&format!("hostname {}\n", quote(&self.name)));
        script.push_str(&format!(
            "mount --bind {} /proc/sys/kernel/random/boot_id\n",
            quote(&self.boot_id_file.display().to_string())
        ));
        let hidden = self
            .hidden
            .iter()
            .map(PathBuf::as_path)
            .chain(extra_hidden.iter().copied());
        for path in hidden {
            script.push_str(&format!(
                "mount -t tmpfs -o mode=0700 netlab-hidden {}\n",
                quote(&path.display().to_string())
            ));
        }
        script.push_str("exec \"$@\"\n");
        script
    }

    /// Starts `command` (made by [`Host::command`]) in a process group of
    /// its own that gets SIGKILL when this thread ends, and when the
    /// returned handle or the lab is dropped.
    pub fn spawn(&self, mut command: Command) -> HostProcess {
        command.process_group(0);
        die_with_this_thread(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("netlab: cannot start a process on {}: {e}", self.name));
        self.groups.add(child.id());
        HostProcess {
            child,
            groups: self.groups.clone(),
        }
    }

    /// Runs `command` (made by [`Host::command`]) to its end, its output
    /// captured; killed and a panic after `limit`.
    pub fn output(&self, mut command: Command, limit: Duration) -> Output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut process = self.spawn(command);
        let stdout = process.stdout.take().map(read_in_background);
        let stderr = process.stderr.take().map(read_in_background);
        let status = process.wait_within(limit);
        let collect = |reader: Option<std::thread::JoinHandle<Vec<u8>>>| {
            reader
                .map(|r| r.join().unwrap_or_default())
                .unwrap_or_default()
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        let Some(status) = status else {
            panic!(
                "netlab: a command on {} ran past {limit:?}; its stderr:\n{}",
                self.name,
                String::from_utf8_lossy(&stderr)
            );
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// A process started on a host; its whole process group gets SIGKILL when
/// this is dropped.
pub struct HostProcess {
    child: Child,
    groups: ProcessGroups,
}

impl HostProcess {
    /// Sends `signal` to the process's group (the process and whatever it
    /// started, as a machine's failure would reach them).
    pub fn signal_group(&self, signal: libc::c_int) {
        if self.groups.contains(self.child.id()) {
            // SAFETY: kill(2) on the group this process leads; the group is
            // still registered, so its leader has not been reaped.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
        }
    }

    /// Waits up to `limit` for the process to exit; `None` if it still runs.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the group, then reaps the process.
    pub fn kill_group(&mut self) {
        self.signal_group(libc::SIGCONT);
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.groups.remove(self.child.id());
    }
}

impl Deref for HostProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for HostProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The process groups a lab started and has not reaped, shared by its
/// hosts and processes, so that the lab's drop can end what is left.
#[derive(Debug, Clone, Default)]
pub(super) struct ProcessGroups(Arc<Mutex<Vec<u32>>>);

impl ProcessGroups {
    fn add(&self, pid: u32) {
        self.lock().push(pid);
    }

    fn remove(&self, pid: u32) {
        self.lock().retain(|p| *p != pid);
    }

    fn contains(&self, pid: u32) -> bool {
        self.lock().contains(&pid)
    }

    /// SIGKILL to every group still registered.
    pub(super) fn kill_all(&self) {
        for pid in self.lock().iter() {
            // SAFETY: kill(2) on groups whose leaders were not reaped (a
            // handle removes its group once it reaps the leader).
            unsafe {
                libc::kill(-(*pid as libc::pid_t), libc::SIGCONT);
                libc::kill(-(*pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `text` in single quotes for `sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn read_in_background(
    mut pipe: impl io::Read + Send + 'static,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Makes the child get SIGKILL when the thread that spawns it ends (a test
/// that panics or a test binary that is killed takes its hosts' processes
/// with it). `ip netns exec`, `unshare` and `sh` all exec without forking,
/// so the setting reaches the program itself.
fn die_with_this_thread(command: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid,
    // _exit) and does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
