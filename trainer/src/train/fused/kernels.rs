//! The numeric building blocks of the fused CPU step: matrix products on
//! strided views (the `gemm` crate burn-flex also runs), products with a
//! frozen weight kept in bf16 or f16 ([`matmul_weight`]: widened a tile at
//! a time into a reusable f32 buffer, then the same f32 product), and the
//! element-wise passes (a vectorised `exp`, softmax rows, RMSNorm, RoPE,
//! SiLU) compiled for AVX-512 and AVX2 as well as the baseline, with the
//! variant chosen once at run time ([`simd_fn`]). Nothing here knows about
//! layers or adapters.

use std::cell::RefCell;
use std::sync::OnceLock;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::bf16_gemm;

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
    pub(super) offset: usize,
    pub rows: usize,
    pub cols: usize,
    /// Row stride.
    pub(super) rs: usize,
    /// Column stride.
    pub(super) cs: usize,
}

impl Layout {
    /// Row-major `rows × cols` at the start of a buffer of `len` values.
    pub(super) fn row_major(rows: usize, cols: usize, len: usize) -> Layout {
        assert!(len >= rows * cols, "matrix of {rows}×{cols} in {len}");
        Layout {
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    pub(super) fn transposed(self) -> Layout {
        Layout {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    pub(super) fn block(self, r: usize, c: usize, rows: usize, cols: usize) -> Layout {
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

    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }

    /// Panics unless every element lies inside a buffer of `len` values.
    pub(super) fn check(&self, len: usize) {
        if !self.is_empty() {
            let last = self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < len, "matrix view out of its buffer");
        }
    }
}

/// A read-only matrix view.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub(super) data: &'a [f32],
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
    pub(super) data: &'a mut [f32],
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

/// The values of a frozen weight, in the type the model keeps them in.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Values<'_> {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
            Values::F16(v) => v.len(),
        }
    }

    /// Writes values `start..start + dst.len()` into `dst`, widened to f32
    /// (exact).
    pub fn widen_into(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Values::F32(v) => dst.copy_from_slice(&v[start..end]),
            Values::Bf16(v) => widen_bf16(&v[start..end], dst),
            // Vectorised with F16C where the CPU has it (checked at run time).
            Values::F16(v) => v[start..end].convert_to_f32_slice(dst),
        }
    }

    /// Value `i`, widened.
    fn at(&self, i: usize) -> f32 {
        match self {
            Values::F32(v) => v[i],
            Values::Bf16(v) => v[i].to_f32(),
            Values::F16(v) => v[i].to_f32(),
        }
    }
}

simd_fn! {
    /// `dst = src` widened to f32: a bf16 is the high half of an f32's bits.
    pub fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
}

/// A read-only matrix view of a frozen weight ([`Values`]).
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    pub(super) data: Values<'a>,
    pub at: Layout,
}

impl<'a> WeightRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: Values<'a>, rows: usize, cols: usize) -> WeightRef<'a> {
        let at = Layout::row_major(rows, cols, data.len());
        WeightRef { data, at }
    }

    /// The transpose (no copy).
    pub fn t(self) -> WeightRef<'a> {
        WeightRef {
            at: self.at.transposed(),
            ..self
        }
    }
}

/// Values in one tile of a 16-bit weight widened for [`matmul_widened`]:
/// 1 MiB of f32, so that a tile stays in cache while gemm packs it.
const TILE_VALUES: usize = 1 << 18;
/// The most rows (inner dimension) a tile spans.
const TILE_DEPTH: usize = 1024;

