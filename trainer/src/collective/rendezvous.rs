//! Forming a ring: every rank listens on its own address, connects to the
//! next rank (retrying until the timeout: ranks start in any order) and
//! accepts the previous one, refusing and logging any other caller. What
//! comes out is a pair of [`Links`], each over TCP or shared memory as the
//! handshake chose.
//!
//! Not here: what travels over the links once formed (`ring`).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::handshake::{self, ConnectFailure, Identity};
use super::link::{Inbound, LinkCloser, Outbound};
use super::tcp::{self, TcpIn, TcpOut};
use super::{CollectiveError, RingConfig};

/// How long a handshake may take once a connection is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
/// refusing (and logging) any other caller.
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
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                let _ = stream.set_nonblocking(false);
                match handshake::accept(stream, me, peer, handshake_timeout) {
                    Ok(opened) => return Ok(opened),
                    Err(reason) => {
                        eprintln!(
                            "warning: ring rank {}: refused a connection from {from}: {reason}",
                            me.rank
                        );
                        refused = Some(format!("{from}: {reason}"));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("warning: ring rank {}: accept failed: {e}", me.rank);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Err(CollectiveError::NoPeer {
        rank: me.rank,
        peer,
        secs: started.elapsed().as_secs_f64(),
        refused,
    })
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
