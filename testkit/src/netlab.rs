//! A network lab of separate hosts on one machine, for tests of
//! lorafleet across real network boundaries.
//!
//! [`Lab::start`] builds, in network namespaces of its own, a bridge and N
//! hosts (each a namespace with a veth into the bridge and an address in
//! a private `10.213.X.0/24`). Nothing is added to the machine's own
//! namespace: lab addresses are reachable only from lab hosts. A process
//! runs on a host through [`Host::command`] and [`Host::spawn`], with the
//! host's hostname, `/dev/shm` and kernel boot id, so that lorafleet treats
//! every host as a different machine (ring traffic between hosts is TCP).
//! Each host has a private folder the other hosts' processes cannot see.
//!
//! Faults are the network's: [`Lab::cut_off`] cuts a host from every other
//! host, [`Lab::cut_between`] cuts two hosts from each other only, and
//! [`Lab::heal`] ends every cut. A cut is silent, as a pulled cable is:
//! each side gets a permanent neighbour entry with a MAC address nobody
//! has, so new connections time out and established ones stall, with no
//! reset and no error. [`Lab::shape`] limits a host's sending rate (tc
//! tbf) and delays what it receives (a TUN device and a thread that holds
//! each packet; this kernel has no netem, and a delay on the sender's
//! egress would collapse TCP).
//!
//! # Privilege
//!
//! Building a lab needs root, `ip` and network namespaces;
//! [`Lab::available`] says why not where they are missing, so a test can
//! print that and skip.
//!
//! # Lifetime
//!
//! Dropping the lab kills every process group started on it, deletes its
//! namespaces (which removes their links) and its folder. Processes also
//! get SIGKILL when the thread that started them ends. Namespaces and
//! folders left by a killed test process are deleted by the next
//! [`Lab::start`].
//!
//! Not here: lorafleet's processes and what a test asserts about them.

// Paths spelled out: `lorafleet chaos --hosts` compiles this module into
// the binary too (`#[path]` from src/commands/chaos/hosts.rs), where the
// submodules must be found from this file's folder.
#[path = "netlab/delay.rs"]
mod delay;
#[path = "netlab/host.rs"]
mod host;
#[path = "netlab/ip.rs"]
mod ip;
#[cfg(test)]
#[path = "netlab/tests.rs"]
mod tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

pub use delay::ReceiveDelay;
use host::ProcessGroups;
pub use host::{Host, HostProcess};
use ip::{
    NAMESPACE_PREFIX, NETNS_DIR, ip, ip_in, namespace_exists, sweep_stale, sweep_stale_folders,
    tc_in,
};

/// The MAC address a cut host's neighbour entries point to: locally
/// administered and owned by no interface, so frames to it are dropped.
const NOWHERE_MAC: &str = "02:00:00:00:00:99";
/// Every host's interface into the bridge, inside its namespace.
const HOST_INTERFACE: &str = "eth0";
/// The lab folder's name in the system temporary folder starts with this.
const DIR_PREFIX: &str = "lorafleet-netlab-";

/// A bridge and the hosts on it, in namespaces of their own.
pub struct Lab {
    bridge_namespace: String,
    hosts: Vec<Host>,
    /// Host index pairs `(a, b)`, `a < b`, that cannot reach each other.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
    /// The receive delay of each shaped host, by host index.
    delays: Mutex<Vec<(usize, ReceiveDelay)>>,
    groups: ProcessGroups,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Whether this machine can build a lab: `Err` says what is missing
    /// (not root, no `ip`, no network namespaces, no `unshare`).
    pub fn available() -> Result<(), String> {
        static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
        AVAILABLE.get_or_init(probe).clone()
    }

