//! ggml tensor types: their names, their storage sizes, and dequantization
//! of the ones lorafleet reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to f32,
//! bit for bit as ggml's reference `dequantize_row_*` functions do.
//!
//! Not here: the GGUF container (`file`), tensor names or layouts. The
//! k-quants and i-quants are named (for error messages) but not decoded.

use half::{bf16, f16};

/// ggml type ids as written in GGUF tensor infos.
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_BF16: u32 = 30;

/// The types [`dequantize`] decodes, for error messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// Elements per block of the block-quantized types lorafleet reads.
pub const QK: usize = 32;

/// ggml's name for a type id (`ggml_type_name`), or `type <id>` if unknown.
pub fn ggml_type_name(type_id: u32) -> String {
    let name = match type_id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        other => return format!("type {other}"),
    };
    name.to_string()
}

/// `(elements per block, bytes per block)` of a type [`dequantize`] decodes.
pub fn block_layout(type_id: u32) -> Option<(usize, usize)> {
    match type_id {
        GGML_F32 => Some((1, 4)),
        GGML_F16 | GGML_BF16 => Some((1, 2)),
        GGML_Q4_0 => Some((QK, 2 + QK / 2)),
        GGML_Q4_1 => Some((QK, 4 + QK / 2)),
        GGML_Q8_0 => Some((QK, 2 + QK)),
        _ => None,
    }
}

/// Decodes `bytes`, a whole number of blocks of `type_id`, into f32s.
/// Returns `None` for a type [`block_layout`] does not know or a byte
/// count that is not a whole number of blocks.
pub fn dequantize(type_id: u32, bytes: &[u8]) -> Option<Vec<f32>> {
    let (block_elems, block_bytes) = block_layout(type_id)?;
    if !bytes.len().is_multiple_of(block_bytes) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_elems);
    let blocks = bytes.chunks_exact(block_bytes);
    let half_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match type_id {
        GGML_F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GGML_F16 => out.extend(blocks.map(|b| half_at(b, 0))),
        GGML_BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GGML_Q8_0 => {
            for b in blocks {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GGML_Q4_0 => {
            for b in blocks {
                let d = half_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        GGML_Q4_1 => {
            for b in blocks {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high() {
        // d = 0.5; byte j = (hi = 15 - (j % 16)) << 4 | (lo = j % 16).
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let got = dequantize(GGML_Q4_0, &block).unwrap();
        let lows: Vec<f32> = (0..16).map(|j| (j as f32 - 8.0) * 0.5).collect();
        let highs: Vec<f32> = (0..16).map(|j| ((15 - j) as f32 - 8.0) * 0.5).collect();
        assert_eq!(got[..16], lows[..]);
        assert_eq!(got[16..], highs[..]);
        assert_eq!(got[0], -4.0);
        assert_eq!(got[16], 3.5);
    }

    #[test]
    fn q4_1_scales_and_adds_the_minimum() {
        // d = 0.25, m = -1.0; every byte is 0x3A: low nibble 10, high nibble 3.
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend([0x3A; 16]);
        let got = dequantize(GGML_Q4_1, &block).unwrap();
        assert_eq!(got.len(), 32);
        assert!(got[..16].iter().all(|&x| x == 10.0 * 0.25 - 1.0));
        assert!(got[16..].iter().all(|&x| x == 3.0 * 0.25 - 1.0));
    }

    #[test]
    fn q8_0_is_signed_bytes_times_scale() {
        let mut block = f16_bytes(2.0).to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        block.extend(block.clone()); // two blocks
        let got = dequantize(GGML_Q8_0, &block).unwrap();
        let want: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 2.0).collect();
        assert_eq!(got[..32], want[..]);
        assert_eq!(got[32..], want[..]);
        assert_eq!(got[0], -32.0);
    }

    #[test]
    fn float_types_decode_little_endian() {
        let mut f32s = Vec::new();
        for x in [1.5f32, -2.0, 3.25] {
            f32s.extend(x.to_le_bytes());
        }
        assert_eq!(dequantize(GGML_F32, &f32s).unwrap(), [1.5, -2.0, 3.25]);
        let f16s: Vec<u8> = [0.5f32, -4.0].iter().flat_map(|&x| f16_bytes(x)).collect();
        assert_eq!(dequantize(GGML_F16, &f16s).unwrap(), [0.5, -4.0]);
        let bf16s: Vec<u8> = bf16::from_f32(-0.75).to_le_bytes().to_vec();
        assert_eq!(dequantize(GGML_BF16, &bf16s).unwrap(), [-0.75]);
    }

    #[test]
    fn unknown_types_and_partial_blocks_are_refused() {
        assert!(dequantize(13, &[0; 176]).is_none());
        assert!(dequantize(GGML_Q8_0, &[0; 33]).is_none());
        assert_eq!(ggml_type_name(13), "Q5_K");
        assert_eq!(ggml_type_name(99), "type 99");
    }
}
