//! The Llama decoder as a burn [`Module`], in Hugging Face naming.
//!
//! [`Llama`] is built from a [`LlamaConfig`] and a [`WeightMap`] of HF-named,
//! HF-layout tensors; linear weights are stored transposed (`[in, out]`, burn's
//! layout) so that a forward pass is `x · W`. The forward pass follows
//! transformers' `LlamaForCausalLM` operation for operation: RMSNorm,
//! rotate-half RoPE, grouped-query attention with a causal mask, SwiGLU MLP.
//! [`KvCache`] carries keys and values between decoding steps; a
//! [`Projection`] may carry a LoRA adapter (`crate::lora`), and a
//! [`DropoutSeeds`] makes the adapters' dropout a function of the sample, not
//! of the batch it lands in. No backend is named here: the device passed in
//! picks it.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::embedding;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use super::rope::{self, Rope};
use super::{HostTensor, LlamaConfig, ModelError, StoredTensor, WeightMap};
use crate::data::sampler::splitmix64;
use crate::lora::LoraAdapter;

/// Per-sample seeds for LoRA dropout: row `i` of a batch draws its masks
/// from `seeds[i]`, mixed with the layer and the projection.
#[derive(Debug, Clone)]
pub struct DropoutSeeds {
    pub seeds: Vec<u64>,
}

impl DropoutSeeds {
    /// The seeds of a part of the model (a layer, a projection) named by `salt`.
    pub fn mixed(&self, salt: u64) -> DropoutSeeds {
        DropoutSeeds {
            seeds: self.seeds.iter().map(|&s| splitmix64(s ^ salt)).collect(),
        }
    }
}

/// A bias-free linear layer with a frozen weight (`[in, out]`) and an
/// optional LoRA adapter.
#[derive(Module, Debug)]
pub struct Projection {
    pub weight: Param<Tensor<2>>,
    pub lora: Option<LoraAdapter>,
}

impl Projection {
    /// `[b, s, in]` → `[b, s, out]`; `salt` tells projections apart for dropout.
    ///
    /// The products run on `[b × s, in]`: one matrix product with the
    /// weight packed once, rather than one per row of the batch.
    pub fn forward(&self, x: Tensor<3>, dropout: Option<&DropoutSeeds>, salt: u64) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let flat = |t: Tensor<3>| t.reshape([b * s, d]);
        let base = frozen_matmul(flat(x.clone()), self.weight.val());
        let out = base.dims()[1];
        let Some(lora) = &self.lora else {
            return base.reshape([b, s, out]);
        };
        let x = match dropout {
            Some(seeds) if lora.dropout > 0.0 => {
                dropout_mask(&x, lora.dropout, &seeds.mixed(salt)) * x
            }
            _ => x,
        };
        let delta = flat(x).matmul(lora.a.val()).matmul(lora.b.val());
        (base + delta * lora.scale).reshape([b, s, out])
    }
}

/// `x · w` for a frozen weight `w` kept in a narrower type than `x` (bf16
/// on an accelerator, `crate::device::frozen_dtype`; `model.dtype`): on an
/// accelerator the product runs in `w`'s type and its result comes back
/// as f32. On the CPU backend the product runs in f32 on the same values
/// the fused step multiplies: with a bf16 `w`, `x` rounded to bf16 (to
/// nearest even) and both widened back (exact), so each term is a product
/// of bf16 values, as under torch's bf16 autocast; with an f16 `w`, `w`
/// widened and `x` as it is. With an f32 `w` it is the plain product.
pub fn frozen_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let dtype = w.dtype();
    if dtype == DType::F32 {
        return x.matmul(w);
    }
    if !crate::device::is_accelerator(&w.device()) {
        let x = if dtype == DType::BF16 {
            x.cast(FloatDType::BF16).cast(FloatDType::F32)
        } else {
            x
        };
        return x.matmul(w.cast(FloatDType::F32));
    }
    x.cast(dtype).matmul(w).cast(FloatDType::F32)
}