    /// Builds a lab with one host per name (names are also hostnames).
    ///
    /// # Panics
    ///
    /// When [`Lab::available`] is an error, or a set-up command fails.
    pub fn start(names: &[&str]) -> Lab {
        if let Err(why) = Lab::available() {
            panic!("netlab: cannot build a lab: {why}");
        }
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| {
            sweep_stale();
            sweep_stale_folders(DIR_PREFIX);
        });
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAMESPACE_PREFIX}{}-{sequence}", std::process::id());
        // Labs never share a namespace, so any subnet would do; a distinct
        // one per lab only keeps logs of parallel labs apart.
        let subnet = (std::process::id().wrapping_add(sequence) % 200) + 20;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap_or_else(|e| panic!("netlab: cannot create a temporary folder: {e}"));
        let groups = ProcessGroups::default();
        let mut lab = Lab {
            bridge_namespace: format!("{prefix}-bridge"),
            hosts: Vec::new(),
            cuts: Mutex::new(BTreeSet::new()),
            delays: Mutex::new(Vec::new()),
            groups: groups.clone(),
            dir,
        };
        let bridge = lab.bridge_namespace.clone();
        ip(&["netns", "add", &bridge]);
        ip_in(&bridge, &["link", "set", "lo", "up"]);
        ip_in(&bridge, &["link", "add", "br0", "type", "bridge"]);
        ip_in(&bridge, &["link", "set", "br0", "up"]);
        let private_dirs: Vec<PathBuf> = names
            .iter()
            .map(|name| lab.dir.path().join("hosts").join(name))
            .collect();
        for (index, name) in names.iter().enumerate() {
            let namespace = format!("{prefix}-{name}");
            let address = format!("10.213.{subnet}.{}", index + 11);
            let port = format!("h{index}");
            ip(&["netns", "add", &namespace]);
            ip_in(&namespace, &["link", "set", "lo", "up"]);
            ip_in(
                &bridge,
                &[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_INTERFACE,
                ],
            );
            ip_in(
                &bridge,
                &["link", "set", HOST_INTERFACE, "netns", &namespace],
            );
            ip_in(&bridge, &["link", "set", &port, "master", "br0", "up"]);
            ip_in(
                &namespace,
                &[
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    HOST_INTERFACE,
                ],
            );
            ip_in(&namespace, &["link", "set", HOST_INTERFACE, "up"]);
            let private_dir = private_dirs[index].clone();
            std::fs::create_dir_all(&private_dir)
                .unwrap_or_else(|e| panic!("netlab: cannot create {}: {e}", private_dir.display()));
            let boot_id_file = lab.dir.path().join("boot-ids").join(name);
            write_boot_id(&boot_id_file);
            lab.hosts.push(Host {
                name: name.to_string(),
                namespace,
                ip: address,
                hidden: private_dirs
                    .iter()
                    .filter(|dir| **dir != private_dir)
                    .cloned()
                    .collect(),
                private_dir,
                boot_id_file,
                groups: groups.clone(),
            });
        }
        lab
    }

    /// The host named `name`.
    ///
    /// # Panics
    ///
    /// When the lab has no such host.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("netlab: no host named {name}"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A folder every host sees (the lab's own folder); for files that a
    /// real fleet would have on a shared path.
    pub fn shared_dir(&self) -> PathBuf {
        let shared = self.dir.path().join("shared");
        let _ = std::fs::create_dir_all(&shared);
        shared
    }

    /// Cuts `host` from every other host, both ways, silently.
    pub fn cut_off(&self, host: &str) {
        let a = self.index(host);
        for b in 0..self.hosts.len() {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Cuts hosts `a` and `b` from each other only, both ways, silently.
    pub fn cut_between(&self, a: &str, b: &str) {
        self.cut(self.index(a), self.index(b));
    }

    /// Ends every cut.
    pub fn heal(&self) {
        let cuts = std::mem::take(&mut *self.lock_cuts());
        for (a, b) in cuts {
            self.uncut(a, b);
        }
    }

    /// Ends the cuts between `host` and any other host.
    pub fn heal_host(&self, host: &str) {
        let index = self.index(host);
        let mut cuts = self.lock_cuts();
        let ending: Vec<(usize, usize)> = cuts
            .iter()
            .copied()
            .filter(|(a, b)| *a == index || *b == index)
            .collect();
        for pair in &ending {
            cuts.remove(pair);
        }
        drop(cuts);
        for (a, b) in ending {
            self.uncut(a, b);
        }
    }

    /// Limits what `host` sends to `rate_mbit` Mbit/s (tc tbf on its
    /// interface) and, when `delay` is not zero, holds every TCP packet it
    /// receives from another host for `delay` before delivering it. A
    /// second call replaces the first.
    pub fn shape(&self, host: &str, rate_mbit: u32, delay: std::time::Duration) {
        let index = self.index(host);
        let host = &self.hosts[index];
        let mut delays = self.delays.lock().unwrap_or_else(PoisonError::into_inner);
        // Closing the old TUN device first frees its name.
        delays.retain(|(shaped, _)| *shaped != index);
        tc_in(
            &host.namespace,
            &[
                "qdisc",
                "replace",
                "dev",
                HOST_INTERFACE,
                "root",
                "tbf",
                "rate",
                &format!("{rate_mbit}mbit"),
                "burst",
                "32kb",
                "latency",
                "400ms",
            ],
        );
        if delay.is_zero() {
            let _ = ip::run(
                "tc",
                &[
                    "-n",
                    &host.namespace,
                    "qdisc",
                    "del",
                    "dev",
                    HOST_INTERFACE,
                    "clsact",
                ],
            );
        } else {
            delays.push((index, ReceiveDelay::install(host, HOST_INTERFACE, delay)));
        }
    }

    /// Bytes `host`'s interface has sent and received so far.
    pub fn interface_bytes(&self, host: &str) -> (u64, u64) {
        let host = &self.hosts[self.index(host)];
        let read = |what: &str| -> u64 {
            let out = ip::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &host.namespace,
                    "cat",
                    &format!("/sys/class/net/{HOST_INTERFACE}/statistics/{what}"),
                ],
            )
            .unwrap_or_else(|e| panic!("netlab: {e}"));
            out.trim().parse().unwrap_or(0)
        };
        (read("tx_bytes"), read("rx_bytes"))
    }

    /// Runs `f` on a new thread inside `host`'s network namespace (sockets
    /// it opens are the host's), and returns its result.
    pub fn within<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let host = &self.hosts[self.index(host)];
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    host.enter_namespace()
                        .unwrap_or_else(|e| panic!("netlab: cannot enter {}: {e}", host.name));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The lab's folder (the hosts' private folders are below it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("netlab: no host named {name}"))
    }

    fn cut(&self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        if !self.lock_cuts().insert(pair) {
            return;
        }
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (&self.hosts[from], &self.hosts[to]);
            ip_in(
                &from.namespace,
                &[
                    "neigh",
                    "replace",
                    &to.ip,
                    "lladdr",
                    NOWHERE_MAC,
                    "dev",
                    HOST_INTERFACE,
                    "nud",
                    "permanent",
                ],
            );
        }
    }

    fn uncut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (&self.hosts[from], &self.hosts[to]);
            ip_in(
                &from.namespace,
                &["neigh", "del", &to.ip, "dev", HOST_INTERFACE],
            );
        }
    }

    fn lock_cuts(&self) -> std::sync::MutexGuard<'_, BTreeSet<(usize, usize)>> {
        self.cuts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.groups.kill_all();
        self.delays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let namespaces = self
            .hosts
            .iter()
            .map(|h| h.namespace.clone())
            .chain([self.bridge_namespace.clone()]);
        for namespace in namespaces {
            if namespace_exists(&namespace) {
                let _ = ip::run("ip", &["netns", "del", &namespace]);
            }
        }
    }
}

