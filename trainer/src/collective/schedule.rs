//! The ring algorithms as schedules: which pieces of the buffer a rank
//! sends and receives, in order, and what each piece must wait for.
//!
//! All-reduce is reduce-scatter then all-gather (Patarasuk and Yuan's
//! bandwidth-optimal ring, as in NCCL and gloo): the buffer is cut into N
//! segments; in N−1 steps every rank passes one segment on and adds the one
//! it receives, after which rank r holds the full sum of segment r+1; N−1
//! more steps pass the sums around. Each rank sends 2(N−1)/N of the buffer.
//! Segments are cut into chunks, and a chunk is sent on as soon as it has
//! arrived and been added, so a rank never waits for a whole segment.
//! Broadcast is a chunked pipeline from the root around the ring.
//!
//! Items carry their dependencies as counts: a send waits until the first
//! `after_recv` receives are done, a receive until the first `after_sent`
//! sends are done (so it never overwrites values still being sent).

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendItem {
    pub range: Range<usize>,
    pub after_recv: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvItem {
    pub range: Range<usize>,
    /// Add to the buffer (reduce-scatter) rather than overwrite it.
    pub reduce: bool,
    pub after_sent: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub sends: Vec<SendItem>,
    pub recvs: Vec<RecvItem>,
}

/// Segment `s` of `n` values split `world` ways (the first `n % world`
/// segments are one longer).
pub fn segment(n: usize, world: usize, s: usize) -> Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = s * base + s.min(extra);
    start..start + base + usize::from(s < extra)
}

fn chunks(range: Range<usize>, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    range
        .clone()
        .step_by(chunk)
        .map(move |start| start..(start + chunk).min(range.end))
}

/// Rank `rank`'s schedule of an all-reduce of `n` values in chunks of
/// `chunk` values.
pub fn all_reduce(n: usize, rank: usize, world: usize, chunk: usize) -> Schedule {
    let mut out = Schedule::default();
    let steps = 2 * (world - 1);
    let mut send_start = Vec::with_capacity(steps);
    let mut recv_start = Vec::with_capacity(steps);
    let back = |k: usize| (rank + 2 * world - k) % world;
    for g in 0..steps {
        let (send_seg, recv_seg, reduce) = if g < world - 1 {
            (back(g), back(g + 1), true)
        } else {
            let k = g - (world - 1);
            ((rank + 1 + 2 * world - k) % world, back(k), false)
        };
        send_start.push(out.sends.len());
        recv_start.push(out.recvs.len());
        // What is sent at step g arrived (whole, chunk for chunk) at step g−1.
        for (c, range) in chunks(segment(n, world, send_seg), chunk).enumerate() {
            let after_recv = if g == 0 { 0 } else { recv_start[g - 1] + c + 1 };
            out.sends.push(SendItem { range, after_recv });
        }
        // All-gather overwrites the segment sent at reduce-scatter step k.
        for (c, range) in chunks(segment(n, world, recv_seg), chunk).enumerate() {
            let after_sent = if reduce {
                0
            } else {
                send_start[g - (world - 1)] + c + 1
            };
            out.recvs.push(RecvItem {
                range,
                reduce,
                after_sent,
            });
        }
    }
    out
}

/// Rank `rank`'s schedule of a broadcast of `n` values from `root`.
pub fn broadcast(n: usize, rank: usize, world: usize, root: usize, chunk: usize) -> Schedule {
    let mut out = Schedule::default();
    let all = || chunks(0..n, chunk).enumerate();
    if rank == root {
        out.sends = all()
            .map(|(_, range)| SendItem {
                range,
                after_recv: 0,
            })
            .collect();
        return out;
    }
    out.recvs = all()
        .map(|(_, range)| RecvItem {
            range,
            reduce: false,
            after_sent: 0,
        })
        .collect();
    if (rank + 1) % world != root {
        out.sends = all()
            .map(|(c, range)| SendItem {
                range,
                after_recv: c + 1,
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Runs the schedules of all ranks against each other, one item at a
    /// time wherever one is ready; panics on a deadlock or a size mismatch.
    fn simulate(schedules: &[Schedule], buffers: &mut [Vec<f32>]) {
        let world = schedules.len();
        let mut links: Vec<VecDeque<Vec<f32>>> = vec![VecDeque::new(); world];
        let mut sent = vec![0; world];
        let mut recvd = vec![0; world];
        loop {
            let mut progress = false;
            for r in 0..world {
                let s = &schedules[r];
                if let Some(item) = s.sends.get(sent[r])
                    && recvd[r] >= item.after_recv
                {
                    links[(r + 1) % world].push_back(buffers[r][item.range.clone()].to_vec());
                    sent[r] += 1;
                    progress = true;
                }
                if let Some(item) = s.recvs.get(recvd[r])
                    && sent[r] >= item.after_sent
                    && let Some(data) = links[r].pop_front()
                {
                    assert_eq!(data.len(), item.range.len(), "rank {r} item {}", recvd[r]);
                    for (d, x) in buffers[r][item.range.clone()].iter_mut().zip(data) {
                        *d = if item.reduce { *d + x } else { x };
                    }
                    recvd[r] += 1;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        for r in 0..world {
            assert_eq!(sent[r], schedules[r].sends.len(), "rank {r} stuck sending");
            assert_eq!(
                recvd[r],
                schedules[r].recvs.len(),
                "rank {r} stuck receiving"
            );
            assert!(links[r].is_empty(), "unread data for rank {r}");
        }
    }

    #[test]
    fn segments_cover_the_buffer_in_order() {
        for n in [0, 1, 5, 64, 1001] {
            for world in 1..=9 {
                let segs: Vec<_> = (0..world).map(|s| segment(n, world, s)).collect();
                assert_eq!(segs[0].start, 0);
                assert_eq!(segs[world - 1].end, n);
                assert!(segs.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }

    #[test]
    fn all_reduce_schedules_sum_without_deadlock() {
        for world in 2..=8 {
            for n in [1, 2, 7, world - 1, world, 3 * world + 1, 100, 1023] {
                for chunk in [1, 3, 16, 1 << 20] {
                    let schedules: Vec<_> =
                        (0..world).map(|r| all_reduce(n, r, world, chunk)).collect();
                    let mut bufs: Vec<Vec<f32>> = (0..world)
                        .map(|r| (0..n).map(|i| (i * world + r) as f32).collect())
                        .collect();
                    let expected: Vec<f32> = (0..n)
                        .map(|i| (0..world).map(|r| (i * world + r) as f32).sum())
                        .collect();
                    simulate(&schedules, &mut bufs);
                    for (r, b) in bufs.iter().enumerate() {
                        assert_eq!(b, &expected, "world {world} n {n} chunk {chunk} rank {r}");
                    }
                    // Each rank sends 2(N−1)/N of the buffer (to within a segment's rounding).
                    let sent: usize = schedules[0].sends.iter().map(|s| s.range.len()).sum();
                    assert!(sent.abs_diff(2 * (world - 1) * n / world) <= 2 * world);
                }
            }
        }
    }

    #[test]
    fn broadcast_schedules_copy_the_root() {
        for world in 2..=6 {
            for root in 0..world {
                for n in [1, 5, 64] {
                    let schedules: Vec<_> = (0..world)
                        .map(|r| broadcast(n, r, world, root, 4))
                        .collect();
                    let mut bufs: Vec<Vec<f32>> = (0..world).map(|r| vec![r as f32; n]).collect();
                    simulate(&schedules, &mut bufs);
                    assert!(bufs.iter().all(|b| b.iter().all(|&x| x == root as f32)));
                }
            }
        }
    }
}
