//! Rotary position embeddings, Hugging Face's rotate-half variant.
//!
//! [`Rope`] holds the inverse frequencies (with the `llama3` scaling applied
//! when the config asks for it) and produces the `cos`/`sin` tables for a
//! range of positions; [`apply`] rotates query or key heads with them. The
//! rotation pairs dimension `i` with `i + head_dim/2`, as transformers does
//! for HF-layout checkpoints (llama.cpp's interleaved layout is converted at
//! load time, see `gguf`).

use burn::tensor::{Device, Tensor, TensorData};

use super::{LlamaConfig, RopeScaling};

/// Inverse frequencies of the rotary embedding of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Rope {
        let dim = config.head_dim;
        // transformers computes these in float32: base ** (arange(0, dim, 2) / dim).
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                1.0 / (config.rope_theta as f32).powf(exponent)
            })
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            llama3_scale(&mut inv_freq, scaling);
        }
        Rope { inv_freq }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` tables of shape `[len, head_dim]` for positions
    /// `start..start + len`, each half repeated as rotate-half expects.
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let dim = 2 * self.inv_freq.len();
        let (cos, sin) = self.host_tables(start, len);
        (
            Tensor::from_data(TensorData::new(cos, [len, dim]), device),
            Tensor::from_data(TensorData::new(sin, [len, dim]), device),
        )
    }

    /// The values of [`Self::tables`], row-major.
    pub fn host_tables(&self, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let dim = 2 * self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * dim);
        let mut sin = Vec::with_capacity(len * dim);
        for p in start..start + len {
            let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        (cos, sin)
    }
}

/// The `llama3` frequency scaling, as transformers' `_compute_llama3_parameters`.
fn llama3_scale(inv_freq: &mut [f32], s: &RopeScaling) {
    let old_len = s.original_max_position_embeddings as f32;
    let factor = s.factor as f32;
    let low = s.low_freq_factor as f32;
    let high = s.high_freq_factor as f32;
    let low_freq_wavelen = old_len / low;
    let high_freq_wavelen = old_len / high;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        if wavelen > low_freq_wavelen {
            *f /= factor;
        } else if wavelen >= high_freq_wavelen {
            let smooth = (old_len / wavelen - low) / (high - low);
            *f = (1.0 - smooth) * *f / factor + smooth * *f;
        }
    }
}

/// Rotates `x` (`[batch, heads, seq, head_dim]`) by the tables of [`Rope::tables`].
pub fn apply(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.clone().unsqueeze::<4>().expand([b, h, s, d]);
    let sin = sin.clone().unsqueeze::<4>().expand([b, h, s, d]);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut c = super::super::Preset::Tiny.config();
        c.head_dim = 16;
        c.rope_theta = 500000.0;
        let plain = Rope::new(&c);
        c.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        });
        let scaled = Rope::new(&c);
        // Highest frequency (wavelength 2π < 8): unchanged.
        assert_eq!(plain.inv_freq()[0], scaled.inv_freq()[0]);
        // Lowest frequency (wavelength far above 32): divided by the factor.
        let last = plain.inv_freq().len() - 1;
        assert_eq!(plain.inv_freq()[last] / 8.0, scaled.inv_freq()[last]);
    }
}
