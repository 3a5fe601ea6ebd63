//! Causal grouped-query attention, forward and backward, on token-major
//! buffers (`[tokens, heads × dim]`, the projections' own layout, so no
//! head transposes are copied).
//!
//! Query rows go in blocks of [`BLOCK`]: a block's scores are computed only
//! against the keys it can see, so the masked upper triangle is mostly
//! never multiplied. The probabilities are kept for the backward pass
//! (`rows × heads × seq × seq`). Not here: RoPE and the projections.

use super::kernels::{MatMut, MatRef, matmul, softmax_prefix, softmax_prefix_backward};

/// Query rows per block.
const BLOCK: usize = 64;

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

    /// Row blocks: `(first row, rows, keys it sees)`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let seq = self.seq;
        (0..seq)
            .step_by(BLOCK)
            .map(move |r0| (r0, BLOCK.min(seq - r0), (r0 + BLOCK).min(seq)))
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
}

/// `o = softmax(q·kᵀ/√d + causal mask) · v`, keeping the probabilities in
/// `probs` (`rows × heads × seq × seq`, zero above the diagonal).
pub fn forward(s: &Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], o: &mut [f32]) {
    let n = s.seq;
    for b in 0..s.rows {
        for h in 0..s.heads {
            let g = s.kv_head(h);
            let p = &mut probs[(b * s.heads + h) * n * n..][..n * n];
            let (qh, kg, vg) = (
                s.view(q, s.heads, b, h),
                s.view(k, s.kv_heads, b, g),
                s.view(v, s.kv_heads, b, g),
            );
            for (r0, rb, keys) in s.blocks() {
                matmul(
                    MatMut::new(p, n, n).block(r0, 0, rb, keys),
                    qh.block(r0, 0, rb, s.dim),
                    kg.block(0, 0, keys, s.dim).t(),
                    1.0,
                    false,
                );
                for i in r0..r0 + rb {
                    softmax_prefix(&mut p[i * n..(i + 1) * n], i + 1, s.scale());
                }
                matmul(
                    s.view_mut(o, s.heads, b, h).block(r0, 0, rb, s.dim),
                    MatRef::new(p, n, n).block(r0, 0, rb, keys),
                    vg.block(0, 0, keys, s.dim),
                    1.0,
                    false,
                );
            }
        }
    }
}

/// The backward pass of [`forward`]: from `d_o`, writes `dq` and adds into
/// `dk` and `dv` (which the caller zeroes).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let n = s.seq;
    let mut ds = vec![0.0f32; n * n];
    for b in 0..s.rows {
        for h in 0..s.heads {
            let g = s.kv_head(h);
            let p = &probs[(b * s.heads + h) * n * n..][..n * n];
            let (qh, kg, vg, doh) = (
                s.view(q, s.heads, b, h),
                s.view(k, s.kv_heads, b, g),
                s.view(v, s.kv_heads, b, g),
                s.view(d_o, s.heads, b, h),
            );
            for (r0, rb, keys) in s.blocks() {
                // ∂/∂p = dO · vᵀ, then through the softmax.
                matmul(
                    MatMut::new(&mut ds, n, n).block(r0, 0, rb, keys),
                    doh.block(r0, 0, rb, s.dim),
                    vg.block(0, 0, keys, s.dim).t(),
                    1.0,
                    false,
                );
                for i in r0..r0 + rb {
                    let row = i * n..(i + 1) * n;
                    softmax_prefix_backward(&p[row.clone()], &mut ds[row], i + 1);
                }
                let ds_block = MatRef::new(&ds, n, n).block(r0, 0, rb, keys);
                let p_block = MatRef::new(p, n, n).block(r0, 0, rb, keys);
                matmul(
                    s.view_mut(dq, s.heads, b, h).block(r0, 0, rb, s.dim),
                    ds_block,
                    kg.block(0, 0, keys, s.dim),
                    s.scale(),
                    false,
                );
                matmul(
                    s.view_mut(dk, s.kv_heads, b, g).block(0, 0, keys, s.dim),
                    ds_block.t(),
                    qh.block(r0, 0, rb, s.dim),
                    s.scale(),
                    true,
                );
                matmul(
                    s.view_mut(dv, s.kv_heads, b, g).block(0, 0, keys, s.dim),
                    p_block.t(),
                    doh.block(r0, 0, rb, s.dim),
                    1.0,
                    true,
                );
            }
        }
    }
}
