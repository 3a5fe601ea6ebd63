//! Products with a frozen weight kept in bf16: `out = scale · bf16(a) · b`
//! (or `+=`), `a` an f32 view rounded to bf16 to nearest even (as torch's
//! `.to(torch.bfloat16)`), `b` a bf16 view in either orientation, the sums
//! in f32 — what a bf16 `torch.mm` under autocast computes.
//!
//! Where the CPU and kernel offer AMX ([`super::bf16_amx::available`]) the
//! product runs on the tile unit ([`super::bf16_amx`], with this module's
//! packers). Otherwise, where the CPU has AVX512-BF16 (probed once,
//! [`has_dot_bf16`]), this is a
//! packed, cache-blocked product ([`packed`]): blocks of `a` are rounded
//! and packed into rows of bf16 pairs, blocks of `b` into panels of
//! [`NR`] columns of bf16 pairs, and a register-blocked microkernel
//! ([`tile_product`]) keeps an [`MR`] × [`NR`] block of f32 sums in
//! registers, adding two products per lane and instruction
//! (`vdpbf16ps`). Elsewhere [`portable`] computes the same values: `a`
//! rounded to bf16 and widened back, then the f32 product with `b` widened
//! (`super::kernels::matmul_widened`); the two differ only in the order of
//! the f32 sums. One product runs on the calling thread.
//!
//! Not here: products with f32 or f16 weights, and choosing which product
//! a weight gets (`super::kernels::matmul_weight`).

// Off x86-64 only the portable product runs: the packing helpers are unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

use std::cell::RefCell;
use std::sync::OnceLock;

use half::bf16;
use half::slice::HalfFloatSliceExt;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::kernels::{
    Layout, MatMut, MatRef, Values, WeightRef, matmul as matmul_f32, matmul_widened,
};

/// Rows of `a` (and of `out`) in the microkernel's block of sums: one
/// broadcast feeds [`VECTORS`] products, so six rows keep the 24 sums in
/// registers with few loads (tuned on Zen 4: 6 × 64 beat 12 × 32).
const MR: usize = 6;
/// Vectors of 16 f32 sums per row of the microkernel's block.
const VECTORS: usize = 4;
/// Columns of `b` (and of `out`) in the microkernel's block.
pub(super) const NR: usize = 16 * VECTORS;
/// The most bf16 pairs of the inner dimension a packed block holds (so
/// up to `2 · KC_PAIRS` values of `k`): a panel of `b`, `KC_PAIRS × NR`
/// pairs (24 KiB), stays in L1 while the rows of `a` stream past it.
const KC_PAIRS: usize = 96;
/// The most rows of `a` packed at once (a multiple of [`MR`]): 54 KiB,
/// kept in L2.
const MC: usize = 24 * MR;
/// The most columns of `b` packed at once (a multiple of [`NR`]): 384 KiB.
const NC: usize = 1024;

/// Whether the CPU has AVX512-BF16 (with AVX512-F and BW), probed once.
pub fn has_dot_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The bits of `x` rounded to bf16, to nearest with ties to even, NaN to
/// the quiet NaN `0x7FC0`: torch's `round_to_nearest_even`.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { 0x7FC0 } else { rounded }
}

/// `x` rounded to bf16 and widened back to f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// `out = scale · bf16(a) · b`, or `out += …` with `accumulate`, `b` the
/// bf16 values `data` laid out as `at`: [`packed`] where the CPU has
/// AVX512-BF16, else [`portable`].
pub fn matmul(
    out: MatMut<'_>,
    a: MatRef<'_>,
    data: &[bf16],
    at: Layout,
    scale: f32,
    accumulate: bool,
) {
    if super::bf16_amx::available() {
        super::bf16_amx::matmul(out, a, data, at, scale, accumulate);
    } else if has_dot_bf16() {
        packed(out, a, data, at, scale, accumulate);
    } else {
        portable(out, a, data, at, scale, accumulate);
    }
}

