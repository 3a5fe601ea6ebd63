//! Products with a frozen weight kept in bf16 on Intel AMX: the same
//! product as [`super::bf16_gemm::matmul`] (`out = scale · bf16(a) · b`,
//! or `+=`, `a` rounded to bf16 to nearest even, the sums in f32), with
//! the matrix multiply of the tile unit (`tdpbf16ps`), which on Sapphire
//! Rapids and later multiplies a 16 × 32 bf16 tile by a 32 × 16 one into
//! 16 × 16 f32 sums in one instruction.
//!
//! Blocks of `a` and `b` are packed by the AVX-512 product's packers
//! ([`super::bf16_gemm::pack_a`], [`super::bf16_gemm::pack_b`]): rows of
//! bf16 pairs for `a`, panels of [`BLOCK`] columns of bf16 pairs for `b`,
//! which are the layouts AMX reads (a tile row of `a` is 32 values of one
//! row; a tile row of `b` is one pair of rows, 16 columns wide), so that
//! the two tiles of `b` a block of sums takes are side by side. Each
//! block of 32 × 32 sums lives in four tile registers for the whole block
//! of the inner dimension; a whole block with nothing to scale is loaded
//! from and stored to `out` directly, any other goes through a scratch
//! block and is scaled into `out`.
//!
//! The tile registers are configured at the start of each product and
//! released at its end, so a product runs on the calling thread and
//! leaves no AMX state behind. Linux hands AMX to a process only when it
//! asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.
//! Rust's AMX intrinsics are unstable, so the tile instructions are
//! written as inline assembly. Not here: choosing which product a weight
//! gets (`super::bf16_gemm::matmul`).

#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_imports, unused_variables)
)]

use std::sync::OnceLock;

use half::bf16;

use super::bf16_gemm::{PackedProduct, even_blocks, store_tile, with_packs};
use super::kernels::{Layout, MatMut, MatRef};

/// Rows (and columns) of a tile of sums; a block of sums is two by two
/// tiles.
const TILE: usize = 16;
/// Rows and columns of a block of sums: four tile registers.
const BLOCK: usize = 2 * TILE;
/// The most values of the inner dimension a packed block holds when the
/// inner dimension is at most [`KC_LONG`] (a multiple of 32, one tile row
/// of pairs): a block's strip of `a` and panel of `b` are then 32 KiB
/// each, close to L1, where the tiles reload them from.
const KC_SHORT: usize = 512;
/// The most values of the inner dimension a packed block holds past
/// that: a long inner dimension (the backward pass through the head of a
/// 49,152-token vocabulary) takes a third as many blocks, so its sums are
/// loaded and stored a third as often. Measured on SmolLM2-135M's bf16
/// step (one thread, 2 × 512 tokens, alternating runs): 446-458 tok/s
/// against 420-433 with 1,536-value blocks throughout and 389-399 with 512
/// throughout; the tiny preset, 19,955-20,380 against 17,999-18,182 with
/// 1,536 throughout.
const KC_LONG: usize = 1536;
/// The most rows of `a` packed at once (a multiple of [`BLOCK`]).
const MC: usize = 8 * BLOCK;
/// The most columns of `b` packed at once (a multiple of [`BLOCK`]).
const NC: usize = 1024;

