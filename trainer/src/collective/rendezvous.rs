//! Forming a ring: every rank listens on its own address, connects to the
//! next rank (retrying until the timeout: ranks start in any order) and
//! accepts the previous one, refusing and logging any other caller.
//! Handshakes with callers run side by side, at most
//! [`MAX_HANDSHAKES_IN_FLIGHT`] at once (the oldest silent caller is
//! dropped to make room), so idle or garbage connections to a ring port
//! cannot keep the previous rank from getting through. What
//! comes out is a pair of [`Links`], each over TCP or shared memory as the
//! handshake chose; then, when every rank is on one host, a shared-memory
//! group ([`form_group`]).
//!
//! Not here: what travels over the links once formed (`ring`).

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::handshake::{self, ConnectFailure, Identity};
use super::link::{Inbound, LinkCloser, Outbound};
use super::tcp::{self, TcpIn, TcpOut};
use super::{Collective, CollectiveError, RingConfig};

/// How long a handshake may take once a connection is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes an accepting rank runs at once. A new caller past this ends
/// the oldest one whose caller has not said hello yet (the oldest of all
/// when every caller has): a real peer says hello as soon as it connects
/// and finishes within milliseconds, so only a caller that idles is
/// dropped.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 64;

/// This rank's two connections.
pub struct Links {
    pub next: Box<dyn Outbound>,
    pub prev: Box<dyn Inbound>,
    pub next_closer: LinkCloser,
    pub prev_closer: LinkCloser,
}

/// Connects this rank of `config` to its neighbours (the configuration is
/// already checked).
pub fn establish(config: &RingConfig) -> Result<Links, CollectiveError> {
    let (rank, world) = (config.rank, config.world());
    let next_rank = (rank + 1) % world;
    let prev_rank = (rank + world - 1) % world;
    let own = resolve(&config.peers[rank])?;
    let next_addr = resolve(&config.peers[next_rank])?;
    let listener = TcpListener::bind(own).map_err(|source| CollectiveError::Listen {
        rank,
        addr: config.peers[rank].clone(),
        source,
    })?;
    let me = Identity {
        rank,
        world,
        secret: &config.secret,
        transport: config.transport,
        host_id: host_id(),
    };
    let deadline = Instant::now() + config.timeout;
    let handshake_timeout = HANDSHAKE_TIMEOUT.min(config.timeout);
    let stop = AtomicBool::new(false);
    let (outgoing, incoming) = thread::scope(|s| {
        let acceptor = s.spawn(|| {
            accept_prev(
                &listener,
                &me,
                prev_rank,
                deadline,
                handshake_timeout,
                &stop,
            )
        });
        let outgoing = connect_next(
            next_addr,
            &config.peers[next_rank],
            &me,
            next_rank,
            deadline,
            handshake_timeout,
        );
        if outgoing.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        (
            outgoing,
            acceptor.join().expect("the acceptor does not panic"),
        )
    });
    let (outgoing, incoming) = match (outgoing, incoming) {
        (Ok(o), Ok(i)) => (o, i),
        // A refused caller says more than a peer that went away.
        (
            Err(_),
            Err(
                e @ CollectiveError::NoPeer {
                    refused: Some(_), ..
                },
            ),
        ) => return Err(e),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let (next, next_closer) = outbound(outgoing, config.timeout)?;
    let (prev, prev_closer) = inbound(incoming, config.timeout)?;
    Ok(Links {
        next,
        prev,
        next_closer,
        prev_closer,
    })
}

fn resolve(addr: &str) -> Result<SocketAddr, CollectiveError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CollectiveError::Config(format!("{addr:?} is not a host:port address")))
}

fn host_id() -> String {
    #[cfg(target_os = "linux")]
    {
        super::shm::host_id()
    }
    #[cfg(not(target_os = "linux"))]
    {
        String::new()
    }
}

