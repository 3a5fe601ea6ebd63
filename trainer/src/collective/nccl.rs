//! NCCL under the [`Collective`] trait: the ranks of a GPU job sum their
//! buffers with NCCL's all-reduce on the devices, one rank per GPU.
//!
//! Set-up rides on the authenticated ring ([`super::TcpRing`]): rank 0
//! makes NCCL's 128-byte unique id and broadcasts it to the others over the
//! ring ([`exchange_unique_id`]); each rank then joins the communicator
//! with it. The ring stays open beside NCCL and carries a few bytes per
//! operation: every rank's call (operation, root, length) is summed over
//! the ring before the data goes to NCCL, so ranks that disagree fail with
//! both calls named instead of hanging in NCCL, and a dead or stalled peer
//! is found within the ring's timeout. The ring is the fallback between
//! CPU workers; NCCL is used only when every rank runs on a GPU.
//!
//! [`DeviceComm`] is the part of NCCL a [`NcclCollective`] needs, so the
//! contract is tested on the CPU with a fake communicator; the real one,
//! `cuda::CudaNccl` (feature `cuda`), copies the host buffer to its GPU,
//! reduces it there, and copies it back.
//!
//! Not here: which ranks exist (the coordinator), picking the GPU
//! (`CUDA_VISIBLE_DEVICES`: every rank uses its GPU 0).

use super::{Collective, CollectiveError, OpCall, OpKind};

#[cfg(feature = "cuda")]
pub mod cuda;

/// Bytes in an NCCL unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// An NCCL unique id: what makes ranks join the same communicator.
pub type UniqueId = [u8; UNIQUE_ID_BYTES];

/// The operations of NCCL's communicator that [`NcclCollective`] runs.
/// Each returns once the result is in `buf` (or with NCCL's error).
pub trait DeviceComm: Send {
    /// Replaces `buf` with the element-wise sum over ranks.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), String>;
    /// Copies `buf` of rank `root` into `buf` of every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), String>;
}

/// Rank 0's NCCL unique id, as every rank of `ring` receives it: rank 0
/// runs `make` and broadcasts the result (or that it failed, so the other
/// ranks fail at once rather than at NCCL's set-up). The id's bytes travel
/// as small whole numbers in `f32`s, which every transport carries exactly.
pub fn exchange_unique_id(
    ring: &mut dyn Collective,
    make: impl FnOnce() -> Result<UniqueId, String>,
) -> Result<UniqueId, CollectiveError> {
    let rank = ring.rank();
    // Slot 0: 1 when rank 0 has an id, −1 when it could not make one.
    let mut buf = vec![0.0f32; 1 + UNIQUE_ID_BYTES];
    let mut own_error = None;
    if rank == 0 {
        match make() {
            Ok(id) => {
                buf[0] = 1.0;
                for (slot, byte) in buf[1..].iter_mut().zip(id) {
                    *slot = f32::from(byte);
                }
            }
            Err(e) => {
                buf[0] = -1.0;
                own_error = Some(e);
            }
        }
    }
    ring.broadcast(&mut buf, 0)?;
    if buf[0] != 1.0 {
        let detail = match own_error {
            Some(e) => format!("cannot create the NCCL unique id: {e}"),
            None => "rank 0 could not create the NCCL unique id (its log says why)".into(),
        };
        return Err(CollectiveError::Nccl { rank, detail });
    }
    let mut id = [0u8; UNIQUE_ID_BYTES];
    for (byte, value) in id.iter_mut().zip(&buf[1..]) {
        if !(0.0..=255.0).contains(value) || value.fract() != 0.0 {
            return Err(CollectiveError::Nccl {
                rank,
                detail: format!("the NCCL unique id arrived damaged (a byte reads {value})"),
            });
        }
        *byte = *value as u8;
    }
    Ok(id)
}

/// A [`Collective`] whose data goes through NCCL (`comm`) and whose calls
/// are checked over the ring (`ring`) first.
pub struct NcclCollective<C: DeviceComm> {
    ring: Box<dyn Collective>,
    comm: C,
    broken: Option<String>,
}

