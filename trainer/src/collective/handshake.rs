//! The handshake that opens a ring link: who is calling, proof that both
//! ends know the attempt's secret, and the choice of transport.
//!
//! The connecting rank (the sender of the link) and the accepting rank (its
//! receiver) exchange random nonces and each proves the secret with an
//! HMAC-SHA256 over both nonces, both ranks and the world size; the secret
//! itself never crosses the wire. A stranger, a rank of another attempt or
//! a program that is not lorafleet is refused with a reason. Messages have
//! fixed sizes, so garbage can neither make a rank allocate nor hang it
//! past the handshake's timeout.
//!
//! When both ends are on the same host (same kernel boot id) and the
//! transport allows it, the receiver creates a shared-memory region and
//! names it in its reply; the sender maps it or falls back to TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Transport;
#[cfg(target_os = "linux")]
use super::shm::{self, Region};

/// Version of the ring's wire protocol; ranks must agree.
pub const PROTOCOL: u32 = 1;
const MAGIC: &[u8; 8] = b"LFRING\0\x01";
const HELLO_BYTES: usize = 128;
const REPLY_BYTES: usize = 352;
const CONFIRM_BYTES: usize = 40;
const FINAL_BYTES: usize = 264;
const TEXT_BYTES: usize = 256;

/// This rank, as the handshake sees it.
pub struct Identity<'a> {
    pub rank: usize,
    pub world: usize,
    pub secret: &'a [u8],
    pub transport: Transport,
    pub host_id: String,
}

/// A link after a successful handshake.
pub struct Opened {
    pub stream: TcpStream,
    #[cfg(target_os = "linux")]
    pub shm: Option<Region>,
}

/// Why the connecting side's handshake failed.
pub enum ConnectFailure {
    /// The peer answered and refused, or could not prove the secret.
    Refused(String),
    /// The connection broke or timed out (worth retrying until the deadline).
    Io(std::io::Error),
}

impl From<std::io::Error> for ConnectFailure {
    fn from(e: std::io::Error) -> Self {
        ConnectFailure::Io(e)
    }
}