/// Connects to the next rank, retrying until `deadline` while it is not
/// listening yet. A refusal is final.
fn connect_next(
    addr: SocketAddr,
    name: &str,
    me: &Identity<'_>,
    peer: usize,
    deadline: Instant,
    handshake_timeout: Duration,
) -> Result<handshake::Opened, CollectiveError> {
    let started = Instant::now();
    let mut last = String::from("not tried");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CollectiveError::Connect {
                rank: me.rank,
                peer,
                addr: name.to_string(),
                secs: started.elapsed().as_secs_f64(),
                last,
            });
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
            Ok(stream) => match handshake::connect(stream, me, peer, handshake_timeout) {
                Ok(opened) => return Ok(opened),
                Err(ConnectFailure::Refused(reason)) => {
                    return Err(CollectiveError::Refused {
                        rank: me.rank,
                        peer,
                        addr: name.to_string(),
                        reason,
                    });
                }
                Err(ConnectFailure::Io(e)) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Accepts connections until the previous rank completes a handshake,
/// refusing (and logging) any other caller. Each caller's handshake runs on
/// a thread of its own, at most [`MAX_HANDSHAKES_IN_FLIGHT`] at once; a
/// caller past that ends the oldest that has not said hello yet (or, when
/// all have, the oldest), so only a caller that idles is dropped.
fn accept_prev(
    listener: &TcpListener,
    me: &Identity<'_>,
    peer: usize,
    deadline: Instant,
    handshake_timeout: Duration,
    stop: &AtomicBool,
) -> Result<handshake::Opened, CollectiveError> {
    let started = Instant::now();
    let mut refused = None;
    listener
        .set_nonblocking(true)
        .map_err(|e| CollectiveError::Config(format!("cannot poll the ring listener: {e}")))?;
    let opened = thread::scope(|s| {
        let (done, finished) = mpsc::channel::<Handshaken>();
        let mut running: VecDeque<InFlight> = VecDeque::new();
        // The handshakes ended to make room, and why they were chosen.
        let mut dropped: HashMap<u64, &'static str> = HashMap::new();
        let mut next_id = 0u64;
        let mut last_accept_error = String::new();
        let opened = 'accepting: loop {
            if Instant::now() >= deadline || stop.load(Ordering::SeqCst) {
                break None;
            }
            // Take every caller waiting in the backlog.
            loop {
                let (stream, from) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Say it once, not every poll (e.g. out of files).
                        let e = e.to_string();
                        if e != last_accept_error {
                            eprintln!("warning: ring rank {}: accept failed: {e}", me.rank);
                            last_accept_error = e;
                        }
                        break;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let Ok(handle) = stream.try_clone() else {
                    continue;
                };
                if running.len() >= MAX_HANDSHAKES_IN_FLIGHT {
                    let silent = running.iter().position(|h| !h.hello.load(Ordering::SeqCst));
                    if let Some(oldest) = running.remove(silent.unwrap_or(0)) {
                        let _ = oldest.handle.shutdown(Shutdown::Both);
                        let why = if silent.is_some() {
                            "it sent nothing while the handshakes in flight were at their bound"
                        } else {
                            "it said hello but had not finished when the handshakes in flight were at their bound"
                        };
                        dropped.insert(oldest.id, why);
                    }
                }
                let hello = Arc::new(AtomicBool::new(false));
                let id = next_id;
                next_id += 1;
                running.push_back(InFlight {
                    id,
                    handle,
                    hello: hello.clone(),
                });
                let done = done.clone();
                s.spawn(move || {
                    let outcome = handshake::accept(stream, me, peer, handshake_timeout, &hello);
                    let _ = done.send(Handshaken { id, from, outcome });
                });
            }
            // Wait a little for a handshake to end, then look for callers.
            let mut wait = Duration::from_millis(5);
            while let Ok(ended) = finished.recv_timeout(wait) {
                wait = Duration::ZERO;
                running.retain(|h| h.id != ended.id);
                // A handshake ended to make room is refused even when it
                // got through just before: its socket is shut down.
                let reason = match (ended.outcome, dropped.remove(&ended.id)) {
                    (Ok(opened), None) => break 'accepting Some(opened),
                    (_, Some(why)) => why.to_string(),
                    (Err(reason), None) => reason,
                };
                eprintln!(
                    "warning: ring rank {}: refused a connection from {}: {reason}",
                    me.rank, ended.from
                );
                refused = Some(format!("{}: {reason}", ended.from));
            }
        };
        // The scope waits for every handshake thread: end them now.
        for h in &running {
            let _ = h.handle.shutdown(Shutdown::Both);
        }
        opened
    });
    opened.ok_or_else(|| CollectiveError::NoPeer {
        rank: me.rank,
        peer,
        secs: started.elapsed().as_secs_f64(),
        refused,
    })
}

/// A caller's handshake still running.
struct InFlight {
    id: u64,
    /// Shutting it down ends the handshake.
    handle: TcpStream,
    /// Set once the caller has sent a well-formed hello.
    hello: Arc<AtomicBool>,
}

/// How one caller's handshake ended.
struct Handshaken {
    id: u64,
    from: SocketAddr,
    outcome: Result<handshake::Opened, String>,
}

/// A handshaken connection ready for traffic: its socket, its shared-memory
/// region if it has one, and the handle that closes both.
fn open_link(
    opened: handshake::Opened,
    timeout: Duration,
) -> Result<(Arc<TcpStream>, Option<SharedRegion>, LinkCloser), CollectiveError> {
    configure(&opened.stream, timeout)?;
    let tcp = Arc::new(opened.stream);
    #[cfg(target_os = "linux")]
    let shm = opened.shm.map(Arc::new);
    #[cfg(not(target_os = "linux"))]
    let shm = None;
    Ok((tcp.clone(), shm.clone(), closer(tcp, shm)))
}

#[cfg(target_os = "linux")]
type SharedRegion = Arc<super::shm::Region>;
#[cfg(not(target_os = "linux"))]
type SharedRegion = ();

