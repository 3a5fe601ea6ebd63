//! Packing: short samples put together into rows of at most `max_seq_len`
//! tokens, so fewer padding tokens are computed.
//!
//! Owns: the greedy packing rule. It is deterministic: samples are taken in
//! order (file order; a held-out split is taken out first) and appended to
//! the current row while they fit; a sample that does not fit starts a new
//! row. Samples are never split or reordered, and each keeps its mask. A
//! row records where its samples start ([`TokenizedSample::segment_starts`]).
//!
//! Packed samples attend to each other (positions are not reset, as in HF's
//! simple packing); since each sample's first token stays masked, no token
//! is trained to be predicted from the previous sample's last one. Not here:
//! per-sample position resets or block-diagonal attention (a model that
//! wants them reads `segment_starts`).

use super::format::TokenizedSample;

/// Packs `samples` (each at most `max_seq_len` long) greedily in order.
pub fn pack(samples: Vec<TokenizedSample>, max_seq_len: usize) -> Vec<TokenizedSample> {
    let mut rows: Vec<TokenizedSample> = Vec::new();
    let mut row = TokenizedSample::default();
    for sample in samples {
        debug_assert!(sample.len() <= max_seq_len, "samples are truncated first");
        if !row.is_empty() && row.len() + sample.len() > max_seq_len {
            rows.push(std::mem::take(&mut row));
        }
        let offset = row.len() as u32;
        row.segment_starts
            .extend(sample.segment_starts.iter().map(|s| s + offset));
        row.input_ids.extend_from_slice(&sample.input_ids);
        row.target_mask.extend_from_slice(&sample.target_mask);
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ids: &[u32]) -> TokenizedSample {
        let mut mask = vec![true; ids.len()];
        mask[0] = false;
        TokenizedSample {
            input_ids: ids.to_vec(),
            target_mask: mask,
            segment_starts: vec![0],
        }
    }

    #[test]
    fn packs_greedily_in_order() {
        let rows = pack(
            vec![
                sample(&[1, 2, 3]),
                sample(&[4, 5]),
                sample(&[6, 7, 8, 9]),
                sample(&[10]),
            ],
            5,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].input_ids, [1, 2, 3, 4, 5]);
        assert_eq!(rows[0].target_mask, [false, true, true, false, true]);
        assert_eq!(rows[0].segment_starts, [0, 3]);
        assert_eq!(rows[1].input_ids, [6, 7, 8, 9, 10]);
        assert_eq!(rows[1].segment_starts, [0, 4]);
    }
}
