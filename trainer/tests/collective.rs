//! The ring collective over real sockets on 127.0.0.1 (and shared memory),
//! one thread per rank: results against a sequential sum, mismatched calls,
//! strangers, wrong secrets and stalled peers.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trainer::collective::{Collective, CollectiveError, RingConfig, TcpRing, Transport};

/// Addresses on 127.0.0.1 that were free a moment ago.
fn free_peers(world: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

fn configs(world: usize, transport: Transport, chunk_bytes: usize) -> Vec<RingConfig> {
    let peers = free_peers(world);
    (0..world)
        .map(|rank| {
            let mut c = RingConfig::new(
                rank,
                peers.clone(),
                b"test secret of 32 bytes.........".to_vec(),
            );
            c.transport = transport;
            c.chunk_bytes = chunk_bytes;
            c.timeout = Duration::from_secs(20);
            c
        })
        .collect()
}

/// The ways ranks on one host can be connected: TCP links, shared-memory
/// links (the ring a multi-host job uses between neighbours on one host),
/// and the shared-memory group.
const VARIANTS: [(Transport, bool); 3] = [
    (Transport::Tcp, false),
    (Transport::Shm, false),
    (Transport::Shm, true),
];

fn variant_configs(
    world: usize,
    (transport, shared_group): (Transport, bool),
    chunk_bytes: usize,
) -> Vec<RingConfig> {
    let mut cs = configs(world, transport, chunk_bytes);
    cs.iter_mut().for_each(|c| c.shared_group = shared_group);
    cs
}

/// Runs `f` on every rank of a fresh ring, one thread each.
fn on_ring<T: Send>(
    configs: Vec<RingConfig>,
    f: impl Fn(usize, Result<TcpRing, CollectiveError>) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let f = &f;
                s.spawn(move || f(rank, TcpRing::connect(&c)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Checks every rank's result against the sequential sum, within the
/// rounding of `world` additions.
fn assert_sums(inputs: &[Vec<f32>], results: &[Vec<f32>], what: &str) {
    let n = inputs[0].len();
    for i in 0..n {
        let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
        let magnitude: f64 = inputs.iter().map(|v| v[i].abs() as f64).sum();
        let tol = magnitude * inputs.len() as f64 * f32::EPSILON as f64;
        for (r, res) in results.iter().enumerate() {
            assert!(
                (res[i] as f64 - exact).abs() <= tol,
                "{what}: rank {r} element {i}: {} vs {exact}",
                res[i]
            );
        }
    }
}

#[test]
fn all_reduce_equals_the_sequential_sum_for_1_to_8_ranks() {
    let chunk_bytes = 4096; // many chunks per segment even for small buffers
    let chunk = chunk_bytes / 4;
    // One rank: the identity.
    let mut solo =
        trainer::collective::open(&RingConfig::new(0, free_peers(1), Vec::new())).unwrap();
    let mut one = random_values(33, 1);
    let copy = one.clone();
    solo.all_reduce_sum(&mut one).unwrap();
    assert_eq!(one, copy);
    for world in 2..=8 {
        for (transport, shared_group) in VARIANTS {
            let sizes = [
                1,
                2,
                3,
                world - 1,
                world + 1,
                chunk - 1,
                chunk + 1,
                7 * chunk * world + 5,
                1_000_003,
            ];
            let inputs: Vec<Vec<Vec<f32>>> = sizes
                .iter()
                .map(|&n| {
                    (0..world)
                        .map(|r| random_values(n, (n * 131 + r) as u64))
                        .collect()
                })
                .collect();
            let cs = variant_configs(world, (transport, shared_group), chunk_bytes);
            let results = on_ring(cs, |rank, ring| {
                let mut ring = ring.unwrap();
                // Ranks on one host meet in one mapping unless told not to.
                assert_eq!(ring.uses_group(), shared_group);
                inputs
                    .iter()
                    .map(|per_rank| {
                        let mut buf = per_rank[rank].clone();
                        ring.all_reduce_sum(&mut buf).unwrap();
                        buf
                    })
                    .collect::<Vec<_>>()
            });
            for (k, n) in sizes.iter().enumerate() {
                let got: Vec<Vec<f32>> = results.iter().map(|r| r[k].clone()).collect();
                assert_sums(
                    &inputs[k],
                    &got,
                    &format!("{transport:?} (group {shared_group}) world {world} n {n}"),
                );
                // Every rank holds the same bits, whatever the transport.
                assert!(got.iter().all(|g| g == &got[0]));
            }
        }
    }
}

#[test]
fn all_reduce_of_256_mib() {
    let world = 4;
    let n = 64 << 20; // 256 MiB of f32
    // Small integers: every order of summation is exact, so the comparison is too.
    let value = |r: usize, i: usize| ((i * 7 + r * 13) % 1000) as f32;
    let results = on_ring(
        configs(world, Transport::Auto, RingConfig::DEFAULT_CHUNK_BYTES),
        |rank, ring| {
            let mut ring = ring.unwrap();
            let mut buf: Vec<f32> = (0..n).map(|i| value(rank, i)).collect();
            ring.all_reduce_sum(&mut buf).unwrap();
            (0..n).all(|i| buf[i] == (0..world).map(|r| value(r, i)).sum::<f32>())
        },
    );
    assert_eq!(results, vec![true; world]);
}

#[test]
fn all_reduce_mean_broadcast_and_barrier() {
    let world = 3;
    let results = on_ring(configs(world, Transport::Auto, 64), |rank, ring| {
        let mut ring = ring.unwrap();
        let mut mean = vec![rank as f32 * 3.0; 10];
        ring.all_reduce_mean(&mut mean).unwrap();
        let mut from = Vec::new();
        for root in 0..world {
            let mut buf: Vec<f32> = (0..100).map(|i| (i * 10 + rank) as f32).collect();
            ring.broadcast(&mut buf, root).unwrap();
            from.push(buf);
        }
        ring.barrier().unwrap();
        (mean, from)
    });
    for (mean, from) in results {
        assert_eq!(mean, vec![3.0; 10]);
        for (root, buf) in from.iter().enumerate() {
            assert!(
                buf.iter()
                    .enumerate()
                    .all(|(i, &x)| x == (i * 10 + root) as f32)
            );
        }
    }
}

#[test]
fn ranks_that_disagree_on_the_size_all_fail_naming_both_calls() {
    let world = 3;
    for variant in VARIANTS {
        let started = Instant::now();
        let errors = on_ring(variant_configs(world, variant, 4096), |rank, ring| {
            let mut ring = ring.unwrap();
            let mut ok = vec![1.0f32; 16];
            ring.all_reduce_sum(&mut ok).unwrap();
            let mut buf = vec![1.0f32; if rank == 2 { 999 } else { 1000 }];
            let err = ring.all_reduce_sum(&mut buf).unwrap_err().to_string();
            // Later calls fail at once rather than hanging.
            let again = ring.barrier().unwrap_err();
            assert!(matches!(again, CollectiveError::Broken { .. }), "{again}");
            err
        });
        assert!(started.elapsed() < Duration::from_secs(10), "{variant:?}");
        for (rank, e) in errors.iter().enumerate() {
            assert!(e.contains("operation #2"), "{variant:?} rank {rank}: {e}");
            assert!(
                e.contains("999 f32 values") && e.contains("1000 f32 values"),
                "{variant:?} rank {rank}: {e}"
            );
        }
    }
}

#[test]
fn a_rank_with_the_wrong_secret_is_refused() {
    let mut cs = configs(2, Transport::Auto, 4096);
    for c in &mut cs {
        c.timeout = Duration::from_secs(3);
    }
    cs[1].secret = b"another attempt's secret........".to_vec();
    let errors = on_ring(cs, |_, ring| ring.unwrap_err().to_string());
    // The first rank to check the other's proof refuses it; the other is
    // told so, or waits out the timeout and names the refused caller.
    assert!(
        errors
            .iter()
            .any(|e| e.contains("does not know this attempt's secret")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.contains("secret") || e.contains("no connection")),
        "{errors:?}"
    );
}

/// Connects to `target`, retrying while it does not listen yet.
fn connect_when_listening(target: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(target) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{target} never listened: {e}"),
        }
    }
}

/// Joins a ring as `config` says and sums `value` (five of them) over it.
fn sum_on_ring(config: &RingConfig, value: f32) -> Vec<f32> {
    let mut ring = TcpRing::connect(config).unwrap();
    let mut buf = vec![value; 5];
    ring.all_reduce_sum(&mut buf).unwrap();
    buf
}

#[test]
fn strangers_are_refused_and_the_ring_still_forms() {
    let mut cs = configs(2, Transport::Tcp, 4096);
    let target = cs[0].peers[0].clone();
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    std::thread::scope(|s| {
        // Rank 0 listens, waiting for rank 1 ...
        let rank0 = s.spawn(move || sum_on_ring(&c0, 1.0));
        // ... and a stranger gets there first with random bytes: it is
        // dropped without an answer.
        let mut stranger = connect_when_listening(&target);
        use std::io::{Read, Write};
        let mut rng = StdRng::seed_from_u64(9);
        let garbage: Vec<u8> = (0..300).map(|_| rng.random()).collect();
        stranger.write_all(&garbage).unwrap();
        stranger
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stranger.read_to_end(&mut answer);
        assert!(answer.is_empty(), "a stranger was answered: {answer:?}");

        let rank1 = s.spawn(move || sum_on_ring(&c1, 2.0));
        assert_eq!(rank0.join().unwrap(), vec![3.0; 5]);
        assert_eq!(rank1.join().unwrap(), vec![3.0; 5]);
    });
}

/// Runs `f` on a thread of its own and returns what it returns; fails the
/// test instead of hanging when it has not returned after `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("still running after {limit:?}")
        }
    }
}