impl Host {
    /// Moves the calling thread into this host's network namespace: the
    /// sockets it opens from then on are the host's. Meant for a thread
    /// made for it ([`Lab::within`]); the thread cannot come back.
    pub fn enter_namespace(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(Path::new(NETNS_DIR).join(&self.namespace))?;
        // SAFETY: setns(2) with a namespace file we hold open.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Writes a fresh random boot id (`xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx`).
fn write_boot_id(path: &Path) {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!(
        "{}-{}-4{}-8{}-{}\n",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    );
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(path, id)
        .unwrap_or_else(|e| panic!("netlab: cannot write {}: {e}", path.display()));
}

/// What [`Lab::available`] checks: root, `ip`, a namespace that can be
/// made and entered with `unshare --uts --mount`.
fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the network lab needs root (network namespaces, mounts)".into());
    }
    ip::run("ip", &["-V"]).map_err(|e| format!("`ip` (iproute2) is missing: {e}"))?;
    let name = format!("{NAMESPACE_PREFIX}{}-probe", std::process::id());
    ip::run("ip", &["netns", "add", &name])
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let entered = ip::run(
        "ip",
        &[
            "netns",
            "exec",
            &name,
            "unshare",
            "--uts",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /dev/shm && hostname netlab-probe",
        ],
    );
    let _ = ip::run("ip", &["netns", "del", &name]);
    entered
        .map(drop)
        .map_err(|e| format!("cannot run a process in a namespace of its own: {e}"))
}