thread_local! {
    /// Each thread's buffer of `a` rounded to bf16 and widened, for [`portable`].
    static ROUNDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's packed blocks of `a` and `b`, for [`packed`].
    static PACKS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// [`matmul`] on any CPU: `a` rounded to bf16 and widened back into a
/// per-thread buffer, then the f32 product with `b` widened a tile at a
/// time (exact), so the products are those of the bf16 values and only
/// the sums are rounded.
pub fn portable(
    out: MatMut<'_>,
    a: MatRef<'_>,
    data: &[bf16],
    at: Layout,
    scale: f32,
    accumulate: bool,
) {
    let x = a.at;
    x.check(a.data.len());
    let b = WeightRef {
        data: Values::Bf16(data),
        at,
    };
    ROUNDED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        buffer.reserve(x.rows * x.cols);
        for i in 0..x.rows {
            let row = x.offset + i * x.rs;
            buffer.extend((0..x.cols).map(|j| round_bf16(a.data[row + j * x.cs])));
        }
        matmul_widened(
            out,
            MatRef::new(&buffer, x.rows, x.cols),
            b,
            scale,
            accumulate,
        );
    });
}

/// The size of the blocks that cut `len` into as few blocks of at most
/// `most` as possible, as even as possible, each a multiple of `unit`
/// (but the last).
pub(super) fn even_blocks(len: usize, most: usize, unit: usize) -> usize {
    let count = len.div_ceil(most);
    len.div_ceil(count).div_ceil(unit) * unit
}

/// [`matmul`] with `vdpbf16ps`: the CPU must have AVX512-BF16
/// ([`has_dot_bf16`]; panics otherwise).
pub fn packed(
    out: MatMut<'_>,
    a: MatRef<'_>,
    data: &[bf16],
    at: Layout,
    scale: f32,
    accumulate: bool,
) {
    assert!(has_dot_bf16(), "the CPU has no AVX512-BF16");
    with_packs(out, a, data, at, scale, accumulate, |product| {
        // SAFETY: the CPU has AVX512-F, BW and BF16 (asserted above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            blocked(product)
        }
    });
}

/// A product as [`with_packs`] hands it to a kernel's blocked loop:
/// `out` (laid out as `o`) `= scale · bf16(a) · b` (or `+=` with
/// `accumulate`), `a` laid out as `x`, `b` the weight's bf16 bits laid out
/// as `y`, the views checked against their buffers and the inner dimension
/// not empty; and this thread's packing buffers for `a` and `b`.
pub(super) struct PackedProduct<'a> {
    pub out: &'a mut [f32],
    pub o: Layout,
    pub a: &'a [f32],
    pub x: Layout,
    pub b: &'a [u16],
    pub y: Layout,
    pub scale: f32,
    pub accumulate: bool,
    pub a_pack: &'a mut Vec<u32>,
    pub b_pack: &'a mut Vec<u32>,
}