/// Rank 0 of a two-rank ring waits for rank 1 while `idle` callers connect
/// to its ring port and say nothing, three send garbage and a rank of
/// another attempt (same rank number, wrong secret) tries to join; all
/// before rank 1 starts, and the connections stay open. Both real ranks
/// join and sum; returns how long the ring took to form.
fn ring_forms_past_hostile_callers(idle: usize) -> Duration {
    use std::io::Write;
    let mut cs = configs(2, Transport::Tcp, 4096);
    let target = cs[0].peers[0].clone();
    let mut stranger = cs[1].clone();
    stranger.peers[1] = free_peers(1).remove(0);
    stranger.secret = b"another attempt's secret........".to_vec();
    stranger.timeout = Duration::from_secs(10);
    let c1 = cs.pop().unwrap();
    let c0 = cs.pop().unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        let rank0 = s.spawn(move || sum_on_ring(&c0, 1.0));
        let mut held: Vec<TcpStream> = (0..idle).map(|_| connect_when_listening(&target)).collect();
        let mut rng = StdRng::seed_from_u64(idle as u64);
        for _ in 0..3 {
            let mut garbage = connect_when_listening(&target);
            let bytes: Vec<u8> = (0..300).map(|_| rng.random()).collect();
            garbage.write_all(&bytes).unwrap();
            held.push(garbage);
        }
        let Err(refused) = TcpRing::connect(&stranger) else {
            panic!("a rank with a wrong secret joined");
        };
        assert!(refused.to_string().contains("secret"), "{refused}");
        let rank1 = s.spawn(move || sum_on_ring(&c1, 2.0));
        assert_eq!(rank0.join().unwrap(), vec![3.0; 5], "{idle} idle callers");
        assert_eq!(rank1.join().unwrap(), vec![3.0; 5], "{idle} idle callers");
        drop(held);
    });
    started.elapsed()
}

