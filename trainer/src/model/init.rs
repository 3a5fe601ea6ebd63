//! Randomly initialised Llama weights, for the models `init-model` writes.
//!
//! Initialisation follows transformers' `LlamaPreTrainedModel`: every linear
//! and embedding weight from N(0, 0.02²), norms at one. The generator is
//! seeded, so a `(preset, seed)` pair always gives the same model.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{HostTensor, LlamaConfig, WeightMap};

/// Standard deviation of the initial weights (HF's `initializer_range`).
pub const INITIALIZER_RANGE: f32 = 0.02;

/// All tensors of a `LlamaForCausalLM` with `config`, HF names and layout.
pub fn random_weights(config: &LlamaConfig, seed: u64) -> WeightMap {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| gaussian(&mut rng) * INITIALIZER_RANGE)
            .collect();
        HostTensor::new(shape, data)
    };
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let inter = config.intermediate_size;
    let ones = |n: usize| HostTensor::new(vec![n], vec![1.0; n]);

    let mut w = WeightMap::new("random init");
    w.insert(
        "model.embed_tokens.weight",
        normal(vec![config.vocab_size, h]),
    );
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        w.insert(format!("{p}.self_attn.q_proj.weight"), normal(vec![q, h]));
        w.insert(format!("{p}.self_attn.k_proj.weight"), normal(vec![kv, h]));
        w.insert(format!("{p}.self_attn.v_proj.weight"), normal(vec![kv, h]));
        w.insert(format!("{p}.self_attn.o_proj.weight"), normal(vec![h, q]));
        w.insert(format!("{p}.mlp.gate_proj.weight"), normal(vec![inter, h]));
        w.insert(format!("{p}.mlp.up_proj.weight"), normal(vec![inter, h]));
        w.insert(format!("{p}.mlp.down_proj.weight"), normal(vec![h, inter]));
        w.insert(format!("{p}.input_layernorm.weight"), ones(h));
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(h));
    }
    w.insert("model.norm.weight", ones(h));
    if !config.tie_word_embeddings {
        w.insert("lm_head.weight", normal(vec![config.vocab_size, h]));
    }
    w
}

/// One draw from N(0, 1) (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