/// The sending end of a link to the next rank.
fn outbound(
    opened: handshake::Opened,
    timeout: Duration,
) -> Result<(Box<dyn Outbound>, LinkCloser), CollectiveError> {
    let (tcp, shm, closer) = open_link(opened, timeout)?;
    let link: Box<dyn Outbound> = match shm {
        #[cfg(target_os = "linux")]
        Some(region) => Box::new(super::shm::ShmOut {
            region,
            tcp,
            timeout,
        }),
        _ => Box::new(TcpOut { stream: tcp }),
    };
    Ok((link, closer))
}

/// The receiving end of a link from the previous rank.
fn inbound(
    opened: handshake::Opened,
    timeout: Duration,
) -> Result<(Box<dyn Inbound>, LinkCloser), CollectiveError> {
    let (tcp, shm, closer) = open_link(opened, timeout)?;
    let link: Box<dyn Inbound> = match shm {
        #[cfg(target_os = "linux")]
        Some(region) => Box::new(super::shm::ShmIn {
            region,
            tcp,
            timeout,
        }),
        _ => Box::new(TcpIn::new(tcp, timeout).map_err(|e| {
            CollectiveError::Config(format!("cannot configure a ring socket: {e}"))
        })?),
    };
    Ok((link, closer))
}

fn configure(stream: &TcpStream, timeout: Duration) -> Result<(), CollectiveError> {
    tcp::configure(stream, timeout)
        .map_err(|e| CollectiveError::Config(format!("cannot configure a ring socket: {e}")))
}

#[cfg(target_os = "linux")]
fn closer(tcp: Arc<TcpStream>, shm: Option<SharedRegion>) -> LinkCloser {
    LinkCloser { tcp, shm }
}

#[cfg(not(target_os = "linux"))]
fn closer(tcp: Arc<TcpStream>, _shm: Option<SharedRegion>) -> LinkCloser {
    LinkCloser { tcp }
}

/// Opens a shared-memory group over a formed `ring` when every rank
/// `wants` one and its links are shared memory (`local` here; then all
/// ranks are on one host), with up to three ring operations: every rank's
/// vote; the mapping's path, from rank 0; whether every rank could map it.
/// `None` leaves the ring as it is, with a warning from any rank that
/// could not join. Ranks that disagree on wanting one fail here.
#[cfg(target_os = "linux")]
pub fn form_group(
    ring: &mut dyn Collective,
    wants: bool,
    local: bool,
    chunk_bytes: usize,
) -> Result<Option<super::group::ShmGroup>, CollectiveError> {
    use super::group::{self, ShmGroup};
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;
    const PATH_VALUES: usize = 512;

    let (rank, world) = (ring.rank(), ring.world());
    let mut votes = [
        f32::from(u8::from(wants)),
        f32::from(u8::from(wants && local)),
    ];
    ring.all_reduce_sum(&mut votes)?;
    let wanting = votes[0] as usize;
    if wanting != 0 && wanting != world {
        return Err(CollectiveError::Config(format!(
            "{wanting} of {world} ranks would meet in a shared mapping and the others would not: \
             give every rank the same --no-shared-group"
        )));
    }
    if votes[1] as usize != world {
        return Ok(None);
    }
    let slot_values = group::slot_values(chunk_bytes, world);
    let warn = |e: std::io::Error| {
        eprintln!("warning: ring rank {rank}: no shared-memory group ({e}); using the ring");
    };
    let created = (rank == 0)
        .then(|| ShmGroup::create(&super::shm::shm_dir(), world, slot_values))
        .and_then(|r| r.map_err(warn).ok());
    // The file goes when set-up ends, failed or not: by then every rank
    // that could map it has.
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = created
        .as_ref()
        .map(|g| RemoveOnDrop(g.path().to_path_buf()));

    // The path travels as its length, then one byte per value.
    let mut path = [0.0f32; PATH_VALUES];
    if let Some(g) = &created {
        let bytes = g.path().as_os_str().as_encoded_bytes();
        if bytes.len() < PATH_VALUES {
            path[0] = bytes.len() as f32;
            path[1..=bytes.len()]
                .iter_mut()
                .zip(bytes)
                .for_each(|(v, b)| *v = f32::from(*b));
        }
    }
    ring.broadcast(&mut path, 0)?;
    let joined = if rank == 0 {
        created
    } else {
        let len = (path[0] as usize).min(PATH_VALUES - 1);
        let bytes: Vec<u8> = path[1..=len].iter().map(|v| *v as u8).collect();
        let path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
        (!path.as_os_str().is_empty())
            .then(|| ShmGroup::open(&path, rank, world, slot_values))
            .and_then(|r| r.map_err(warn).ok())
    };
    let mut mapped = [f32::from(u8::from(joined.is_some()))];
    ring.all_reduce_sum(&mut mapped)?;
    Ok(joined.filter(|_| mapped[0] as usize == world))
}
