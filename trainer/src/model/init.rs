//! Randomly initialised Llama weights, for the models `init-model` writes.
//!
//! Weights are scaled so that a random model is a useful base to adapt:
//! embeddings from N(0, 1) (unit-RMS residual stream) and every linear
//! weight from N(0, 1/in_features), so activations and logits keep unit
//! scale through the layers; norms start at one. (transformers'
//! `initializer_range` of 0.02 everywhere gives near-uniform logits that a
//! frozen output head cannot sharpen, so LoRA on such a model barely
//! learns.) The generator is seeded: a `(preset, seed)` pair always gives
//! the same model. With 16-bit frozen weights ([`random_weights_as`]),
//! each matrix is narrowed right after it is drawn: the same f32 values,
//! rounded, and never the whole model in f32.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{HostTensor, LlamaConfig, WeightMap};
use crate::device::FrozenDType;

/// All tensors of a `LlamaForCausalLM` with `config`, HF names and layout.
pub fn random_weights(config: &LlamaConfig, seed: u64) -> WeightMap {
    random_weights_as(config, seed, None)
}

/// [`random_weights`] in a map for frozen matrices in `dtype`
/// ([`WeightMap::with_dtype`]): the same draws, each matrix narrowed as
/// soon as it is drawn.
pub fn random_weights_as(config: &LlamaConfig, seed: u64, dtype: Option<FrozenDType>) -> WeightMap {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: Vec<usize>, std: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| gaussian(&mut rng) * std).collect();
        HostTensor::new(shape, data)
    };
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let inter = config.intermediate_size;
    let ones = |n: usize| HostTensor::new(vec![n], vec![1.0; n]);

    let mut w = WeightMap::with_dtype("random init", dtype);
    w.insert(
        "model.embed_tokens.weight",
        normal(vec![config.vocab_size, h], 1.0),
    );
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        // `[out, in]` linear weights: N(0, 1/in).
        let shapes = [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ];
        for (name, out, inp) in shapes {
            let t = normal(vec![out, inp], 1.0 / (inp as f32).sqrt());
            w.insert(format!("{p}.{name}.weight"), t);
        }
        w.insert(format!("{p}.input_layernorm.weight"), ones(h));
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(h));
    }
    w.insert("model.norm.weight", ones(h));
    if !config.tie_word_embeddings {
        let head = normal(vec![config.vocab_size, h], 1.0 / (h as f32).sqrt());
        w.insert("lm_head.weight", head);
    }
    w
}

/// One draw from N(0, 1) (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
