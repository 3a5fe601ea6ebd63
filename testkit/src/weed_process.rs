//! The `weed mini` process behind a [`SeaweedFs`](crate::SeaweedFs): where
//! the binary is, the ports it listens on, its command line, and how it is
//! kept from outliving the test process.
//!
//! Owns: picking free ports ([`Ports`]), spawning weed from one thread that
//! lives as long as the process with `PR_SET_PDEATHSIG=SIGKILL` (`spawner`),
//! and deleting the folders and sockets of instances whose test process was
//! killed ([`sweep_orphans`]). Not here: readiness, credentials, the S3
//! client and stopping an instance ([`crate::seaweedfs`]).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

use crate::netlab;
use crate::seaweedfs::BUCKET;

/// Names each instance's folder in the system temporary folder.
pub(crate) const DIR_PREFIX: &str = "lorafleet-seaweedfs-";
/// SeaweedFS's default distance from a component's HTTP port to its gRPC port.
const GRPC_PORT_OFFSET: u16 = 10_000;

const HINT_INSTALL: &str = "run scripts/test once: it installs SeaweedFS into .venv-s3";

/// Every port `weed mini` listens on (checked with `ss -ltnp` against
/// SeaweedFS 4.48, with WebDAV, the admin UI, Iceberg and Lance off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
    /// Always `admin + 10000`: weed mini's maintenance worker dials the admin
    /// server there whatever `-admin.port.grpc` says, so any other value
    /// would send it to another instance's admin server.
    admin_grpc: u16,
}

impl Ports {
    /// Distinct ports that were free a moment ago on 127.0.0.1.
    pub(crate) fn pick() -> Ports {
        // Hold every listener until all are picked, so they differ.
        let mut held = Vec::new();
        let mut free = || {
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .unwrap_or_else(|e| panic!("seaweedfs: cannot bind a port on 127.0.0.1: {e}"));
            let port = listener
                .local_addr()
                .expect("bound listener has an address")
                .port();
            held.push(listener);
            port
        };
        let mut ports = Ports {
            s3: free(),
            s3_grpc: free(),
            master: free(),
            master_grpc: free(),
            volume: free(),
            volume_grpc: free(),
            filer: free(),
            filer_grpc: free(),
            admin: 0,
            admin_grpc: 0,
        };
        for _ in 0..100 {
            let grpc = free();
            let Some(http) = grpc.checked_sub(GRPC_PORT_OFFSET).filter(|p| *p >= 1024) else {
                continue;
            };
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", http)) {
                held.push(listener);
                ports.admin = http;
                ports.admin_grpc = grpc;
                return ports;
            }
        }
        panic!("seaweedfs: found no free pair of ports P and P+{GRPC_PORT_OFFSET} on 127.0.0.1");
    }

    fn args(&self) -> Vec<String> {
        [
            ("s3.port", self.s3),
            ("s3.port.grpc", self.s3_grpc),
            ("master.port", self.master),
            ("master.port.grpc", self.master_grpc),
            ("volume.port", self.volume),
            ("volume.port.grpc", self.volume_grpc),
            ("filer.port", self.filer),
            ("filer.port.grpc", self.filer_grpc),
            ("admin.port", self.admin),
            ("admin.port.grpc", self.admin_grpc),
            // Off; SeaweedFS reads 0 as "do not listen".
            ("s3.port.iceberg", 0),
            ("s3.port.lance", 0),
        ]
        .into_iter()
        .map(|(flag, port)| format!("-{flag}={port}"))
        .collect()
    }

    /// The Unix sockets weed puts beside each gRPC port, always in /tmp.
    pub(crate) fn grpc_sockets(&self) -> Vec<PathBuf> {
        [
            ("s3", self.s3_grpc),
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("admin", self.admin_grpc),
        ]
        .into_iter()
        .map(|(component, port)| {
            PathBuf::from(format!("/tmp/seaweedfs-{component}-grpc-{port}.sock"))
        })
        .collect()
    }
}

/// Records in `dir` which process owns it and which sockets weed will
/// create outside it, for [`sweep_orphans`].
pub(crate) fn write_owner(dir: &Path, ports: &Ports) {
    let sockets: Vec<String> = ports
        .grpc_sockets()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let files = [
        ("owner.pid", std::process::id().to_string()),
        ("sockets", sockets.join("\n")),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text)
            .unwrap_or_else(|e| panic!("seaweedfs: cannot write {}: {e}", path.display()));
    }
}

