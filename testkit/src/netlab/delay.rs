//! [`ReceiveDelay`]: a fixed delay on what a host receives, without netem.
//!
//! The host's interface gets an ingress filter (tc u32, TCP only) that
//! redirects each arriving packet to a TUN device in the host's namespace.
//! A thread reads the packets from the TUN device, and another writes each
//! one back `delay` after it arrived; the kernel then takes it in as if
//! received on the TUN device (reverse-path filtering is off for it) and
//! delivers it to the host's address. Order is kept, and nothing is lost
//! but what tbf itself drops. Delaying on the receiving side keeps the
//! sender's TCP honest: its segments leave at the link's rate, and only
//! their acknowledgements come back late, as on a long link.
//!
//! Not here: the rate limit (tbf on the sender, `super::Lab::shape`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::host::Host;
use super::ip::{run, tc_in};

/// The TUN device's name inside the host's namespace.
const TUN_NAME: &str = "delay0";
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// The largest packet the TUN device hands over (its MTU is the veth's).
const MAX_PACKET: usize = 65_536;

/// A running receive delay on one host; removed when dropped.
pub struct ReceiveDelay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Kept open until both threads are done with it.
    _tun: Arc<OwnedFd>,
}

impl ReceiveDelay {
    /// Delays every TCP packet arriving on `interface` of `host` by `delay`.
    ///
    /// # Panics
    ///
    /// When the TUN device or the filter cannot be set up.
    pub(super) fn install(host: &Host, interface: &str, delay: Duration) -> ReceiveDelay {
        let tun = Arc::new(open_tun_in(host));
        let namespace = host.namespace();
        let sysctl = |key: &str| {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    namespace,
                    "sysctl",
                    "-qw",
                    &format!("{key}=0"),
                ],
            )
            .unwrap_or_else(|e| panic!("netlab: {e}"));
        };
        super::ip::ip_in(namespace, &["link", "set", TUN_NAME, "up"]);
        sysctl("net.ipv4.conf.all.rp_filter");
        sysctl(&format!("net.ipv4.conf.{TUN_NAME}.rp_filter"));
        // A fresh clsact: deleting it removes an earlier delay's filter.
        let _ = run(
            "tc",
            &["-n", namespace, "qdisc", "del", "dev", interface, "clsact"],
        );
        tc_in(namespace, &["qdisc", "add", "dev", interface, "clsact"]);
        tc_in(
            namespace,
            &[
                "filter", "add", "dev", interface, "ingress", "protocol", "ip", "u32", "match",
                "ip", "protocol", "6", "0xff", "action", "mirred", "egress", "redirect", "dev",
                TUN_NAME,
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = {
            let (tun, stop) = (tun.clone(), stop.clone());
            std::thread::spawn(move || read_packets(&tun, &stop, delay, &sender))
        };
        let writer = {
            let tun = tun.clone();
            std::thread::spawn(move || write_when_due(&tun, &receiver))
        };
        ReceiveDelay {
            stop,
            threads: vec![reader, writer],
            _tun: tun,
        }
    }
}

impl Drop for ReceiveDelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Creates the TUN device in `host`'s namespace (from a thread that enters
/// it); the returned descriptor works from any thread.
fn open_tun_in(host: &Host) -> OwnedFd {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                host.enter_namespace()
                    .unwrap_or_else(|e| panic!("netlab: cannot enter {}: {e}", host.name()));
                open_tun()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn open_tun() -> OwnedFd {
    // SAFETY: open(2) of a fixed path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        panic!(
            "netlab: cannot open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name (16 bytes) then a union whose first member is
    // the flags (a short).
    let mut request = [0u8; 40];
    request[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
    request[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `request`
    // is as large as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, request.as_mut_ptr()) } != 0 {
        panic!(
            "netlab: cannot create the TUN device: {}",
            std::io::Error::last_os_error()
        );
    }
    fd
}

/// Reads packets until `stop`, stamping each with when it is due.
fn read_packets(
    tun: &OwnedFd,
    stop: &AtomicBool,
    delay: Duration,
    due: &mpsc::Sender<(Instant, Vec<u8>)>,
) {
    let mut buffer = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: reads at most the buffer's length into it.
        let read = unsafe { libc::read(tun.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if read > 0 {
            let packet = buffer[..read as usize].to_vec();
            if due.send((Instant::now() + delay, packet)).is_err() {
                return;
            }
        }
    }
}

/// Writes each packet back at its time, in order (every packet waits the
/// same delay, so the channel is already in due order), until the reader
/// ends.
fn write_when_due(tun: &OwnedFd, due: &mpsc::Receiver<(Instant, Vec<u8>)>) {
    for (at, packet) in due.iter() {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // SAFETY: writes the packet's bytes from its own buffer.
        unsafe { libc::write(tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    }
}