fn mac(secret: &[u8], label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(label);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The fields both proofs cover: nonces, then sender rank, receiver rank
/// and world size.
fn transcript(
    nonce_c: &[u8; 32],
    nonce_a: &[u8; 32],
    sender: u32,
    receiver: u32,
    world: u32,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(76);
    t.extend_from_slice(nonce_c);
    t.extend_from_slice(nonce_a);
    t.extend_from_slice(&sender.to_le_bytes());
    t.extend_from_slice(&receiver.to_le_bytes());
    t.extend_from_slice(&world.to_le_bytes());
    t
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

fn put_text(buf: &mut [u8], at: usize, text: &str) {
    let mut end = text.len().min(TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    put_u32(buf, at, end as u32);
    buf[at + 4..at + 4 + end].copy_from_slice(&text.as_bytes()[..end]);
}

fn get_text(buf: &[u8], at: usize) -> String {
    let len = (get_u32(buf, at) as usize)
        .min(TEXT_BYTES)
        .min(buf.len() - at - 4);
    String::from_utf8_lossy(&buf[at + 4..at + 4 + len]).into_owned()
}

fn transport_code(t: Transport) -> u32 {
    match t {
        Transport::Tcp => 0,
        Transport::Auto => 1,
        Transport::Shm => 2,
    }
}

/// Runs the sender's half on a fresh connection to rank `peer`.
pub fn connect(
    mut stream: TcpStream,
    me: &Identity<'_>,
    peer: usize,
    timeout: Duration,
) -> Result<Opened, ConnectFailure> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let nonce_c: [u8; 32] = rand::random();
    let mut hello = [0u8; HELLO_BYTES];
    hello[..8].copy_from_slice(MAGIC);
    put_u32(&mut hello, 8, PROTOCOL);
    put_u32(&mut hello, 12, me.rank as u32);
    put_u32(&mut hello, 16, me.world as u32);
    put_u32(&mut hello, 20, transport_code(me.transport));
    hello[24..56].copy_from_slice(&nonce_c);
    put_text(&mut hello[..], 56, &me.host_id[..me.host_id.len().min(64)]);
    stream.write_all(&hello)?;

    let mut reply = [0u8; REPLY_BYTES];
    stream.read_exact(&mut reply)?;
    if &reply[..8] != MAGIC {
        return Err(ConnectFailure::Refused(format!(
            "it is not a lorafleet ring peer (it answered {:02x?})",
            &reply[..8]
        )));
    }
    if get_u32(&reply, 8) != 0 {
        return Err(ConnectFailure::Refused(get_text(&reply, 92)));
    }
    let their_rank = get_u32(&reply, 12);
    if their_rank as usize != peer {
        return Err(ConnectFailure::Refused(format!(
            "the address belongs to rank {their_rank}, not rank {peer}: the peer lists disagree"
        )));
    }
    let nonce_a: [u8; 32] = reply[28..60].try_into().unwrap();
    let t = transcript(
        &nonce_c,
        &nonce_a,
        me.rank as u32,
        peer as u32,
        me.world as u32,
    );
    let expected = mac(me.secret, b"lorafleet ring receiver", &[&t]);
    if reply[60..92] != expected {
        // Answer with a proof that cannot verify, so the receiver logs why.
        let _ = stream.write_all(&[0u8; CONFIRM_BYTES]);
        return Err(ConnectFailure::Refused(
            "it does not know this attempt's secret (another job, or an older attempt)".into(),
        ));
    }

    #[cfg(target_os = "linux")]
    let mut shm = None;
    let mut confirm = [0u8; CONFIRM_BYTES];
    if get_u32(&reply, 16) == 1 {
        #[cfg(target_os = "linux")]
        match Region::open(std::path::Path::new(&get_text(&reply, 92))) {
            Ok(region) => {
                shm = Some(region);
                put_u32(&mut confirm, 32, 1);
            }
            Err(e) if me.transport == Transport::Shm => {
                return Err(ConnectFailure::Refused(format!(
                    "cannot map its shared-memory region: {e}"
                )));
            }
            Err(_) => {}
        }
    }
    confirm[..32].copy_from_slice(&mac(me.secret, b"lorafleet ring sender", &[&t]));
    stream.write_all(&confirm)?;

    let mut fin = [0u8; FINAL_BYTES];
    stream.read_exact(&mut fin)?;
    if get_u32(&fin, 0) != 0 {
        return Err(ConnectFailure::Refused(get_text(&fin, 4)));
    }
    Ok(Opened {
        stream,
        #[cfg(target_os = "linux")]
        shm,
    })
}

/// Runs the receiver's half on an accepted connection that should come
/// from rank `peer`, setting `hello_seen` once the caller has sent a
/// well-formed hello. An error is the reason the caller was refused (also
/// told to the caller when it spoke the protocol).
pub fn accept(
    mut stream: TcpStream,
    me: &Identity<'_>,
    peer: usize,
    timeout: Duration,
    hello_seen: &AtomicBool,
) -> Result<Opened, String> {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "it hung up during the handshake (it refuses a rank that cannot prove the attempt's secret: do both have the same LORAFLEET_RING_SECRET?)".to_string()
        } else {
            format!("handshake failed: {e}")
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut hello = [0u8; HELLO_BYTES];
    stream.read_exact(&mut hello).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "it closed the connection before saying who it is".to_string()
        } else {
            io(e)
        }
    })?;
    if &hello[..8] != MAGIC {
        return Err(format!(
            "not a lorafleet ring peer (first bytes {:02x?})",
            &hello[..8]
        ));
    }
    hello_seen.store(true, Ordering::SeqCst);
    let mut reply = [0u8; REPLY_BYTES];
    reply[..8].copy_from_slice(MAGIC);
    put_u32(&mut reply, 12, me.rank as u32);
    let refuse = |stream: &mut TcpStream, reply: &mut [u8; REPLY_BYTES], why: String| {
        put_u32(reply, 8, 1);
        put_text(reply, 92, &why);
        let _ = stream.write_all(reply);
        Err(why)
    };
    let (version, rank, world) = (get_u32(&hello, 8), get_u32(&hello, 12), get_u32(&hello, 16));
    if version != PROTOCOL {
        return refuse(
            &mut stream,
            &mut reply,
            format!("ring protocol v{version} cannot join a ring of v{PROTOCOL}"),
        );
    }
    if world as usize != me.world || rank as usize != peer {
        return refuse(
            &mut stream,
            &mut reply,
            format!(
                "rank {} expects rank {peer} of {} ranks, not rank {rank} of {world}",
                me.rank, me.world
            ),
        );
    }
    let their_transport = get_u32(&hello, 20);
    let same_host = !me.host_id.is_empty() && get_text(&hello, 56) == me.host_id;
    let wants_shm = me.transport == Transport::Shm || their_transport == 2;
    let may_shm = me.transport != Transport::Tcp && their_transport != 0;
    if wants_shm && !(same_host && may_shm) {
        return refuse(
            &mut stream,
            &mut reply,
            format!(
                "shared memory was asked for, but ranks {rank} and {} {}",
                me.rank,
                if same_host {
                    "disagree on the transport"
                } else {
                    "are on different hosts"
                }
            ),
        );
    }

    #[cfg(target_os = "linux")]
    let mut shm = None;
    #[cfg(target_os = "linux")]
    if same_host && may_shm {
        match Region::create(&shm::shm_dir(), &format!("r{}", me.rank)) {
            Ok(region) => {
                put_u32(&mut reply, 16, 1);
                put_text(&mut reply, 92, &region.path().display().to_string());
                shm = Some(region);
            }
            Err(e) if wants_shm => {
                return refuse(
                    &mut stream,
                    &mut reply,
                    format!("rank {} cannot create a shared-memory region: {e}", me.rank),
                );
            }
            Err(_) => {}
        }
    }
    let nonce_c: [u8; 32] = hello[24..56].try_into().unwrap();
    let nonce_a: [u8; 32] = rand::random();
    let t = transcript(&nonce_c, &nonce_a, rank, me.rank as u32, me.world as u32);
    reply[28..60].copy_from_slice(&nonce_a);
    reply[60..92].copy_from_slice(&mac(me.secret, b"lorafleet ring receiver", &[&t]));
    let result = (|| {
        stream.write_all(&reply).map_err(io)?;
        let mut confirm = [0u8; CONFIRM_BYTES];
        stream.read_exact(&mut confirm).map_err(io)?;
        let mut fin = [0u8; FINAL_BYTES];
        if confirm[..32] != mac(me.secret, b"lorafleet ring sender", &[&t]) {
            let why = format!(
                "rank {rank} does not know this attempt's secret (another job, or an older attempt)"
            );
            put_u32(&mut fin, 0, 1);
            put_text(
                &mut fin,
                4,
                &format!("rank {} refused it: wrong secret", me.rank),
            );
            let _ = stream.write_all(&fin);
            return Err(why);
        }
        stream.write_all(&fin).map_err(io)?;
        Ok(get_u32(&confirm, 32) == 1)
    })();
    #[cfg(target_os = "linux")]
    if let Some(region) = &shm {
        // Both sides have mapped it (or never will): the name can go.
        region.unlink();
    }
    let uses_shm = result?;
    Ok(Opened {
        stream,
        #[cfg(target_os = "linux")]
        shm: if uses_shm { shm } else { None },
    })
}