/// What every packed product does around its blocked loop: checks the
/// views against their buffers, answers an empty output or an empty inner
/// dimension itself, and otherwise hands `blocked` the product with this
/// thread's packing buffers.
pub(super) fn with_packs(
    out: MatMut<'_>,
    a: MatRef<'_>,
    data: &[bf16],
    at: Layout,
    scale: f32,
    accumulate: bool,
    blocked: impl FnOnce(PackedProduct<'_>),
) {
    let (o, x, y) = (out.at, a.at, at);
    assert_eq!(x.cols, y.rows, "inner dimensions");
    assert_eq!((o.rows, o.cols), (x.rows, y.cols), "output shape");
    x.check(a.data.len());
    y.check(data.len());
    o.check(out.data.len());
    if o.is_empty() {
        return;
    }
    if x.cols == 0 {
        // Nothing to multiply: the f32 product over an empty inner dimension.
        return matmul_f32(out, a, MatRef::new(&[], 0, y.cols), scale, accumulate);
    }
    PACKS.with(|packs| {
        let mut packs = packs.borrow_mut();
        let (a_pack, b_pack) = &mut *packs;
        blocked(PackedProduct {
            out: out.data,
            o,
            a: a.data,
            x,
            b: data.reinterpret_cast(),
            y,
            scale,
            accumulate,
            a_pack,
            b_pack,
        });
    });
}

/// The blocked product: for each block of `NC` columns and [`KC_PAIRS`]
/// pairs of the inner dimension, `b`'s block is packed once, then each
/// block of [`MC`] rows of `a` is packed and multiplied with it panel by
/// panel. The views were checked against their buffers, and the inner
/// dimension is not empty.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn blocked(product: PackedProduct<'_>) {
    let PackedProduct {
        out,
        o,
        a,
        x,
        b,
        y,
        scale,
        accumulate,
        a_pack,
        b_pack,
    } = product;
    let (m, k, n) = (x.rows, x.cols, y.cols);
    let kc = even_blocks(k, 2 * KC_PAIRS, 2);
    let mc = even_blocks(m, MC, MR);
    let nc = even_blocks(n, NC, NR);
    a_pack.resize(mc.div_ceil(MR) * MR * KC_PAIRS, 0);
    b_pack.resize(nc.div_ceil(NR) * NR * KC_PAIRS, 0);
    let mut tile = [[0.0f32; NR]; MR];
    for j0 in (0..n).step_by(nc) {
        let w = nc.min(n - j0);
        for k0 in (0..k).step_by(kc) {
            let d = kc.min(k - k0);
            let pairs = d.div_ceil(2);
            pack_b::<NR>(b, y, k0, d, j0, w, b_pack, KC_PAIRS);
            let add = accumulate || k0 > 0;
            for i0 in (0..m).step_by(mc) {
                let h = mc.min(m - i0);
                pack_a(a, x, i0, h, k0, d, a_pack, KC_PAIRS, MR);
                for jp in 0..w.div_ceil(NR) {
                    let cols = NR.min(w - jp * NR);
                    let panel = &b_pack[jp * KC_PAIRS * NR..][..KC_PAIRS * NR];
                    for ip in 0..h.div_ceil(MR) {
                        let rows = MR.min(h - ip * MR);
                        let strip = &a_pack[ip * MR * KC_PAIRS..][..MR * KC_PAIRS];
                        tile_product(pairs, strip, panel, &mut tile);
                        let block = o.block(i0 + ip * MR, j0 + jp * NR, rows, cols);
                        store_tile(out, block, tile.as_flattened(), NR, scale, add);
                    }
                }
            }
        }
    }
}

/// Packs rows `i0..i0 + h` and columns `k0..k0 + d` of `a` rounded to bf16:
/// strips of `unit` rows, row `i` of a strip at `i · depth` (`depth` pairs
/// per row), each value a pair `(a[i][2p], a[i][2p + 1])` in the low and
/// high half. Pairs past `d` up to the next multiple of [`PAIR_BLOCK`],
/// and rows past `h` up to the next multiple of `unit`, are zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a(
    a: &[f32],
    x: Layout,
    i0: usize,
    h: usize,
    k0: usize,
    d: usize,
    pack: &mut [u32],
    depth: usize,
    unit: usize,
) {
    let pairs = d.div_ceil(2);
    let padded = padded_pairs(pairs, depth);
    for (r, dst) in pack
        .chunks_exact_mut(depth)
        .take(h.div_ceil(unit) * unit)
        .enumerate()
    {
        let dst = &mut dst[..padded];
        if r >= h {
            dst.fill(0);
            continue;
        }
        dst[pairs..].fill(0);
        let dst = &mut dst[..pairs];
        let start = x.offset + (i0 + r) * x.rs + k0 * x.cs;
        let pair = |lo: f32, hi: f32| u32::from(bf16_bits(lo)) | u32::from(bf16_bits(hi)) << 16;
        if x.cs == 1 {
            round_pairs(&a[start..start + d], dst);
        } else {
            for (p, v) in dst.iter_mut().enumerate() {
                let lo = a[start + 2 * p * x.cs];
                let hi = if 2 * p + 1 < d {
                    a[start + (2 * p + 1) * x.cs]
                } else {
                    0.0
                };
                *v = pair(lo, hi);
            }
        }
    }
}

