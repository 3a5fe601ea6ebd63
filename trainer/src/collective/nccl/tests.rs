//! The NCCL collective's contract on the CPU: the id exchange over a ring
//! (an in-memory one, and a real authenticated `TcpRing`), and every
//! operation through a fake communicator that sums in memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use super::*;
use crate::collective::{RingConfig, Solo};

/// N threads meet here: each hands in a buffer and gets every rank's back.
struct Hub {
    world: usize,
    state: Mutex<Round>,
    turn: Condvar,
}

#[derive(Default)]
struct Round {
    arrived: Vec<Option<Vec<f32>>>,
    count: usize,
    /// Every rank's buffer once all have arrived, until all have left.
    result: Option<Vec<Vec<f32>>>,
    left: usize,
}

impl Hub {
    fn new(world: usize) -> Arc<Hub> {
        Arc::new(Hub {
            world,
            state: Mutex::new(Round {
                arrived: vec![None; world],
                ..Round::default()
            }),
            turn: Condvar::new(),
        })
    }

    fn gather(&self, rank: usize, buf: &[f32]) -> Vec<Vec<f32>> {
        let mut s = self.state.lock().unwrap();
        while s.result.is_some() {
            s = self.turn.wait(s).unwrap();
        }
        s.arrived[rank] = Some(buf.to_vec());
        s.count += 1;
        if s.count == self.world {
            s.result = Some(s.arrived.iter_mut().map(|b| b.take().unwrap()).collect());
            s.left = self.world;
            self.turn.notify_all();
        }
        while s.result.is_none() {
            s = self.turn.wait(s).unwrap();
        }
        let out = s.result.clone().unwrap();
        s.left -= 1;
        if s.left == 0 {
            s.result = None;
            s.count = 0;
            self.turn.notify_all();
        }
        out
    }

    fn sum(&self, rank: usize, buf: &mut [f32]) {
        let all = self.gather(rank, buf);
        for (i, x) in buf.iter_mut().enumerate() {
            *x = all.iter().map(|b| b[i]).sum();
        }
    }
}

/// A ring double: the same operations as `TcpRing`, in memory.
struct MemoryRing {
    rank: usize,
    hub: Arc<Hub>,
}

impl Collective for MemoryRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.hub.world
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.hub.sum(self.rank, buf);
        Ok(())
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let all = self.hub.gather(self.rank, buf);
        buf.copy_from_slice(&all[root]);
        Ok(())
    }
}

/// A communicator double that counts the operations it runs, and fails
/// them all with `fails` when set.
struct FakeComm {
    rank: usize,
    hub: Arc<Hub>,
    ops: Arc<AtomicUsize>,
    fails: Option<&'static str>,
}

impl DeviceComm for FakeComm {
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), String> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.fails {
            return Err(e.into());
        }
        self.hub.sum(self.rank, buf);
        Ok(())
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), String> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        let all = self.hub.gather(self.rank, buf);
        buf.copy_from_slice(&all[root]);
        Ok(())
    }
}

fn test_id() -> UniqueId {
    std::array::from_fn(|i| (i * 7 % 256) as u8 | if i == 5 { 0xff } else { 0 })
}

/// Runs `f(rank, ring)` on `world` threads over one in-memory ring.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(usize, Box<dyn Collective>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let hub = Hub::new(world);
    let f = Arc::new(f);
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let (hub, f) = (hub.clone(), f.clone());
            thread::spawn(move || f(rank, Box::new(MemoryRing { rank, hub })))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// `world` ranks of an [`NcclCollective`] over fake communicators, each
/// running `f`; also returns how many operations reached the communicators.
fn on_nccl<T: Send + 'static>(
    world: usize,
    fails: Option<&'static str>,
    f: impl Fn(usize, &mut NcclCollective<FakeComm>) -> T + Send + Sync + 'static,
) -> (Vec<T>, usize) {
    let comm_hub = Hub::new(world);
    let ops = Arc::new(AtomicUsize::new(0));
    let counted = ops.clone();
    let results = on_ranks(world, move |rank, ring| {
        let (hub, ops) = (comm_hub.clone(), ops.clone());
        let mut nccl = NcclCollective::connect(
            ring,
            || Ok(test_id()),
            |id, r, w| {
                assert_eq!((id, r, w), (test_id(), rank, world));
                Ok(FakeComm {
                    rank,
                    hub,
                    ops,
                    fails,
                })
            },
        )
        .unwrap();
        f(rank, &mut nccl)
    });
    (results, counted.load(Ordering::SeqCst))
}

#[test]
fn every_rank_receives_the_unique_id_rank_0_made() {
    let ids = on_ranks(4, |rank, mut ring| {
        exchange_unique_id(&mut *ring, || {
            assert_eq!(rank, 0, "only rank 0 makes the id");
            Ok(test_id())
        })
        .unwrap()
    });
    assert!(ids.iter().all(|id| *id == test_id()));
}