/// An inverted-dropout mask for `x` (`[b, s, d]`): each element kept with
/// probability `1 - p` and then scaled by `1 / (1 - p)`; row `i` from `seeds[i]`.
fn dropout_mask(x: &Tensor<3>, p: f64, seeds: &DropoutSeeds) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let mask = dropout_keep_mask(b, s * d, p, seeds);
    Tensor::from_data(TensorData::new(mask, [b, s, d]), &x.device())
}

/// The values of [`dropout_mask`] for `rows` rows of `per_row` values each,
/// row after row.
pub fn dropout_keep_mask(rows: usize, per_row: usize, p: f64, seeds: &DropoutSeeds) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut mask = Vec::with_capacity(rows * per_row);
    for row in 0..rows {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seeds.seeds[row]);
        mask.extend((0..per_row).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }));
    }
    mask
}

/// Root-mean-square layer norm, computed as transformers does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// `[..., hidden]` → `[..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = (x.clone() * x.clone()).mean_dim(D - 1);
        let x = x * (variance + self.eps).sqrt().recip();
        x * self.weight.val().unsqueeze()
    }
}

/// Multi-head self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`; appends to `cache`.
    /// `mask` is the [`causal_bias`] of these positions.
    pub fn forward(
        &self,
        x: Tensor<3>,
        positions: &Positions,
        cache: Option<&mut LayerCache>,
        dropout: Option<&DropoutSeeds>,
    ) -> Tensor<3> {
        let Positions { cos, sin, mask } = positions;
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, self.head_dim]).swap_dims(1, 2);
        let q = self.q_proj.forward(x.clone(), dropout, 1);
        let k = self.k_proj.forward(x.clone(), dropout, 2);
        let v = self.v_proj.forward(x, dropout, 3);
        let q = rope::apply(heads(q, self.num_heads), cos, sin);
        let mut k = rope::apply(heads(k, self.num_kv_heads), cos, sin);
        let mut v = heads(v, self.num_kv_heads);

        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.kv.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(k, self.num_heads / self.num_kv_heads);
        let v = repeat_kv(v, self.num_heads / self.num_kv_heads);
        // softmax(q·kᵀ / √d + mask) · v, as transformers' eager attention.
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (self.head_dim as f64).sqrt());
        let scores = match mask {
            Some(mask) => scores + mask.clone().unsqueeze::<4>(),
            None => scores,
        };
        let out = softmax(scores, 3).matmul(v);
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(out, dropout, 4)
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
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>, dropout: Option<&DropoutSeeds>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone(), dropout, 5));
        let up = self.up_proj.forward(x, dropout, 6);
        self.down_proj.forward(gate * up, dropout, 7)
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
        positions: &Positions,
        cache: Option<&mut LayerCache>,
        dropout: Option<&DropoutSeeds>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            positions,
            cache,
            dropout,
        );
        let h = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(h.clone()), dropout);
        h + mlp
    }
}

/// What every layer needs to know about the positions of a pass: the RoPE
/// tables and the causal mask.
#[derive(Debug, Clone)]
pub struct Positions {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
    /// `None` when nothing is masked (one new position).
    pub mask: Option<Tensor<2>>,
}

