//! The numeric building blocks of the fused CPU step: matrix products on
//! strided views (the `gemm` crate burn-flex also runs), and the
//! element-wise passes (a vectorised `exp`, softmax rows, RMSNorm, RoPE,
//! SiLU) compiled for AVX-512 and AVX2 as well as the baseline, with the
//! variant chosen once at run time ([`simd_fn`]). Nothing here knows about
//! layers or adapters.

use std::sync::OnceLock;

/// What the CPU can run, probed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 F/VL with AVX2 and FMA.
    V4,
    /// AVX2 and FMA.
    V3,
    Base,
}

pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if v3 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return SimdLevel::V4;
            }
            if v3 {
                return SimdLevel::V3;
            }
        }
        SimdLevel::Base
    })
}

/// Defines a function whose body is compiled three times (AVX-512, AVX2 +
/// FMA, baseline) and runs the best one the CPU has. Helpers it calls are
/// `#[inline(always)]` so that they are compiled with the same features.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::train::fused::kernels::simd_level() {
                    // SAFETY: the CPU was probed for these features.
                    $crate::train::fused::kernels::SimdLevel::V4 => return unsafe { v4($($arg),*) },
                    $crate::train::fused::kernels::SimdLevel::V3 => return unsafe { v3($($arg),*) },
                    $crate::train::fused::kernels::SimdLevel::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Where a matrix view's elements lie in its buffer: element `(i, j)` at
/// `offset + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    offset: usize,
    pub rows: usize,
    pub cols: usize,
    rs: usize,
    cs: usize,
}

impl Layout {
    /// Row-major `rows × cols` at the start of a buffer of `len` values.
    fn row_major(rows: usize, cols: usize, len: usize) -> Layout {
        assert!(len >= rows * cols, "matrix of {rows}×{cols} in {len}");
        Layout {
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn transposed(self) -> Layout {
        Layout {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn block(self, r: usize, c: usize, rows: usize, cols: usize) -> Layout {
        assert!(
            r + rows <= self.rows && c + cols <= self.cols,
            "block out of range"
        );
        Layout {
            offset: self.offset + r * self.rs + c * self.cs,
            rows,
            cols,
            ..self
        }
    }

    fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }

    /// Panics unless every element lies inside a buffer of `len` values.
    fn check(&self, len: usize) {
        if !self.is_empty() {
            let last = self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < len, "matrix view out of its buffer");
        }
    }
}

/// A read-only matrix view.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    pub at: Layout,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        let at = Layout::row_major(rows, cols, data.len());
        MatRef { data, at }
    }

    /// The transpose (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            at: self.at.transposed(),
            ..self
        }
    }

    /// The `rows × cols` block at `(r, c)`.
    pub fn block(self, r: usize, c: usize, rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            at: self.at.block(r, c, rows, cols),
            ..self
        }
    }
}

/// A writable matrix view.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    pub at: Layout,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> MatMut<'a> {
        let at = Layout::row_major(rows, cols, data.len());
        MatMut { data, at }
    }

    /// The `rows × cols` block at `(r, c)`.
    pub fn block(self, r: usize, c: usize, rows: usize, cols: usize) -> MatMut<'a> {
        MatMut {
            at: self.at.block(r, c, rows, cols),
            ..self
        }
    }
}