#[test]
fn a_rank_0_that_cannot_make_the_id_fails_every_rank_at_once() {
    let errors = on_ranks(3, |_, mut ring| {
        exchange_unique_id(&mut *ring, || Err("libnccl.so: cannot open".into()))
            .unwrap_err()
            .to_string()
    });
    assert!(
        errors[0].contains("libnccl.so: cannot open"),
        "{}",
        errors[0]
    );
    for e in &errors[1..] {
        assert!(
            e.contains("rank 0 could not create the NCCL unique id"),
            "{e}"
        );
    }
}

#[test]
fn the_unique_id_crosses_a_real_authenticated_ring() {
    let peers: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let threads: Vec<_> = (0..2)
        .map(|rank| {
            let config = RingConfig::new(rank, peers.clone(), b"0123456789abcdef-secret".to_vec());
            thread::spawn(move || {
                let mut ring = crate::collective::open(&config).unwrap();
                exchange_unique_id(&mut *ring, || Ok(test_id())).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), test_id());
    }
}

#[test]
fn one_rank_needs_no_ring_traffic_but_still_goes_through_the_comm() {
    let ops = Arc::new(AtomicUsize::new(0));
    let hub = Hub::new(1);
    let mut nccl = NcclCollective::connect(
        Box::new(Solo),
        || Ok(test_id()),
        |_, _, _| {
            Ok(FakeComm {
                rank: 0,
                hub,
                ops: ops.clone(),
                fails: None,
            })
        },
    )
    .unwrap();
    let mut buf = vec![1.5, -2.0];
    nccl.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(buf, [1.5, -2.0]);
    assert_eq!(ops.load(Ordering::SeqCst), 1);
}

#[test]
fn sums_means_and_broadcasts_are_done_by_the_communicator() {
    let (results, ops) = on_nccl(3, None, |rank, nccl| {
        assert_eq!((nccl.rank(), nccl.world()), (rank, 3));
        let mut sum = vec![rank as f32, 1.0, 0.5];
        nccl.all_reduce_sum(&mut sum).unwrap();
        let mut mean = vec![rank as f32 * 3.0];
        nccl.all_reduce_mean(&mut mean).unwrap();
        let mut from_2 = vec![rank as f32; 4];
        nccl.broadcast(&mut from_2, 2).unwrap();
        nccl.barrier().unwrap();
        (sum, mean, from_2)
    });
    for (sum, mean, from_2) in results {
        assert_eq!(sum, [3.0, 3.0, 1.5]);
        assert_eq!(mean, [3.0]);
        assert_eq!(from_2, [2.0; 4]);
    }
    // Three operations on each of three ranks; the barrier stays on the ring.
    assert_eq!(ops, 9);
}

#[test]
fn ranks_that_disagree_fail_before_nccl_and_stay_broken() {
    let (errors, ops) = on_nccl(2, None, |rank, nccl| {
        let mut buf = vec![0.0; 10 + rank];
        let first = nccl.all_reduce_sum(&mut buf).unwrap_err().to_string();
        let later = nccl.broadcast(&mut [0.0], 0).unwrap_err();
        (first, later)
    });
    for (rank, (first, later)) in errors.into_iter().enumerate() {
        assert!(first.contains("ranks disagree"), "{first}");
        assert!(
            first.contains(&format!("all_reduce_sum of {} f32 values", 10 + rank)),
            "{first}"
        );
        assert!(matches!(later, CollectiveError::Broken { .. }), "{later}");
    }
    assert_eq!(ops, 0, "nothing reached NCCL");
    let (errors, _) = on_nccl(2, None, |rank, nccl| {
        nccl.broadcast(&mut [0.0; 3], rank).unwrap_err().to_string()
    });
    assert!(errors.iter().all(|e| e.contains("broadcast from rank")));
}

#[test]
fn a_failing_communicator_breaks_the_collective_naming_the_error() {
    let (errors, _) = on_nccl(2, Some("unhandled cuda error"), |_, nccl| {
        let first = nccl.all_reduce_sum(&mut [1.0; 8]).unwrap_err().to_string();
        let later = nccl.all_reduce_sum(&mut [1.0; 8]).unwrap_err();
        (first, later)
    });
    for (first, later) in errors {
        assert!(
            first.contains("all_reduce_sum of 8 f32 values: unhandled cuda error"),
            "{first}"
        );
        assert!(matches!(later, CollectiveError::Broken { .. }), "{later}");
    }
}

#[test]
fn calls_that_differ_only_in_high_length_bits_are_told_apart() {
    let call = |count| OpCall {
        op: OpKind::AllReduceSum,
        count,
    };
    assert_ne!(describe(call(5)), describe(call(5 + (1 << 40))));
    assert_ne!(
        describe(call(5)),
        describe(OpCall {
            op: OpKind::Broadcast { root: 0 },
            count: 5
        })
    );
    assert!(describe(call(u64::MAX)).iter().all(|x| *x <= 65535.0));
}
