//! Causal grouped-query attention, forward and backward, on token-major
//! buffers (`[tokens, heads × dim]`, the projections' own layout, so no
//! head transposes are copied), computed the FlashAttention-2 way.
//!
//! Query rows go in blocks of [`QUERY_BLOCK`] and keys in blocks of
//! [`KEY_BLOCK`]; a query block visits only the key blocks up to the
//! causal diagonal, and only the last of them is masked. The forward pass
//! keeps a running max and sum per query row (an online softmax) and
//! saves only each row's log-sum-exp (`rows × heads × seq`); the backward
//! pass recomputes the probabilities from it block by block. Scores and
//! probabilities exist only as one block of scratch, so memory is O(seq)
//! per head, not O(seq²). The keys (and, for the backward pass, the
//! values) of each key head are copied once, transposed to `[dim, seq]`
//! ([`TransposedHead`]): the products with `kᵀ` and `vᵀ` then read rows,
//! which the f32 kernel packs faster than columns. Not here: RoPE and the
//! projections.

use super::kernels::{MatMut, MatRef, dot, exp, exp_shifted, exp_sub, matmul, scale, softmax_grad};

/// Query rows per block.
const QUERY_BLOCK: usize = 64;
/// Keys per block: a multiple of [`QUERY_BLOCK`], so that every query row
/// sees at least one key of each block its query block visits.
const KEY_BLOCK: usize = 256;

/// The shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Sequences in the batch.
    pub rows: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
}

impl Heads {
    fn tokens(&self) -> usize {
        self.rows * self.seq
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dim as f32).sqrt()
    }

    /// The key/value head query head `h` reads.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// Query blocks: `(first row, rows)`.
    fn query_blocks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let seq = self.seq;
        (0..seq)
            .step_by(QUERY_BLOCK)
            .map(move |r0| (r0, QUERY_BLOCK.min(seq - r0)))
    }

    /// Head `h` of sequence `b` in a `[tokens, heads × dim]` buffer.
    fn view<'a>(&self, buf: &'a [f32], heads: usize, b: usize, h: usize) -> MatRef<'a> {
        MatRef::new(buf, self.tokens(), heads * self.dim).block(
            b * self.seq,
            h * self.dim,
            self.seq,
            self.dim,
        )
    }

    fn view_mut<'a>(&self, buf: &'a mut [f32], heads: usize, b: usize, h: usize) -> MatMut<'a> {
        let tokens = self.tokens();
        MatMut::new(buf, tokens, heads * self.dim).block(
            b * self.seq,
            h * self.dim,
            self.seq,
            self.dim,
        )
    }

    /// Row `i` of query head `h` of sequence `b` in a `[tokens, heads × dim]` buffer.
    fn row(&self, b: usize, h: usize, i: usize) -> std::ops::Range<usize> {
        let at = ((b * self.seq + i) * self.heads + h) * self.dim;
        at..at + self.dim
    }
}

/// One key head of one sequence, transposed (`[dim, seq]`, row-major), kept
/// while the query heads that share it run: a product with `kᵀ` reads
/// `dim` rows of it instead of `dim` columns of the token-major buffer
/// (185 against 143 GFLOP/s for a 64 × 256 × 64 block, one thread).
#[derive(Default)]
struct TransposedHead {
    /// Which `(sequence, key head)` it holds.
    holds: Option<(usize, usize)>,
    data: Vec<f32>,
}

impl TransposedHead {
    /// Head `g` of sequence `b` of the `[tokens, kv_heads × dim]` buffer
    /// `buf`, transposed (copied only when it is not the head held).
    fn of(&mut self, s: &Heads, buf: &[f32], b: usize, g: usize) -> MatRef<'_> {
        let (n, dim) = (s.seq, s.dim);
        if self.holds != Some((b, g)) {
            self.data.resize(dim * n, 0.0);
            let width = s.kv_heads * dim;
            // Sixteen tokens at a time, so each row of the copy is written
            // sixteen values at a time.
            for t0 in (0..n).step_by(16) {
                let tokens = 16.min(n - t0);
                let first = (b * n + t0) * width + g * dim;
                for j in 0..dim {
                    let row = &mut self.data[j * n + t0..][..tokens];
                    for (t, x) in row.iter_mut().enumerate() {
                        *x = buf[first + t * width + j];
                    }
                }
            }
            self.holds = Some((b, g));
        }
        MatRef::new(&self.data, dim, n)
    }
}

/// Key blocks query rows `r0..end` see: `(first key, keys)`.
fn key_blocks(end: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..end)
        .step_by(KEY_BLOCK)
        .map(move |c0| (c0, KEY_BLOCK.min(end - c0)))
}

/// How many of the keys `c0..c0 + keys` query row `i` sees.
fn live(i: usize, c0: usize, keys: usize) -> usize {
    (i + 1).saturating_sub(c0).min(keys)
}