/// The additive causal mask of `len` new positions after `start` cached
/// ones, `[len, start + len]`: query `i` sees keys `0..=start + i` (0) and
/// not the later ones (−∞). Built once per pass, shared by every layer.
pub fn causal_bias(start: usize, len: usize, device: &Device) -> Option<Tensor<2>> {
    if len <= 1 {
        return None;
    }
    let keys = start + len;
    let bias: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..keys).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Some(Tensor::from_data(
        TensorData::new(bias, [len, keys]),
        device,
    ))
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
        let dtype = crate::device::frozen_dtype_or(device, weights.dtype());
        let h = config.hidden_size;
        let q_out = config.num_attention_heads * config.head_dim;
        let kv_out = config.num_key_value_heads * config.head_dim;
        let inter = config.intermediate_size;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linear =
                |name: &str, out: usize, inp: usize| -> Result<Projection, ModelError> {
                    let t = weights.take_stored(&format!("{p}.{name}.weight"), &[out, inp])?;
                    Ok(linear_from_hf(t, device, dtype))
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

        let embed = weights.take_stored("model.embed_tokens.weight", &[config.vocab_size, h])?;
        let head = if config.tie_word_embeddings {
            weights
                .take_stored("lm_head.weight", &[config.vocab_size, h])
                .ok();
            embed.transposed()
        } else {
            weights
                .take_stored("lm_head.weight", &[config.vocab_size, h])?
                .transposed()
        };
        Ok(Llama {
            embed_tokens: frozen(to_device(embed, device, dtype)),
            layers,
            norm: norm(weights, "model.norm", config, device)?,
            lm_head: frozen(to_device(head, device, dtype)),
            config: config.clone(),
            rope: Rope::new(config),
        })
    }

    /// Hidden states after the final norm: `[batch, seq]` → `[batch, seq, hidden]`.
    /// With `dropout`, LoRA dropout is applied (training); without, it is not.
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
        dropout: Option<&DropoutSeeds>,
    ) -> Tensor<3> {
        let [_, s] = input_ids.dims();
        let device = input_ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let (cos, sin) = self.rope.tables(start, s, &device);
        let positions = Positions {
            cos,
            sin,
            mask: causal_bias(start, s, &device),
        };
        let mut x = embedding(self.embed_tokens.val(), input_ids).cast(FloatDType::F32);
        let layer_dropout = |i: usize| dropout.map(|d| d.mixed((i as u64 + 1) << 8));
        match cache {
            Some(cache) => {
                for (i, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
                {
                    x = layer.forward(x, &positions, Some(lc), layer_dropout(i).as_ref());
                }
                cache.len += s;
            }
            None => {
                for (i, layer) in self.layers.iter().enumerate() {
                    x = layer.forward(x, &positions, None, layer_dropout(i).as_ref());
                }
            }
        }
        self.norm.forward(x)
    }

    /// Logits for every position: `[batch, seq]` → `[batch, seq, vocab]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_train(input_ids, None)
    }

    /// [`Self::forward`] with LoRA dropout drawn from `dropout`'s per-sample seeds.
    pub fn forward_train(
        &self,
        input_ids: Tensor<2, Int>,
        dropout: Option<&DropoutSeeds>,
    ) -> Tensor<3> {
        let x = self.hidden_states(input_ids, None, dropout);
        let [b, s, h] = x.dims();
        let logits = frozen_matmul(x.reshape([b * s, h]), self.lm_head.val());
        logits.reshape([b, s, self.config.vocab_size])
    }

    /// Logits of the last position only, advancing `cache`:
    /// `[batch, seq]` → `[batch, vocab]`.
    pub fn forward_last(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let x = self.hidden_states(input_ids, Some(cache), None);
        let [b, s, h] = x.dims();
        let last = x.narrow(1, s - 1, 1).reshape([b, h]);
        frozen_matmul(last, self.lm_head.val())
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
        weight: frozen(Tensor::from_data(TensorData::new(t.data, t.shape), device)),
        eps: config.rms_norm_eps,
    })
}

/// A HF `[out, in]` weight as a frozen [`Projection`] (`[in, out]`).
fn linear_from_hf(t: StoredTensor, device: &Device, dtype: FloatDType) -> Projection {
    let t = t.transposed();
    Projection {
        weight: frozen(to_device(t, device, dtype)),
        lora: None,
    }
}

/// A parameter that never receives a gradient (base weights).
fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// A frozen matrix on `device`, in `dtype` (the precision frozen weights
/// are kept in there, `crate::device::frozen_dtype_or`). A tensor already
/// in `dtype` goes there as it is.
fn to_device(t: StoredTensor, device: &Device, dtype: FloatDType) -> Tensor<2> {
    let shape = [t.shape()[0], t.shape()[1]];
    let (data, stored) = match t {
        StoredTensor::F32(t) => (TensorData::new(t.data, shape), DType::F32),
        StoredTensor::Bf16 { data, .. } => (TensorData::new(data, shape), DType::BF16),
        StoredTensor::F16 { data, .. } => (TensorData::new(data, shape), DType::F16),
    };
    let t = Tensor::<2>::from_data(data, (device, stored));
    if stored == DType::from(dtype) {
        t
    } else {
        t.cast(dtype)
    }
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