/// Deletes the folders and sockets of instances whose test process is gone.
///
/// A test binary killed with SIGKILL takes weed with it (PDEATHSIG) but runs
/// no cleanup, which is left to the next process that starts an instance.
pub(crate) fn sweep_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<libc::pid_t>().ok());
        // No owner yet: a folder that another process is just setting up.
        let Some(owner) = owner else { continue };
        if process_exists(owner) {
            continue;
        }
        if let Ok(sockets) = fs::read_to_string(dir.join("sockets")) {
            for socket in sockets.lines() {
                let _ = fs::remove_file(socket);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that `pid` exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `$LORAFLEET_WEED`, else `.venv-s3/bin/weed` at the workspace root.
pub(crate) fn weed_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LORAFLEET_WEED") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "seaweedfs: LORAFLEET_WEED={} does not exist\n\n{HINT_INSTALL}, or unset LORAFLEET_WEED",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits inside the workspace");
    let path = workspace.join(".venv-s3/bin/weed");
    assert!(
        path.is_file(),
        "seaweedfs: weed is not installed: {} does not exist and LORAFLEET_WEED is not set\n\n{HINT_INSTALL}",
        path.display()
    );
    path
}

pub(crate) fn spawn_weed(
    weed: &Path,
    host: Option<&netlab::Host>,
    ports: &Ports,
    dir: &Path,
    access_key: &str,
    secret_key: &str,
) -> Child {
    let ip = host.map_or("127.0.0.1", netlab::Host::ip);
    let data = dir.join("data");
    fs::create_dir(&data)
        .unwrap_or_else(|e| panic!("seaweedfs: cannot create {}: {e}", data.display()));
    let output = |name: &str| {
        let path = dir.join(name);
        fs::File::create(&path)
            .unwrap_or_else(|e| panic!("seaweedfs: cannot create {}: {e}", path.display()))
    };
    let mut cmd = match host {
        Some(host) => host.command(weed),
        None => Command::new(weed),
    };
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .arg(format!("-ip={ip}"))
        .arg(format!("-ip.bind={ip}"))
        .arg("-master.telemetry=false")
        .args(["-webdav=false", "-admin.ui=false"])
        // Data is thrown away: skip the 1 s pause before the volume server stops.
        .arg("-volume.preStopSeconds=0")
        .args(ports.args())
        // Otherwise /tmp/seaweedfs-{filer,s3}-PORT.sock.
        .arg(format!(
            "-filer.localSocket={}",
            dir.join("filer.sock").display()
        ))
        .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("S3_BUCKET", BUCKET)
        // Log files go to $TMPDIR.
        .env("TMPDIR", dir)
        .env_remove("S3_EXTERNAL_URL")
        .env_remove("S3_TABLE_BUCKET")
        .stdin(Stdio::null())
        .stdout(output("weed.stdout"))
        .stderr(output("weed.stderr"));
    // weed also reads its configuration from WEED_* variables.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WEED_") {
            cmd.env_remove(name);
        }
    }
    die_with_this_process(&mut cmd);
    spawner::spawn(cmd).unwrap_or_else(|e| {
        panic!(
            "seaweedfs: cannot run {}: {e}\n\n{HINT_INSTALL}",
            weed.display()
        )
    })
}

/// Makes the child get SIGKILL when the thread that spawns it exits (Linux).
#[cfg(target_os = "linux")]
fn die_with_this_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;

    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid,
    // _exit) and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_this_process(_cmd: &mut Command) {}

/// The one thread that spawns weed.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process: spawning from a test's own thread would kill weed when
/// that test ends, even though a `static` instance is still in use. This
/// thread never exits before the process does.
mod spawner {
    use super::*;

    struct Request {
        cmd: Command,
        reply: mpsc::Sender<std::io::Result<Child>>,
    }

    pub(super) fn spawn(cmd: Command) -> std::io::Result<Child> {
        static REQUESTS: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
        let requests = REQUESTS.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            thread::Builder::new()
                .name("testkit-spawner".into())
                .spawn(move || {
                    // Never ends: `REQUESTS` holds a sender for the life of
                    // the process.
                    for mut request in rx {
                        let _ = request.reply.send(request.cmd.spawn());
                    }
                })
                .unwrap_or_else(|e| panic!("seaweedfs: cannot start the spawner thread: {e}"));
            tx
        });
        let (reply, response) = mpsc::channel();
        requests
            .send(Request { cmd, reply })
            .expect("the spawner thread lives as long as the process");
        response
            .recv()
            .expect("the spawner thread lives as long as the process")
    }
}