impl<C: DeviceComm> NcclCollective<C> {
    /// Joins NCCL beside `ring`: the unique id is exchanged over it
    /// ([`exchange_unique_id`], rank 0 runs `make_id`), then `join` opens
    /// this rank's communicator with `(id, rank, world)`.
    pub fn connect(
        mut ring: Box<dyn Collective>,
        make_id: impl FnOnce() -> Result<UniqueId, String>,
        join: impl FnOnce(UniqueId, usize, usize) -> Result<C, String>,
    ) -> Result<NcclCollective<C>, CollectiveError> {
        let id = exchange_unique_id(&mut *ring, make_id)?;
        let (rank, world) = (ring.rank(), ring.world());
        let comm = join(id, rank, world).map_err(|detail| CollectiveError::Nccl {
            rank,
            detail: format!("cannot join the NCCL communicator of {world} ranks: {detail}"),
        })?;
        // Every rank has its communicator before the first operation.
        ring.barrier()?;
        Ok(NcclCollective {
            ring,
            comm,
            broken: None,
        })
    }

    /// Fails unless every rank makes the same `call`: the calls are summed
    /// over the ring as small whole numbers, and a sum that is not `world`
    /// times this rank's call means another rank called something else.
    fn check_call(&mut self, call: OpCall) -> Result<(), CollectiveError> {
        let rank = self.ring.rank();
        if let Some(cause) = &self.broken {
            return Err(CollectiveError::Broken {
                rank,
                cause: cause.clone(),
            });
        }
        let own = describe(call);
        let mut sums = own;
        self.ring.all_reduce_sum(&mut sums)?;
        let world = self.ring.world() as f32;
        if sums.iter().zip(&own).any(|(sum, x)| *sum != x * world) {
            return Err(self.fail(format!(
                "ranks disagree on the operation: this rank called {call}, another rank something else"
            )));
        }
        Ok(())
    }

    /// Marks the collective broken by `detail` and returns the error.
    fn fail(&mut self, detail: String) -> CollectiveError {
        self.broken = Some(detail.clone());
        CollectiveError::Nccl {
            rank: self.ring.rank(),
            detail,
        }
    }
}

/// `call` as whole numbers below 2^16, so that sums over up to 256 ranks
/// stay exact in `f32`: the operation, the root, the length in 16-bit parts.
fn describe(call: OpCall) -> [f32; 6] {
    let (op, root) = match call.op {
        OpKind::AllReduceSum => (1.0, 0.0),
        OpKind::Broadcast { root } => (2.0, root as f32),
    };
    let part = |shift: u32| ((call.count >> shift) & 0xffff) as f32;
    [op, root, part(0), part(16), part(32), part(48)]
}

impl<C: DeviceComm> Collective for NcclCollective<C> {
    fn rank(&self) -> usize {
        self.ring.rank()
    }

    fn world(&self) -> usize {
        self.ring.world()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.check_call(OpCall {
            op: OpKind::AllReduceSum,
            count: buf.len() as u64,
        })?;
        self.comm
            .all_reduce_sum(buf)
            .map_err(|e| self.fail(format!("all_reduce_sum of {} f32 values: {e}", buf.len())))
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world() {
            return Err(CollectiveError::Config(format!(
                "broadcast from rank {root} in a world of {}",
                self.world()
            )));
        }
        self.check_call(OpCall {
            op: OpKind::Broadcast { root: root as u32 },
            count: buf.len() as u64,
        })?;
        self.comm
            .broadcast(buf, root)
            .map_err(|e| self.fail(format!("broadcast from rank {root}: {e}")))
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        // The ring's own barrier: no device work is needed to meet.
        if let Some(cause) = &self.broken {
            return Err(CollectiveError::Broken {
                rank: self.rank(),
                cause: cause.clone(),
            });
        }
        self.ring.barrier()
    }
}

#[cfg(test)]
mod tests;
