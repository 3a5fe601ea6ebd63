//! One direction of a ring connection: [`Outbound`] to the next rank,
//! [`Inbound`] from the previous one, over TCP or shared memory.
//!
//! A link moves bytes and nothing else; framing and checks are `frame`'s,
//! the order of transfers is `schedule`'s. Calls block for at most the
//! ring's timeout without progress and then fail with
//! `io::ErrorKind::TimedOut`; a peer that went away gives `UnexpectedEof`
//! (or the socket's own error).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

/// Sends to the next rank.
pub trait Outbound: Send {
    /// Writes every part, in order.
    fn send(&mut self, parts: &[&[u8]]) -> io::Result<()>;
    /// "tcp" or "shm".
    fn transport(&self) -> &'static str;
}

/// Receives from the previous rank.
pub trait Inbound: Send {
    /// Fills `out`.
    fn recv(&mut self, out: &mut [u8]) -> io::Result<()>;
    /// Receives `dst.len()` values and adds them to `dst`.
    fn recv_add(&mut self, dst: &mut [f32]) -> io::Result<()>;
    fn transport(&self) -> &'static str;

    /// Receives `dst.len()` values into `dst`.
    fn recv_f32(&mut self, dst: &mut [f32]) -> io::Result<()> {
        self.recv(bytemuck::cast_slice_mut(dst))
    }
}

/// Ends a link from any thread: a call blocked on it, and every later
/// call, fails at once.
#[derive(Clone)]
pub struct LinkCloser {
    pub tcp: Arc<TcpStream>,
    #[cfg(target_os = "linux")]
    pub shm: Option<Arc<super::shm::Region>>,
}

impl LinkCloser {
    /// Wakes and fails the reads on this link, and every later one, but
    /// leaves its TCP connection able to write (a backward abort frame).
    pub fn stop_reading(&self) {
        #[cfg(target_os = "linux")]
        if let Some(region) = &self.shm {
            region.close();
        }
        let _ = self.tcp.shutdown(Shutdown::Read);
    }

    pub fn close(&self) {
        #[cfg(target_os = "linux")]
        if let Some(region) = &self.shm {
            region.close();
        }
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}
