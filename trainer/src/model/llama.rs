//! The Llama decoder as a burn [`Module`], in Hugging Face naming.
//!
//! [`Llama`] is built from a [`LlamaConfig`] and a [`WeightMap`] of HF-named,
//! HF-layout tensors; linear weights are stored transposed (`[in, out]`, burn's
//! layout) so that a forward pass is `x · W`. The forward pass follows
//! transformers' `LlamaForCausalLM` operation for operation: RMSNorm,
//! rotate-half RoPE, grouped-query attention with a causal mask, SwiGLU MLP.
//! [`KvCache`] carries keys and values between decoding steps. No backend is
//! named here: the device passed in picks it.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::rope::{self, Rope};
use super::{HostTensor, LlamaConfig, ModelError, WeightMap};

/// Root-mean-square layer norm, computed as transformers does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// `[..., hidden]` → `[..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let x = x * (variance + self.eps).sqrt().recip();
        x * self.weight.val().unsqueeze()
    }
}

/// Multi-head self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`; appends to `cache`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, self.head_dim]).swap_dims(1, 2);
        let q = rope::apply(heads(self.q_proj.forward(x.clone()), self.num_heads), cos, sin);
        let mut k = rope::apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads), cos, sin);
        let mut v = heads(self.v_proj.forward(x), self.num_kv_heads);

        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.kv.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads);
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads);
        // Causal masking is aligned to the end: with a cache of length t,
        // query i sees keys 0..=t+i.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let out = attention(q, k, v, None, None, options);
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads * n_rep, t, d]`, each KV head
/// repeated for the query heads that share it (transformers' `repeat_kv`).
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, t, d])
        .reshape([b, h * n_rep, t, d])
}

/// SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One transformer block: pre-norm attention, then pre-norm MLP, with residuals.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// Keys and values of one layer for the positions seen so far.
#[derive(Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

/// The decoding state of a batch: one [`LayerCache`] per layer and the
/// number of positions already processed.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
            len: 0,
        }
    }

    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama causal language model (`LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `[hidden, vocab]`; with tied embeddings, the transposed embedding.
    pub lm_head: Param<Tensor<2>>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub rope: Rope,
}

impl Llama {
    /// Builds the model from HF-named tensors; every tensor is checked for
    /// presence and shape, and `weights` is left with the tensors it did not use.
    pub fn from_weights(
        config: &LlamaConfig,
        weights: &mut WeightMap,
        device: &Device,
    ) -> Result<Llama, ModelError> {
        config.validate().map_err(|message| ModelError::Config {
            file: weights.source.clone(),
            message,
        })?;
        let h = config.hidden_size;
        let q_out = config.num_attention_heads * config.head_dim;
        let kv_out = config.num_key_value_heads * config.head_dim;
        let inter = config.intermediate_size;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linear = |name: &str, out: usize, inp: usize| -> Result<Linear, ModelError> {
                let t = weights.take(&format!("{p}.{name}.weight"), &[out, inp])?;
                Ok(linear_from_hf(t, device))
            };
            let self_attn = Attention {
                q_proj: linear("self_attn.q_proj", q_out, h)?,
                k_proj: linear("self_attn.k_proj", kv_out, h)?,
                v_proj: linear("self_attn.v_proj", kv_out, h)?,
                o_proj: linear("self_attn.o_proj", h, q_out)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            };
            let mlp = Mlp {
                gate_proj: linear("mlp.gate_proj", inter, h)?,
                up_proj: linear("mlp.up_proj", inter, h)?,
                down_proj: linear("mlp.down_proj", h, inter)?,
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(weights, &format!("{p}.input_layernorm"), config, device)?,
                self_attn,
                post_attention_layernorm: norm(
                    weights,
                    &format!("{p}.post_attention_layernorm"),
                    config,
                    device,
                )?,
                mlp,
            });
        }

        let embed = weights.take("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let head = if config.tie_word_embeddings {
            weights.take("lm_head.weight", &[config.vocab_size, h]).ok();
            transpose(&embed)
        } else {
            transpose(&weights.take("lm_head.weight", &[config.vocab_size, h])?)
        };
        Ok(Llama {
            embed_tokens: Param::from_tensor(to_device(embed, device)),
            layers,
            norm: norm(weights, "model.norm", config, device)?,
            lm_head: Param::from_tensor(to_device(head, device)),
            config: config.clone(),
            rope: Rope::new(config),
        })
    }

    /// Hidden states after the final norm: `[batch, seq]` → `[batch, seq, hidden]`.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, s] = input_ids.dims();
        let device = input_ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let (cos, sin) = self.rope.tables(start, s, &device);
        let mut x = embedding(self.embed_tokens.val(), input_ids);
        match cache {
            Some(cache) => {
                for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, &cos, &sin, Some(lc));
                }
                cache.len += s;
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(x, &cos, &sin, None);
                }
            }
        }
        self.norm.forward(x)
    }

    /// Logits for every position: `[batch, seq]` → `[batch, seq, vocab]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.hidden_states(input_ids, None);
        x.matmul(self.lm_head.val().unsqueeze())
    }

    /// Logits of the last position only, advancing `cache`:
    /// `[batch, seq]` → `[batch, vocab]`.
    pub fn forward_last(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let x = self.hidden_states(input_ids, Some(cache));
        let [b, s, h] = x.dims();
        let last = x.narrow(1, s - 1, 1).reshape([b, h]);
        last.matmul(self.lm_head.val())
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }
}

fn norm(
    weights: &mut WeightMap,
    prefix: &str,
    config: &LlamaConfig,
    device: &Device,
) -> Result<RmsNorm, ModelError> {
    let t = weights.take(&format!("{prefix}.weight"), &[config.hidden_size])?;
    Ok(RmsNorm {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), device)),
        eps: config.rms_norm_eps,
    })
}

/// A HF `[out, in]` weight as a burn `Linear` (`[in, out]`, no bias).
fn linear_from_hf(t: HostTensor, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(to_device(transpose(&t), device)),
        bias: None,
    }
}

fn to_device(t: HostTensor, device: &Device) -> Tensor<2> {
    let [r, c] = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data, [r, c]), device)
}

/// Transposes a 2-D host tensor.
pub fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor::new(vec![cols, rows], out)
}