thread_local! {
    /// Each thread's tile buffer, kept between products.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = scale · a · b`, or `out += scale · a · b` with `accumulate`, for
/// a frozen weight `b`, in the precision that weight's type asks for:
/// - f32: [`matmul`] itself;
/// - bf16: `a` rounded to bf16 (to nearest even, as torch's
///   `.to(torch.bfloat16)`) times `b`, summed in f32 — what a bf16 product
///   under torch's autocast computes — by [`bf16_gemm::matmul`]
///   (`vdpbf16ps` where the CPU has AVX512-BF16, else the same values
///   widened through [`matmul_widened`]);
/// - f16: `b` widened exactly to f32 and multiplied with `a` as it is
///   ([`matmul_widened`]).
pub fn matmul_weight(
    out: MatMut<'_>,
    a: MatRef<'_>,
    b: WeightRef<'_>,
    scale: f32,
    accumulate: bool,
) {
    match b.data {
        Values::F32(data) => matmul(out, a, MatRef { data, at: b.at }, scale, accumulate),
        Values::Bf16(data) => bf16_gemm::matmul(out, a, data, b.at, scale, accumulate),
        Values::F16(_) => matmul_widened(out, a, b, scale, accumulate),
    }
}

/// `out = scale · a · b`, or `out += scale · a · b` with `accumulate`, with
/// `b` widened to f32 a tile at a time (at most [`TILE_DEPTH`] rows of the
/// inner dimension by about [`TILE_VALUES`]` / rows` columns, each value
/// once per product) into a per-thread buffer, and each tile's product
/// [`matmul`], accumulated over the inner dimension. The result equals the
/// f32 product of the widened values up to the order of the f32 sums.
pub(super) fn matmul_widened(
    out: MatMut<'_>,
    a: MatRef<'_>,
    b: WeightRef<'_>,
    scale: f32,
    accumulate: bool,
) {
    let y = b.at;
    if let Values::F32(data) = b.data {
        return matmul(out, a, MatRef { data, at: y }, scale, accumulate);
    }
    let (o, x) = (out.at, a.at);
    assert_eq!(x.cols, y.rows, "inner dimensions");
    assert_eq!((o.rows, o.cols), (x.rows, y.cols), "output shape");
    y.check(b.data.len());
    if o.is_empty() {
        return;
    }
    if y.rows == 0 {
        // Nothing to widen: the f32 product over an empty inner dimension.
        let empty = MatRef::new(&[], 0, y.cols);
        return matmul(out, a, empty, scale, accumulate);
    }
    let (k, n) = (y.rows, y.cols);
    let depth = k.min(TILE_DEPTH);
    let width = (TILE_VALUES / depth).max(16).min(n);
    TILE.with(|tile| {
        let mut tile = tile.borrow_mut();
        if tile.len() < depth * width {
            tile.resize(depth * width, 0.0);
        }
        let out_data = out.data;
        for j0 in (0..n).step_by(width) {
            let w = width.min(n - j0);
            for k0 in (0..k).step_by(depth) {
                let d = depth.min(k - k0);
                let panel = widen_tile(b, k0, j0, d, w, &mut tile[..d * w]);
                matmul(
                    MatMut {
                        data: &mut *out_data,
                        at: o.block(0, j0, o.rows, w),
                    },
                    MatRef {
                        at: x.block(0, k0, x.rows, d),
                        ..a
                    },
                    panel,
                    scale,
                    accumulate || k0 > 0,
                );
            }
        }
    });
}

/// Rows `k0..k0 + d` and columns `j0..j0 + w` of `b`, widened into `tile`,
/// as a view with the same orientation as `b` (so that each source run
/// that is contiguous is read and written contiguously).
fn widen_tile<'t>(
    b: WeightRef<'_>,
    k0: usize,
    j0: usize,
    d: usize,
    w: usize,
    tile: &'t mut [f32],
) -> MatRef<'t> {
    let y = b.at;
    let start = |i: usize, j: usize| y.offset + (k0 + i) * y.rs + (j0 + j) * y.cs;
    if y.cs == 1 {
        for (i, row) in tile.chunks_exact_mut(w).enumerate() {
            b.data.widen_into(start(i, 0), row);
        }
        MatRef::new(tile, d, w)
    } else if y.rs == 1 {
        for (j, col) in tile.chunks_exact_mut(d).enumerate() {
            b.data.widen_into(start(0, j), col);
        }
        MatRef::new(tile, w, d).t()
    } else {
        for i in 0..d {
            for j in 0..w {
                tile[i * w + j] = b.data.at(start(i, j));
            }
        }
        MatRef::new(tile, d, w)
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
    /// `a *= k`, with each `a` below `floor` set to zero instead. For a row
    /// of softmax numerators (non-negative), so that the probabilities too
    /// small to matter do not become subnormal numbers: a product reading
    /// subnormal operands or producing subnormal sums runs several times
    /// slower on x86 CPUs.
    pub fn scale_above(a: &mut [f32], k: f32, floor: f32) {
        for a in a.iter_mut() {
            *a = if *a < floor { 0.0 } else { *a * k };
        }
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

simd_fn! {
    /// Replaces each `v` of `row` by `e^(v − shift)`.
    pub fn exp_sub(row: &mut [f32], shift: f32) {
        for v in row.iter_mut() {
            *v = exp(*v - shift);
        }
    }
}

simd_fn! {
    /// A softmax row's backward pass given `d = Σ p·dp` (computed
    /// elsewhere, as when the row is split into blocks): `dp` holds
    /// `∂/∂p` and becomes `p ⊙ (dp − d)`.
    pub fn softmax_grad(p: &[f32], dp: &mut [f32], d: f32) {
        for (dp, &p) in dp.iter_mut().zip(p) {
            *dp = p * (*dp - d);
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
    fn scaling_above_a_floor_zeroes_what_lies_below_it() {
        let mut row: Vec<f32> = (0..37).map(|i| 2.0f32.powi(-4 * i)).collect();
        let want: Vec<f32> = row
            .iter()
            .map(|&v| if v < 2.0f32.powi(-64) { 0.0 } else { v * 0.5 })
            .collect();
        scale_above(&mut row, 0.5, 2.0f32.powi(-64));
        assert_eq!(row, want);
        assert_eq!(row.iter().filter(|v| **v == 0.0).count(), 20);
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

    /// `m × k` values with a spread of magnitudes and signs.
    fn values(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + salt).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// The largest `|got − want|` relative to `Σ|a|·|b|` of that element:
    /// what f32 sums in a different order can change.
    fn worst_relative(got: &[f32], want: &[f32], bound: &[f32]) -> f32 {
        got.iter()
            .zip(want)
            .zip(bound)
            .map(|((g, w), b)| (g - w).abs() / b.max(f32::MIN_POSITIVE))
            .fold(0.0, f32::max)
    }

    /// `|a| · |b|`, the scale of each element's rounding.
    fn abs_product(a: &[f32], b_rows: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|x| (a[i * k + x] * b_rows[x * n + j]).abs())
                    .sum();
            }
        }
        out
    }

    /// An f16 weight is widened and multiplied with the activations as they
    /// are; with a bf16 weight the activations are rounded to bf16 first
    /// (the products of a bf16 autocast): either way the result is the f32
    /// product of those values, up to the order of the sums.
    #[test]
    fn products_with_a_16_bit_weight_are_the_f32_products_of_the_values_it_multiplies() {
        // Shapes that cut into several tiles both ways (k > TILE_DEPTH,
        // n > the tile width) and leave ragged edges.
        for (m, k, n) in [(3, 5, 7), (37, 1500, 300), (9, 130, 2100)] {
            let a = values(m * k, 0.3);
            let w32 = values(k * n, 1.7);
            let bf: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let hf: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let a2_given = values(m * n, 2.9);
            let rounded =
                |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect() };
            // The weight, its values widened, and the two activations it
            // multiplies (`a`, `a'`) as it multiplies them.
            type Case<'v> = (Values<'v>, Vec<f32>, Vec<f32>, Vec<f32>);
            let cases: [Case; 2] = [
                (
                    Values::Bf16(&bf),
                    bf.iter().map(|v| v.to_f32()).collect(),
                    rounded(&a),
                    rounded(&a2_given),
                ),
                (
                    Values::F16(&hf),
                    hf.iter().map(|v| v.to_f32()).collect(),
                    a.clone(),
                    a2_given.clone(),
                ),
            ];
            for (half, widened, a_used, a2_used) in &cases {
                let bound = abs_product(a_used, widened, m, k, n);
                let tol = 4.0 * k as f32 * f32::EPSILON;
                // a · W, W row-major `[k, n]`, then += 0.5 · a · W.
                let mut want = vec![0.0; m * n];
                let mut got = vec![0.0; m * n];
                for (scale, acc) in [(2.0, false), (0.5, true)] {
                    let av = MatRef::new(&a, m, k);
                    matmul(
                        MatMut::new(&mut want, m, n),
                        MatRef::new(a_used, m, k),
                        MatRef::new(widened, k, n),
                        scale,
                        acc,
                    );
                    matmul_weight(
                        MatMut::new(&mut got, m, n),
                        av,
                        WeightRef::new(*half, k, n),
                        scale,
                        acc,
                    );
                }
                let worst = worst_relative(&got, &want, &bound);
                assert!(worst < tol, "{m}×{k}×{n}: {worst:e}");

                // a' · Wᵀ for a' `[m, n]`: the weight read transposed.
                let mut want = vec![0.0; m * k];
                let mut got = vec![0.0; m * k];
                let av = MatRef::new(&a2_given, m, n);
                matmul(
                    MatMut::new(&mut want, m, k),
                    MatRef::new(a2_used, m, n),
                    MatRef::new(widened, k, n).t(),
                    1.0,
                    false,
                );
                matmul_weight(
                    MatMut::new(&mut got, m, k),
                    av,
                    WeightRef::new(*half, k, n).t(),
                    1.0,
                    false,
                );
                let transposed: Vec<f32> =
                    (0..n * k).map(|i| widened[(i % k) * n + i / k]).collect();
                let bound = abs_product(a2_used, &transposed, m, n, k);
                let worst = worst_relative(&got, &want, &bound);
                assert!(
                    worst < 4.0 * n as f32 * f32::EPSILON,
                    "{m}×{n}×{k} transposed: {worst:e}"
                );
            }
            // An f32 weight goes through the plain product: bit for bit.
            let mut want = vec![0.0; m * n];
            let mut got = vec![0.0; m * n];
            let av = MatRef::new(&a, m, k);
            matmul(
                MatMut::new(&mut want, m, n),
                av,
                MatRef::new(&w32, k, n),
                1.0,
                false,
            );
            matmul_weight(
                MatMut::new(&mut got, m, n),
                av,
                WeightRef::new(Values::F32(&w32), k, n),
                1.0,
                false,
            );
            assert_eq!(got, want);
        }
    }

    #[test]
    fn widening_is_exact() {
        let v = values(1000, 0.1);
        let bf: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let hf: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let mut out = vec![0.0; 990];
        Values::Bf16(&bf).widen_into(10, &mut out);
        assert!(out.iter().zip(&bf[10..]).all(|(o, b)| *o == b.to_f32()));
        Values::F16(&hf).widen_into(10, &mut out);
        assert!(out.iter().zip(&hf[10..]).all(|(o, h)| *o == h.to_f32()));
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