/// `dst[p] = (bf16(src[2p]), bf16(src[2p + 1]))` in the low and high half,
/// the last high half zero when `src` has an odd length; sixteen values
/// at a time with AVX-512 ([`bf16_bits`] lane by lane, NaN included).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn round_pairs(src: &[f32], dst: &mut [u32]) {
    assert_eq!(dst.len(), src.len().div_ceil(2));
    let full = src.len() / 16;
    let (one, bias, nan) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7FFF),
        _mm512_set1_epi32(0x7FC0),
    );
    for c in 0..full {
        // SAFETY: `16 · c + 16 ≤ src.len()`, and `8 · c + 8 ≤ dst.len()`.
        let v = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * c)) };
        let bits = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(bias, lsb)));
        let rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v), nan);
        let halves = _mm512_cvtepi32_epi16(rounded);
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(8 * c).cast(), halves) };
    }
    let rest = &src[16 * full..];
    for (p, v) in dst[8 * full..].iter_mut().enumerate() {
        let lo = bf16_bits(rest[2 * p]);
        let hi = rest.get(2 * p + 1).map_or(0, |&v| bf16_bits(v));
        *v = u32::from(lo) | u32::from(hi) << 16;
    }
}

/// Pairs of the inner dimension a packed block is zero-padded to a
/// multiple of: one AMX tile row holds sixteen pairs.
const PAIR_BLOCK: usize = 16;

/// `pairs` rounded up to a multiple of [`PAIR_BLOCK`], at most `depth`.
fn padded_pairs(pairs: usize, depth: usize) -> usize {
    (pairs.div_ceil(PAIR_BLOCK) * PAIR_BLOCK).min(depth)
}