/// `o = softmax(q·kᵀ/√d + causal mask) · v`, and each query row's
/// log-sum-exp of its scaled scores in `lse` (`rows × heads × seq`).
pub fn forward(s: &Heads, q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], lse: &mut [f32]) {
    let n = s.seq;
    let mut scores = vec![0.0f32; QUERY_BLOCK * KEY_BLOCK];
    // Per row of the query block: the running max and sum.
    let mut max = [0.0f32; QUERY_BLOCK];
    let mut sum = [0.0f32; QUERY_BLOCK];
    let mut k_t = TransposedHead::default();
    for b in 0..s.rows {
        for h in 0..s.heads {
            let g = s.kv_head(h);
            let lse = &mut lse[(b * s.heads + h) * n..][..n];
            let (qh, kt, vg) = (
                s.view(q, s.heads, b, h),
                k_t.of(s, k, b, g),
                s.view(v, s.kv_heads, b, g),
            );
            for (r0, rb) in s.query_blocks() {
                max.fill(f32::NEG_INFINITY);
                sum.fill(0.0);
                for (c0, kb) in key_blocks(r0 + rb) {
                    let p = &mut scores[..rb * kb];
                    matmul(
                        MatMut::new(p, rb, kb),
                        qh.block(r0, 0, rb, s.dim),
                        kt.block(0, c0, s.dim, kb),
                        s.scale(),
                        false,
                    );
                    for (i, row) in p.chunks_exact_mut(kb).enumerate() {
                        let seen = live(r0 + i, c0, kb);
                        let (row, masked) = row.split_at_mut(seen);
                        masked.fill(0.0);
                        if seen == 0 {
                            continue;
                        }
                        let (m, l) = exp_shifted(row);
                        let new = max[i].max(m);
                        let (old_weight, weight) = (exp(max[i] - new), exp(m - new));
                        sum[i] = sum[i] * old_weight + l * weight;
                        max[i] = new;
                        if weight != 1.0 {
                            scale(row, weight);
                        }
                        if c0 > 0 && old_weight != 1.0 {
                            scale(&mut o[s.row(b, h, r0 + i)], old_weight);
                        }
                    }
                    matmul(
                        s.view_mut(o, s.heads, b, h).block(r0, 0, rb, s.dim),
                        MatRef::new(p, rb, kb),
                        vg.block(c0, 0, kb, s.dim),
                        1.0,
                        c0 > 0,
                    );
                }
                for i in 0..rb {
                    scale(&mut o[s.row(b, h, r0 + i)], 1.0 / sum[i]);
                    lse[r0 + i] = max[i] + sum[i].ln();
                }
            }
        }
    }
}

/// The backward pass of [`forward`], given its output `o` and `lse`: from
/// `d_o`, writes `dq` and adds into `dk` and `dv` (which the caller zeroes).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let n = s.seq;
    let mut probs = vec![0.0f32; QUERY_BLOCK * KEY_BLOCK];
    let mut d_scores = vec![0.0f32; QUERY_BLOCK * KEY_BLOCK];
    // Per row of the query block: `D = Σ dO ⊙ O = Σ p ⊙ ∂/∂p`.
    let mut d = [0.0f32; QUERY_BLOCK];
    let (mut k_t, mut v_t) = (TransposedHead::default(), TransposedHead::default());
    for b in 0..s.rows {
        for h in 0..s.heads {
            let g = s.kv_head(h);
            let lse = &lse[(b * s.heads + h) * n..][..n];
            let (qh, kg, doh) = (
                s.view(q, s.heads, b, h),
                s.view(k, s.kv_heads, b, g),
                s.view(d_o, s.heads, b, h),
            );
            let (kt, vt) = (k_t.of(s, k, b, g), v_t.of(s, v, b, g));
            for (r0, rb) in s.query_blocks() {
                for (i, d) in d[..rb].iter_mut().enumerate() {
                    let row = s.row(b, h, r0 + i);
                    *d = dot(&d_o[row.clone()], &o[row]);
                }
                let (q_block, do_block) = (qh.block(r0, 0, rb, s.dim), doh.block(r0, 0, rb, s.dim));
                for (c0, kb) in key_blocks(r0 + rb) {
                    let k_block = kg.block(c0, 0, kb, s.dim);
                    // The probabilities again, from the saved log-sum-exp.
                    let p = &mut probs[..rb * kb];
                    matmul(
                        MatMut::new(p, rb, kb),
                        q_block,
                        kt.block(0, c0, s.dim, kb),
                        s.scale(),
                        false,
                    );
                    for (i, row) in p.chunks_exact_mut(kb).enumerate() {
                        let (row, masked) = row.split_at_mut(live(r0 + i, c0, kb));
                        exp_sub(row, lse[r0 + i]);
                        masked.fill(0.0);
                    }
                    let p = &probs[..rb * kb];
                    matmul(
                        s.view_mut(dv, s.kv_heads, b, g).block(c0, 0, kb, s.dim),
                        MatRef::new(p, rb, kb).t(),
                        do_block,
                        1.0,
                        true,
                    );
                    // ∂/∂p = dO · vᵀ, then through the softmax: p ⊙ (∂/∂p − D).
                    let ds = &mut d_scores[..rb * kb];
                    matmul(
                        MatMut::new(ds, rb, kb),
                        do_block,
                        vt.block(0, c0, s.dim, kb),
                        1.0,
                        false,
                    );
                    for ((ds, p), &d) in ds.chunks_exact_mut(kb).zip(p.chunks_exact(kb)).zip(&d) {
                        softmax_grad(p, ds, d);
                    }
                    let ds = MatRef::new(&d_scores[..rb * kb], rb, kb);
                    matmul(
                        s.view_mut(dq, s.heads, b, h).block(r0, 0, rb, s.dim),
                        ds,
                        k_block,
                        s.scale(),
                        c0 > 0,
                    );
                    matmul(
                        s.view_mut(dk, s.kv_heads, b, g).block(c0, 0, kb, s.dim),
                        ds.t(),
                        q_block,
                        s.scale(),
                        true,
                    );
                }
            }
        }
    }
}