#[test]
fn idle_and_garbage_connections_do_not_keep_the_previous_rank_out() {
    // 12 idle callers once made set-up fail (each held the only handshake
    // for 5 s); 100 is past the handshakes run at once.
    for idle in [12, 100] {
        let took = within(Duration::from_secs(120), move || {
            ring_forms_past_hostile_callers(idle)
        });
        eprintln!("{idle} idle callers: the ring formed in {took:?}");
    }
}

#[test]
fn a_stalled_peer_becomes_an_error_within_the_timeout() {
    for variant in VARIANTS {
        let mut cs = variant_configs(2, variant, 4096);
        for c in &mut cs {
            c.timeout = Duration::from_secs(1);
        }
        let results = on_ring(cs, |rank, ring| {
            let mut ring = ring.unwrap();
            let mut buf = vec![1.0f32; 100_000];
            if rank == 1 {
                // Stalls past the others' timeout, then finds the ring broken.
                std::thread::sleep(Duration::from_secs(3));
            }
            let started = Instant::now();
            let r = ring.all_reduce_sum(&mut buf);
            (r.map_err(|e| e.to_string()), started.elapsed())
        });
        let (err0, took0) = &results[0];
        let err0 = err0.as_ref().unwrap_err();
        assert!(
            err0.contains("rank 1 did not answer"),
            "{variant:?}: {err0}"
        );
        assert!(*took0 < Duration::from_secs(2), "{variant:?}: {took0:?}");
        assert!(
            results[1].0.is_err(),
            "{variant:?}: the stalled rank must not succeed"
        );
    }
}

#[test]
fn a_rank_that_leaves_fails_the_others_at_once_naming_it() {
    for variant in VARIANTS {
        let results = on_ring(variant_configs(3, variant, 4096), |rank, ring| {
            let mut ring = ring.unwrap();
            let mut buf = vec![1.0f32; 10_000];
            ring.all_reduce_sum(&mut buf).unwrap();
            if rank == 1 {
                // Leaves without another call; the others call one more.
                return None;
            }
            let started = Instant::now();
            let err = ring.all_reduce_sum(&mut buf).unwrap_err().to_string();
            Some((err, started.elapsed()))
        });
        for (err, took) in results.into_iter().flatten() {
            assert!(err.contains("rank 1"), "{variant:?}: {err}");
            // The ring's timeout is 20 s: this is noticed, not waited out.
            assert!(took < Duration::from_secs(5), "{variant:?}: {took:?}");
        }
    }
}

#[test]
fn ranks_that_disagree_on_the_shared_group_fail_at_set_up() {
    let mut cs = configs(3, Transport::Shm, 4096);
    cs[1].shared_group = false;
    let errors = on_ring(cs, |_, ring| ring.unwrap_err().to_string());
    for e in errors {
        assert!(
            e.contains("2 of 3 ranks") && e.contains("--no-shared-group"),
            "{e}"
        );
    }
}