/// Packs rows `k0..k0 + d` and columns `j0..j0 + w` of `b`: panels of
/// `PANEL` columns (a multiple of 32: [`NR`] for the AVX-512 microkernel,
/// two tiles' width for AMX), `depth × PANEL` values each, pair `p` of
/// column `j` at `p · PANEL + j` holding `(b[2p][j], b[2p + 1][j])` in the
/// low and high half (zero past `w`, and past `d` up to the next multiple
/// of [`PAIR_BLOCK`] pairs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b<const PANEL: usize>(
    b: &[u16],
    y: Layout,
    k0: usize,
    d: usize,
    j0: usize,
    w: usize,
    pack: &mut [u32],
    depth: usize,
) {
    const { assert!(PANEL.is_multiple_of(32)) };
    let pairs = d.div_ceil(2);
    let padded = padded_pairs(pairs, depth);
    let at = |i: usize, j: usize| y.offset + (k0 + i) * y.rs + (j0 + j) * y.cs;
    let pack = &mut pack[..w.div_ceil(PANEL) * depth * PANEL];
    for (jp, panel) in pack.chunks_exact_mut(depth * PANEL).enumerate() {
        if PANEL.min(w - jp * PANEL) < PANEL {
            panel[..pairs * PANEL].fill(0);
        }
        panel[pairs * PANEL..padded * PANEL].fill(0);
    }
    // Where `vpermt2w` takes each u16 of the two interleaved vectors of a
    // pair of rows from: the first sixteen columns, then the next.
    let first: [u16; 32] = std::array::from_fn(|i| (i / 2 + 32 * (i % 2)) as u16);
    let second: [u16; 32] = std::array::from_fn(|i| (16 + i / 2 + 32 * (i % 2)) as u16);
    // SAFETY: each array is 64 bytes.
    let (first, second) = unsafe {
        (
            _mm512_loadu_si512(first.as_ptr().cast()),
            _mm512_loadu_si512(second.as_ptr().cast()),
        )
    };
    // Pairs `p0..p1` of panel `jp`.
    let fill = |jp: usize, panel: &mut [u32], p0: usize, p1: usize| {
        let cols = PANEL.min(w - jp * PANEL);
        let c0 = jp * PANEL;
        if y.cs == 1 {
            // Rows are contiguous: interleave two rows at a time, 32
            // columns (two vectors of sixteen pairs) per step.
            let load = |row: usize, c: usize, n: usize| {
                let src = &b[at(row, c0 + c)..][..n];
                // SAFETY: the mask covers the `n ≤ 32` u16 of `src`.
                unsafe { _mm512_maskz_loadu_epi16(first_lanes(n), src.as_ptr().cast()) }
            };
            for (p, dst) in panel.chunks_exact_mut(PANEL).enumerate().take(p1).skip(p0) {
                for c in (0..cols).step_by(32) {
                    let n = 32.min(cols - c);
                    let lo = load(2 * p, c, n);
                    let hi = if 2 * p + 1 < d {
                        load(2 * p + 1, c, n)
                    } else {
                        _mm512_setzero_si512()
                    };
                    // Columns past `cols` come out zero, and `c + 32 ≤ PANEL`.
                    let dst = &mut dst[c..c + 32];
                    // SAFETY: `dst` holds 32 u32, two vectors.
                    unsafe {
                        _mm512_storeu_si512(
                            dst.as_mut_ptr().cast(),
                            _mm512_permutex2var_epi16(lo, first, hi),
                        );
                        _mm512_storeu_si512(
                            dst.as_mut_ptr().add(16).cast(),
                            _mm512_permutex2var_epi16(lo, second, hi),
                        );
                    }
                }
            }
        } else if y.rs == 1 {
            // Columns are contiguous: each pair is two neighbours, so a
            // column's pairs are a row of u32 and the panel is their
            // transpose, sixteen by sixteen.
            for j in (0..cols).step_by(16) {
                let width = 16.min(cols - j);
                for p in (p0..p1).step_by(16) {
                    let values = (2 * 16).min(d - 2 * p);
                    let rows: [__m512i; 16] = std::array::from_fn(|c| {
                        if c >= width {
                            return _mm512_setzero_si512();
                        }
                        let column = &b[at(2 * p, c0 + j + c)..][..values];
                        // SAFETY: the mask covers the `values` u16 of `column`.
                        unsafe {
                            _mm512_maskz_loadu_epi16(first_lanes(values), column.as_ptr().cast())
                        }
                    });
                    let rows = transpose16(rows);
                    for (q, row) in rows.iter().enumerate().take(values.div_ceil(2)) {
                        let dst = &mut panel[(p + q) * PANEL + j..][..16];
                        // SAFETY: `dst` holds sixteen u32 (a panel row is
                        // PANEL wide and `j + 16 ≤ PANEL`).
                        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), *row) };
                    }
                }
            }
        } else {
            for p in p0..p1 {
                for j in 0..cols {
                    let lo = b[at(2 * p, c0 + j)];
                    let hi = if 2 * p + 1 < d {
                        b[at(2 * p + 1, c0 + j)]
                    } else {
                        0
                    };
                    panel[p * PANEL + j] = u32::from(lo) | u32::from(hi) << 16;
                }
            }
        }
    };
    if y.cs == 1 {
        // Sixteen pairs of rows of every panel at a time, so that each
        // row of `b` is read front to back rather than a panel's width
        // at a time, a row apart.
        for p0 in (0..pairs).step_by(PAIR_BLOCK) {
            let p1 = pairs.min(p0 + PAIR_BLOCK);
            for (jp, panel) in pack.chunks_exact_mut(depth * PANEL).enumerate() {
                fill(jp, panel, p0, p1);
            }
        }
    } else {
        for (jp, panel) in pack.chunks_exact_mut(depth * PANEL).enumerate() {
            fill(jp, panel, 0, pairs);
        }
    }
}

/// The mask of the first `n ≤ 32` lanes of a vector of 32 u16.
fn first_lanes(n: usize) -> u32 {
    debug_assert!(n <= 32);
    ((1u64 << n) - 1) as u32
}

/// The transpose of a 16 × 16 block of u32, one row per vector: four
/// rounds of shuffles (32-bit, 64-bit, then 128-bit lanes twice).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // t: rows 2i and 2i + 1 interleaved in 32 bits within each 128-bit lane.
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4g + e]: in lane l, element 4l + e of rows 4g .. 4g + 4.
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, e) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + e / 2], t[4 * g + 2 + e / 2]);
        if e % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Output row 4l + e gathers lane l of u[e], u[4 + e], u[8 + e], u[12 + e].
    std::array::from_fn(|row| {
        let (l, e) = (row / 4, row % 4);
        let (v, w) = if l % 2 == 0 {
            (
                _mm512_shuffle_i32x4::<0x88>(u[e], u[4 + e]),
                _mm512_shuffle_i32x4::<0x88>(u[8 + e], u[12 + e]),
            )
        } else {
            (
                _mm512_shuffle_i32x4::<0xDD>(u[e], u[4 + e]),
                _mm512_shuffle_i32x4::<0xDD>(u[8 + e], u[12 + e]),
            )
        };
        if l < 2 {
            _mm512_shuffle_i32x4::<0x88>(v, w)
        } else {
            _mm512_shuffle_i32x4::<0xDD>(v, w)
        }
    })
}