/// Whether this CPU and kernel let the process use AMX with bf16 (and
/// AVX-512, which packs the blocks): probed, and permission asked of
/// Linux, once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::__cpuid_count;
            if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
                return false;
            }
            let leaf7 = __cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = ((leaf7.edx >> 22) & 1, (leaf7.edx >> 24) & 1);
            amx_bf16 == 1 && amx_tile == 1 && request_tile_data()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`), which it grants to the whole process; false if
/// the kernel refuses or predates it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: arch_prctl with this request reads no memory and changes
    // only which extended states the process may use.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

/// `out = scale · bf16(a) · b`, or `out += …` with `accumulate`, `b` the
/// bf16 values `data` laid out as `at`, on AMX: the CPU and kernel must
/// allow it ([`available`]; panics otherwise).
pub fn matmul(
    out: MatMut<'_>,
    a: MatRef<'_>,
    data: &[bf16],
    at: Layout,
    scale: f32,
    accumulate: bool,
) {
    assert!(available(), "this CPU or kernel offers no AMX");
    with_packs(out, a, data, at, scale, accumulate, |product| {
        // SAFETY: the CPU has AMX-BF16 and AVX-512 F and BW, and the
        // process may use the tile data (asserted above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            blocked(product)
        }
    });
}

/// The tile configuration `ldtilecfg` reads (palette 1): the eight tile
/// registers 16 rows of 64 bytes each, the rest of the fields zero.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// The blocked product: for each block of [`NC`] columns and of
/// [`KC_SHORT`] or [`KC_LONG`] values of the inner dimension, `b`'s block
/// is packed once, then each block of [`MC`] rows of `a` is packed and
/// multiplied with it, 32 × 32 sums at a time. The views were checked against their buffers, and the
/// inner dimension is not empty.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn blocked(product: PackedProduct<'_>) {
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
    use super::bf16_gemm::{pack_a, pack_b};
    let (m, k, n) = (x.rows, x.cols, y.cols);
    let most = if k <= KC_LONG { KC_SHORT } else { KC_LONG };
    let kc = even_blocks(k, most, 2 * TILE);
    // Pairs per packed row: the block's own depth, so that a short inner
    // dimension keeps its packed rows close together.
    let depth = kc / 2;
    let mc = even_blocks(m, MC, BLOCK);
    let nc = even_blocks(n, NC, BLOCK);
    a_pack.resize(mc.div_ceil(BLOCK) * BLOCK * depth, 0);
    b_pack.resize(nc.div_ceil(BLOCK) * BLOCK * depth, 0);
    let config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    // SAFETY: the configuration is a valid palette-1 one (8 tiles of 16
    // rows of 64 bytes); the caller checked that AMX may be used.
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let mut scratch = [0.0f32; BLOCK * BLOCK];
    for j0 in (0..n).step_by(nc) {
        let w = nc.min(n - j0);
        for k0 in (0..k).step_by(kc) {
            let d = kc.min(k - k0);
            let steps = d.div_ceil(2 * TILE);
            pack_b::<BLOCK>(b, y, k0, d, j0, w, b_pack, depth);
            let add = accumulate || k0 > 0;
            for i0 in (0..m).step_by(mc) {
                let h = mc.min(m - i0);
                pack_a(a, x, i0, h, k0, d, a_pack, depth, BLOCK);
                for jb in 0..w.div_ceil(BLOCK) {
                    let cols = BLOCK.min(w - jb * BLOCK);
                    let panel = &b_pack[jb * depth * BLOCK..][..depth * BLOCK];
                    for ib in 0..h.div_ceil(BLOCK) {
                        let rows = BLOCK.min(h - ib * BLOCK);
                        let strip = &a_pack[ib * BLOCK * depth..][..BLOCK * depth];
                        let block = o.block(i0 + ib * BLOCK, j0 + jb * BLOCK, rows, cols);
                        // A whole block of rows of `out` with nothing to
                        // scale takes the sums straight from the tiles
                        // (and, with `add`, starts from what it holds).
                        let direct = scale == 1.0 && o.cs == 1 && rows == BLOCK && cols == BLOCK;
                        let sums = if direct {
                            let rows = &mut out[block.offset..][..(BLOCK - 1) * o.rs + BLOCK];
                            Sums {
                                data: rows.as_mut_ptr(),
                                stride: o.rs,
                                load: add,
                            }
                        } else {
                            Sums {
                                data: scratch.as_mut_ptr(),
                                stride: BLOCK,
                                load: false,
                            }
                        };
                        // SAFETY: the strip holds 32 rows of `depth` pairs
                        // and the panel `depth ≥ steps · 16` pair rows of
                        // 32 columns, zero-padded to whole
                        // tiles by the packers; the sums' 32 rows of 32
                        // lie in `out` (the slice above) or the scratch.
                        unsafe { block_product(steps, strip, depth, panel, sums) };
                        if !direct {
                            store_tile(out, block, &scratch, BLOCK, scale, add);
                        }
                    }
                }
            }
        }
    }
    // SAFETY: releases the tile state this product configured.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// Where a block's 32 × 32 sums go: rows `stride` f32 apart from `data`,
/// and whether the tiles start from what is there (else from zero).
struct Sums {
    data: *mut f32,
    stride: usize,
    load: bool,
}

/// 32 × 32 sums of `steps` tile steps of 32 values of the inner dimension:
/// rows of `strip` (`depth` pairs per row) times the columns of `panel`
/// (pair rows [`BLOCK`] wide), into `sums`.
///
/// # Safety
/// The tile registers are configured as in [`blocked`]; `strip` holds 32
/// rows of `depth` pairs, `panel` `depth` pair rows of 32 columns,
/// `steps · 16 ≤ depth`, and `sums` names 32 rows
/// of 32 f32 that may be read and written.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_product(steps: usize, strip: &[u32], depth: usize, panel: &[u32], sums: Sums) {
    assert!(steps >= 1 && steps * TILE <= depth);
    assert!(strip.len() >= BLOCK * depth && panel.len() >= BLOCK * depth);
    let a_stride = depth * 4;
    let b_stride = BLOCK * 4;
    let c_stride = sums.stride * 4;
    // SAFETY: per the function's contract; the tiles are loaded and
    // stored only within the strip, the panel and the sums.
    unsafe {
        std::arch::asm!(
            "test {load}, {load}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {sc}*1]",
            "tileloadd tmm1, [{c} + {sc}*1 + 64]",
            "tileloadd tmm2, [{c2} + {sc}*1]",
            "tileloadd tmm3, [{c2} + {sc}*1 + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            // Each load is followed by the products it allows, so the
            // unit multiplies while the next tiles load.
            "2:",
            "tileloadd tmm4, [{a} + {sa}*1]",
            "tileloadd tmm6, [{b} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b} + {sb}*1 + 64]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a2} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {a2}, 64",
            "add {b}, {bstep}",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {sc}*1], tmm0",
            "tilestored [{c} + {sc}*1 + 64], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c2} + {sc}*1 + 64], tmm3",
            load = in(reg) usize::from(sums.load),
            a = inout(reg) strip.as_ptr() => _,
            a2 = inout(reg) strip.as_ptr().add(TILE * depth) => _,
            b = inout(reg) panel.as_ptr() => _,
            n = inout(reg) steps => _,
            sa = in(reg) a_stride,
            sb = in(reg) b_stride,
            bstep = in(reg) TILE * b_stride,
            c = in(reg) sums.data,
            c2 = in(reg) sums.data.add(TILE * sums.stride),
            sc = in(reg) c_stride,
            options(nostack),
        );
    }
}
