//! Autoregressive text generation with a KV cache.
//!
//! [`generate`] feeds the prompt once, then one token per step, choosing
//! each next token greedily (temperature 0, the default) or by seeded
//! temperature + nucleus (top-p) sampling. It stops at an end-of-sequence
//! token unless told to ignore it, at `max_new_tokens`, or at the model's
//! context length. Not here: tokenization (the caller passes ids).

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::Llama;

/// How to pick new tokens.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    pub seed: u64,
    /// Tokens that end generation (the EOS is included in the output).
    pub eos_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            eos_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens but the model's context is {context} tokens (max_position_embeddings)"
    )]
    PromptTooLong { prompt: usize, context: usize },
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("temperature must be finite and at least 0, got {0}")]
    Temperature(f64),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f64),
}

/// Generates up to `options.max_new_tokens` tokens after `prompt`; returns
/// only the new ones. `on_token` sees each token as it is chosen.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    options: &GenerateOptions,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, GenerateError> {
    let config = &model.config;
    let context = config.max_position_embeddings;
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() > context {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt.len(),
            context,
        });
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(GenerateError::TokenOutOfRange {
            id,
            vocab: config.vocab_size,
        });
    }
    if !options.temperature.is_finite() || options.temperature < 0.0 {
        return Err(GenerateError::Temperature(options.temperature));
    }
    if !(options.top_p > 0.0 && options.top_p <= 1.0) {
        return Err(GenerateError::TopP(options.top_p));
    }

    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut next_input: Vec<u32> = prompt.to_vec();
    let budget = options.max_new_tokens.min(context - prompt.len());
    while out.len() < budget {
        let ids: Vec<i64> = next_input.iter().map(|&t| t as i64).collect();
        let len = ids.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), device);
        let logits = model.forward_last(input, &mut cache);
        let logits: Vec<f32> = logits
            .into_data()
            .try_into_vec::<f32>()
            .expect("logits are f32");
        let token = pick(&logits, options, &mut rng);
        out.push(token);
        on_token(token);
        if !options.ignore_eos && options.eos_ids.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    Ok(out)
}

/// Chooses the next token from one row of logits.
fn pick(logits: &[f32], options: &GenerateOptions, rng: &mut StdRng) -> u32 {
    if options.temperature == 0.0 {
        return argmax(logits);
    }
    let t = options.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass as f64 >= options.top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let mut r = rng.random::<f32>() * mass;
    for &(id, p) in probs {
        if r < p {
            return id;
        }
        r -= p;
    }
    probs[kept - 1].0
}

/// Index of the largest logit; the first one on ties, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 2 holds almost all the mass: with top_p 0.5 it is always chosen.
        let logits = [0.0, 1.0, 10.0, 2.0];
        let options = GenerateOptions {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(pick(&logits, &options, &mut rng), 2);
        }
    }

    #[test]
    fn sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let options = GenerateOptions {
            temperature: 1.0,
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| pick(&logits, &options, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