/// The microkernel: `tile = Σ_p strip[·][p] · panel[p][·]` over the first
/// `pairs` pairs, each `vdpbf16ps` adding two products of a row's pair
/// (broadcast) and a panel row's sixteen column pairs into sixteen f32
/// sums; the `MR × NR` sums stay in 24 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn tile_product(pairs: usize, strip: &[u32], panel: &[u32], tile: &mut [[f32; NR]; MR]) {
    assert!(pairs <= KC_PAIRS && strip.len() >= MR * KC_PAIRS && panel.len() >= KC_PAIRS * NR);
    let mut sums = [[_mm512_setzero_ps(); VECTORS]; MR];
    let (a, b) = (strip.as_ptr(), panel.as_ptr());
    for p in 0..pairs {
        // SAFETY: `p < pairs ≤ KC_PAIRS` and the panel holds `KC_PAIRS · NR`
        // values (asserted above), so each load of 16 lies inside it; a
        // `__m512i` and a `__m512bh` are both 64 bytes of plain bits.
        let columns: [__m512bh; VECTORS] = std::array::from_fn(|v| unsafe {
            std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16 * v).cast()))
        });
        for (i, s) in sums.iter_mut().enumerate() {
            // SAFETY: `i < MR` and `p < KC_PAIRS`, inside the strip
            // (asserted above); the broadcast pair is plain bits.
            let pair: __m512bh =
                unsafe { std::mem::transmute(_mm512_set1_epi32(*a.add(i * KC_PAIRS + p) as i32)) };
            for (s, &c) in s.iter_mut().zip(&columns) {
                *s = _mm512_dpbf16_ps(*s, pair, c);
            }
        }
    }
    for (row, s) in tile.iter_mut().zip(&sums) {
        for (v, &s) in s.iter().enumerate() {
            // SAFETY: each row of the tile holds `NR` = 16 · VECTORS f32.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), s) };
        }
    }
}