/// `out = scale · a · b`, or `out += scale · a · b` with `accumulate`.
pub fn matmul(out: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, scale: f32, accumulate: bool) {
    let (o, x, y) = (out.at, a.at, b.at);
    assert_eq!(x.cols, y.rows, "inner dimensions");
    assert_eq!((o.rows, o.cols), (x.rows, y.cols), "output shape");
    x.check(a.data.len());
    y.check(b.data.len());
    o.check(out.data.len());
    if o.is_empty() {
        return;
    }
    if x.cols == 0 {
        if !accumulate {
            for i in 0..o.rows {
                for j in 0..o.cols {
                    out.data[o.offset + i * o.rs + j * o.cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every view was checked to lie inside its buffer above, and
    // `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            o.rows,
            o.cols,
            x.cols,
            out.data.as_mut_ptr().add(o.offset),
            o.cs as isize,
            o.rs as isize,
            accumulate,
            a.data.as_ptr().add(x.offset),
            x.cs as isize,
            x.rs as isize,
            b.data.as_ptr().add(y.offset),
            y.cs as isize,
            y.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `e^x` to about 2 ulp (Cephes' polynomial), branch-free so that loops
/// over it vectorise; `−∞` and anything below −87.3 give 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOW: f32 = -87.336_55;
    let c = x.clamp(LOW, 88.0);
    let n = (c * LOG2E + 0.5).floor();
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from the bits of n + 127 + 1.5·2²³, whose low mantissa bits are
    // n + 127 (an integer conversion that vectorises, unlike `as i32`).
    let scaled = y * f32::from_bits((n + 12_583_039.0).to_bits() << 23);
    if x < LOW { 0.0 } else { scaled }
}

/// The logistic function `1 / (1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

const LANES: usize = 16;

/// `Σ a·b` with sixteen partial sums, so that it vectorises.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// Replaces each `v` of `row` by `e^(v − max)` and returns their sum.
#[inline(always)]
fn exp_minus(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum + acc.iter().sum::<f32>()
}

simd_fn! {
    /// Softmax of `row` in place over its first `len` values (the causal
    /// ones), after multiplying them by `scale`; the rest become 0.
    pub fn softmax_prefix(row: &mut [f32], len: usize, scale: f32) {
        let (live, masked) = row.split_at_mut(len);
        let mut max = f32::NEG_INFINITY;
        for v in live.iter_mut() {
            *v *= scale;
            max = max.max(*v);
        }
        let inv = 1.0 / exp_minus(live, max);
        for v in live.iter_mut() {
            *v *= inv;
        }
        masked.fill(0.0);
    }
}

simd_fn! {
    /// Replaces `row` by `e^(row − max)` and returns `(max, Σ e^(row − max))`:
    /// an unnormalised softmax and what its log-sum-exp needs.
    pub fn exp_shifted(row: &mut [f32]) -> (f32, f32) {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                lanes[i] = lanes[i].max(c[i]);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .fold(lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max), |m, &v| m.max(v));
        (max, exp_minus(row, max))
    }
}

simd_fn! {
    /// `a *= k`.
    pub fn scale(a: &mut [f32], k: f32) {
        for a in a.iter_mut() {
            *a *= k;
        }
    }
}

simd_fn! {
    /// The backward pass of [`softmax_prefix`] on one row: `dp` holds
    /// `∂/∂p` and becomes `∂/∂(scores)` before the scale, over the first
    /// `len` values (`p ⊙ (dp − Σ p·dp)`); the rest become 0.
    pub fn softmax_prefix_backward(p: &[f32], dp: &mut [f32], len: usize) {
        let c = dot(&p[..len], &dp[..len]);
        for (d, &p) in dp[..len].iter_mut().zip(&p[..len]) {
            *d = p * (*d - c);
        }
        dp[len..].fill(0.0);
    }
}

simd_fn! {
    /// RMSNorm of each `width`-wide row of `x` into `out`, times `weight`;
    /// `inv` receives each row's `1 / √(mean(x²) + eps)`.
    pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], inv: &mut [f32]) {
        let width = weight.len();
        for ((row, o), r) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)).zip(inv.iter_mut()) {
            let ms = dot(row, row) / width as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
                *o = w * (v * *r);
            }
        }
    }
}

simd_fn! {
    /// Adds the gradient of [`rms_norm`] with respect to `x` into `dx`,
    /// given `d_out` (`∂/∂out`): per row,
    /// `inv·(w ⊙ d) − x · inv³ · Σ(w ⊙ d ⊙ x) / width`.
    pub fn rms_norm_backward(x: &[f32], weight: &[f32], inv: &[f32], d_out: &[f32], dx: &mut [f32]) {
        let width = weight.len();
        let mut wd = vec![0.0f32; width];
        for (((row, d), dx), &r) in x
            .chunks_exact(width)
            .zip(d_out.chunks_exact(width))
            .zip(dx.chunks_exact_mut(width))
            .zip(inv)
        {
            for ((g, &d), &w) in wd.iter_mut().zip(d).zip(weight) {
                *g = w * d;
            }
            let k = dot(&wd, row) * r * r * r / width as f32;
            for ((dx, &g), &v) in dx.iter_mut().zip(&wd).zip(row) {
                *dx += r * g - v * k;
            }
        }
    }
}