/// `out[block] = scale · tile` (or `+=` with `add`) for the block's rows and
/// columns (a corner of the tile at a ragged edge), the tile's rows
/// `stride` values apart.
#[inline(always)]
pub(super) fn store_tile(
    out: &mut [f32],
    block: Layout,
    tile: &[f32],
    stride: usize,
    scale: f32,
    add: bool,
) {
    for (i, sums) in tile.chunks(stride).enumerate().take(block.rows) {
        let start = block.offset + i * block.rs;
        let sums = &sums[..block.cols];
        if block.cs == 1 {
            let row = &mut out[start..start + block.cols];
            if add {
                for (o, &s) in row.iter_mut().zip(sums) {
                    *o += scale * s;
                }
            } else {
                for (o, &s) in row.iter_mut().zip(sums) {
                    *o = scale * s;
                }
            }
        } else {
            for (j, &s) in sums.iter().enumerate() {
                let o = &mut out[start + j * block.cs];
                *o = if add { *o + scale * s } else { scale * s };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with a spread of magnitudes and signs.
    fn values(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + salt).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    fn to_bf16(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    /// A product's expected values and the scale of each one's rounding:
    /// `scale · Σ bf16(a)·b` and `|scale| · Σ |bf16(a)·b|` in f64, with `a`
    /// rounded by `half` (an independent rounding) and `b(i, j)` given.
    fn reference(
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        b: impl Fn(usize, usize) -> f32,
        scale: f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut want = vec![0.0; m * n];
        let mut bound = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for x in 0..k {
                    let p = bf16::from_f32(a[i * k + x]).to_f64() * b(x, j) as f64;
                    want[i * n + j] += p * scale as f64;
                    bound[i * n + j] += (p * scale as f64).abs();
                }
            }
        }
        (want, bound)
    }

    /// Panics unless `got` is `want` up to f32 sums over `k` terms.
    fn assert_close(got: &[f32], want: &[f64], bound: &[f64], k: usize, what: &str) {
        let tolerance = (k + 2) as f64 * f32::EPSILON as f64;
        for (e, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
            let err = (g as f64 - w).abs() / b.max(f64::MIN_POSITIVE);
            assert!(
                err <= tolerance,
                "{what}: element {e}: {g} vs {w} ({err:e})"
            );
        }
    }

    type Product = fn(MatMut<'_>, MatRef<'_>, &[bf16], Layout, f32, bool);

    /// The products to check: the dispatcher, the portable product, and
    /// those of the AMX and AVX512-BF16 products this CPU can run.
    fn products() -> Vec<(&'static str, Product)> {
        let mut products: Vec<(&'static str, Product)> =
            vec![("matmul", matmul), ("portable", portable)];
        if super::super::bf16_amx::available() {
            products.push(("amx", super::super::bf16_amx::matmul));
        }
        if has_dot_bf16() {
            products.push(("packed", packed));
        }
        products
    }

    /// Odd inner dimensions, edges that are no multiple of a block, one
    /// exact block, more rows than `MC`, more columns than `NC`, more depth
    /// than `KC_PAIRS` pairs.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (3, 5, 7),
        (13, 257, 33),
        (6, 192, 64),
        (37, 301, 65),
        (200, 517, 70),
        (5, 1030, 2100),
    ];

    #[test]
    fn products_with_bf16_weights_match_a_scalar_reference() {
        for (name, product) in products() {
            for (m, k, n) in SHAPES {
                let a = values(m * k, 0.3);
                let w = to_bf16(&values(k * n, 1.7));
                let wk = WeightRef::new(Values::Bf16(&w), k, n);
                let b = |x: usize, j: usize| w[x * n + j].to_f32();
                // out = 2 · a · W, then += 0.5 · a · W.
                let mut got = vec![f32::NAN; m * n];
                let av = MatRef::new(&a, m, k);
                product(MatMut::new(&mut got, m, n), av, &w, wk.at, 2.0, false);
                let (want, bound) = reference(&a, m, k, n, b, 2.0);
                assert_close(&got, &want, &bound, k, &format!("{name} {m}×{k}×{n}"));
                product(MatMut::new(&mut got, m, n), av, &w, wk.at, 0.5, true);
                let (want, bound) = reference(&a, m, k, n, b, 2.5);
                let what = format!("{name} {m}×{k}×{n} accumulated");
                assert_close(&got, &want, &bound, k, &what);

                // a' · Wᵀ for a' `[m, n]`: the weight read transposed.
                let a2 = values(m * n, 2.9);
                let mut got = vec![f32::NAN; m * k];
                let av = MatRef::new(&a2, m, n);
                product(MatMut::new(&mut got, m, k), av, &w, wk.t().at, 1.0, false);
                let bt = |x: usize, j: usize| w[j * n + x].to_f32();
                let (want, bound) = reference(&a2, m, n, k, bt, 1.0);
                let what = format!("{name} {m}×{n}×{k} transposed");
                assert_close(&got, &want, &bound, n, &what);
            }
        }
    }

    #[test]
    fn unscaled_products_over_whole_blocks_accumulate_in_place() {
        // Whole 32 × 32 blocks with scale 1, where the tiles read and
        // write `out` directly, over one block of the inner dimension and
        // over two (AMX's blocks hold up to 1,536 values).
        for (m, k, n) in [(64, 300, 96), (64, 1600, 96)] {
            let a = values(m * k, 1.1);
            let w = to_bf16(&values(k * n, 0.4));
            let at = WeightRef::new(Values::Bf16(&w), k, n).at;
            let b = |x: usize, j: usize| w[x * n + j].to_f32();
            for (name, product) in products() {
                let mut got = vec![f32::NAN; m * n];
                let av = MatRef::new(&a, m, k);
                product(MatMut::new(&mut got, m, n), av, &w, at, 1.0, false);
                let (want, bound) = reference(&a, m, k, n, b, 1.0);
                assert_close(&got, &want, &bound, k, &format!("{name} {m}×{k}×{n}"));
                product(MatMut::new(&mut got, m, n), av, &w, at, 1.0, true);
                let (want, bound) = reference(&a, m, k, n, b, 2.0);
                let what = format!("{name} {m}×{k}×{n} accumulated");
                assert_close(&got, &want, &bound, k, &what);
            }
        }
    }

    #[test]
    fn strided_activations_and_outputs_are_read_and_written_in_place() {
        // aᵀ read from a `[k, m]` buffer, the output written transposed
        // into an `[n, m]` one, and a block of a wider weight.
        let (m, k, n) = (29, 67, 45);
        let at = values(k * m, 0.9);
        let a: Vec<f32> = (0..m * k).map(|i| at[(i % k) * m + i / k]).collect();
        let wide = to_bf16(&values(k * (n + 9), 0.2));
        let wk = WeightRef::new(Values::Bf16(&wide), k, n + 9);
        let block = wk.at.block(0, 4, k, n);
        let b = |x: usize, j: usize| wide[x * (n + 9) + 4 + j].to_f32();
        let (want, bound) = reference(&a, m, k, n, b, -1.5);
        for (name, product) in products() {
            let mut out_t = vec![f32::NAN; n * m];
            let out = MatMut {
                data: &mut out_t,
                at: Layout::row_major(n, m, n * m).transposed(),
            };
            product(out, MatRef::new(&at, k, m).t(), &wide, block, -1.5, false);
            let got: Vec<f32> = (0..m * n).map(|i| out_t[(i % n) * m + i / n]).collect();
            assert_close(&got, &want, &bound, k, name);
        }
        // A weight whose rows and columns are both strided: every other
        // value of a buffer, from the second.
        let sparse = to_bf16(&values(2 * k * n + 1, 0.6));
        let every_other = Layout {
            offset: 1,
            rows: k,
            cols: n,
            rs: 2 * n,
            cs: 2,
        };
        let b = |x: usize, j: usize| sparse[1 + 2 * (x * n + j)].to_f32();
        let (want, bound) = reference(&a, m, k, n, b, 1.0);
        for (name, product) in products() {
            let mut got = vec![f32::NAN; m * n];
            let av = MatRef::new(&a, m, k);
            product(
                MatMut::new(&mut got, m, n),
                av,
                &sparse,
                every_other,
                1.0,
                false,
            );
            assert_close(&got, &want, &bound, k, &format!("{name} strided weight"));
        }
    }

    #[test]
    fn activations_are_rounded_to_bf16_before_the_product() {
        // 1 + 2⁻¹⁰ rounds to 1 in bf16; 1 + 3·2⁻⁸ (a tie) to 1 + 2⁻⁶.
        let a = [1.0 + 2f32.powi(-10), 1.0 + 3.0 * 2f32.powi(-8)];
        let w = to_bf16(&[1.0, 1.0]);
        for (name, product) in products() {
            for (x, want) in [(a[0], 1.0), (a[1], 1.0 + 2f32.powi(-6))] {
                let mut out = [0.0];
                let at = Layout::row_major(1, 1, 1);
                product(
                    MatMut::new(&mut out, 1, 1),
                    MatRef::new(&[x], 1, 1),
                    &w,
                    at,
                    1.0,
                    false,
                );
                assert_eq!(out[0], want, "{name}: {x}");
            }
            // An empty inner dimension: zeros, or the output kept.
            let mut out = [3.0; 6];
            let empty = Layout::row_major(0, 3, 0);
            for (accumulate, want) in [(true, [3.0; 6]), (false, [0.0; 6])] {
                product(
                    MatMut::new(&mut out, 2, 3),
                    MatRef::new(&[], 2, 0),
                    &[],
                    empty,
                    1.0,
                    accumulate,
                );
                assert_eq!(out, want, "{name}, accumulate {accumulate}");
            }
        }
    }

    #[test]
    fn rounding_to_bf16_is_torchs_round_to_nearest_even() {
        let mut specials = vec![
            0.0,
            -0.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            1e-40,
        ];
        specials.extend(values(10_000, 0.5).iter().map(|v| v * 1e-3));
        for x in specials {
            assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{x:e}");
        }
        assert_eq!(bf16_bits(f32::NAN), 0x7FC0);
        assert_eq!(bf16_bits(-f32::NAN), 0x7FC0);
    }
}