simd_fn! {
    /// Rotate-half RoPE in place on `x`, `tokens × heads × dim` with
    /// position `t % seq` for token `t`; `cos` and `sin` are `seq × dim`.
    /// With `inverse`, applies the transpose (the backward pass).
    pub fn rope(x: &mut [f32], heads: usize, dim: usize, seq: usize, cos: &[f32], sin: &[f32], inverse: bool) {
        let half = dim / 2;
        let mut tmp = vec![0.0f32; dim];
        for (t, token) in x.chunks_exact_mut(heads * dim).enumerate() {
            let p = t % seq;
            let (c, s) = (&cos[p * dim..(p + 1) * dim], &sin[p * dim..(p + 1) * dim]);
            for head in token.chunks_exact_mut(dim) {
                tmp.copy_from_slice(head);
                let (x1, x2) = tmp.split_at(half);
                let (h1, h2) = head.split_at_mut(half);
                if inverse {
                    // x1 = y1·c1 + y2·s2, x2 = y2·c2 − y1·s1
                    for i in 0..half {
                        h1[i] = x1[i] * c[i] + x2[i] * s[half + i];
                        h2[i] = x2[i] * c[half + i] - x1[i] * s[i];
                    }
                } else {
                    // y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2
                    for i in 0..half {
                        h1[i] = x1[i] * c[i] - x2[i] * s[i];
                        h2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// SwiGLU's product: `out = silu(gate) ⊙ up`.
    pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

simd_fn! {
    /// The backward pass of [`swiglu`]: from `d_out`, writes `∂/∂gate`
    /// into `d_gate` and `∂/∂up` into `d_up`.
    pub fn swiglu_backward(gate: &[f32], up: &[f32], d_out: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
        for ((((dg, du), &g), &u), &d) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(gate).zip(up).zip(d_out) {
            let s = sigmoid(g);
            let silu = g * s;
            *du = d * silu;
            *dg = d * u * (s + silu * (1.0 - s));
        }
    }
}

simd_fn! {
    /// `a += b`.
    pub fn add_assign(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a += b;
        }
    }
}

simd_fn! {
    /// `a ⊙= b`.
    pub fn mul_assign(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a *= b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_the_standard_library() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn strided_products_match_a_plain_triple_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        // out = 2 · a · btᵀ, then += a · btᵀ again.
        let mut out = vec![0.0; m * n];
        let (av, bv) = (MatRef::new(&a, m, k), MatRef::new(&bt, n, k).t());
        matmul(MatMut::new(&mut out, m, n), av, bv, 2.0, false);
        matmul(MatMut::new(&mut out, m, n), av, bv, 1.0, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|x| a[i * k + x] * bt[j * k + x]).sum::<f32>() * 3.0;
                assert!((out[i * n + j] - want).abs() < 1e-5, "({i}, {j})");
            }
        }
    }

    #[test]
    fn the_rope_inverse_undoes_it() {
        let (heads, dim, seq) = (2, 8, 3);
        // Each half of a position's row repeats the same angles, as `Rope` makes them.
        let angle = |i: usize| ((i / dim) * (dim / 2) + i % (dim / 2)) as f32 * 0.3;
        let cos: Vec<f32> = (0..seq * dim).map(|i| angle(i).cos()).collect();
        let sin: Vec<f32> = (0..seq * dim).map(|i| angle(i).sin()).collect();
        let x: Vec<f32> = (0..2 * seq * heads * dim)
            .map(|i| i as f32 - 20.0)
            .collect();
        let mut y = x.clone();
        rope(&mut y, heads, dim, seq, &cos, &sin, false);
        rope(&mut y, heads, dim, seq, &cos, &sin, true);
        // The backward pass of a rotation is its inverse.
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
