//! The fused CPU step: the loss and LoRA gradients of a share of a batch,
//! computed on host buffers with a backward pass derived by hand, for
//! models whose weights live on the CPU backend (burn's `flex`).
//!
//! It reads the model's frozen weights in place (no copy), whether the
//! model keeps its matrices in f32, bf16 or f16 (`model.dtype`; a bf16
//! matrix multiplies activations rounded to bf16 with f32 sums, as torch
//! does in bf16, and an f16 one is widened a tile at a time inside each
//! product: [`kernels::matmul_weight`]), and the adapter
//! from the host [`LoraWeights`], so nothing is attached and no autodiff
//! graph is built: one forward pass keeps the activations the backward
//! pass needs ([`layer`]), attention skips the masked triangle
//! ([`attention`]), and the element-wise work runs through vectorised
//! kernels ([`kernels`]). The head's cross-entropy ([`head`]) is the
//! same closed form as the graph path's (`super::cross_entropy`), on host
//! buffers.
//!
//! The graph path (`super::grad`, burn's autodiff) is the reference: it
//! runs on every other backend, and the tests hold the two to the same
//! gradients. Not here: cutting batches into shares and threads
//! (`super::grad`).

mod attention;
pub(crate) mod bf16_amx;
pub(crate) mod bf16_gemm;
mod head;
pub(crate) mod kernels;
mod layer;
mod spare;

use burn::backend::{BackendTypes, Flex};
use burn::tensor::{DType, Tensor, bf16, f16};

use super::cross_entropy::TargetRows;
use super::grad::StepGradients;
use crate::data::Batch;
use crate::lora::{LoraWeights, TargetModule};
use crate::model::Llama;
use crate::model::llama::DropoutSeeds;
use attention::Heads;
use kernels::{Values, rms_norm};
use layer::{Adapter, LayerActivations, LayerWeights, Linear, Pass};

use super::grad::Activations;

type FlexTensor = <Flex as BackendTypes>::FloatTensorPrimitive;

/// A frozen tensor of the CPU backend in f32, bf16 or f16, readable as a
/// slice.
#[derive(Debug, Clone)]
struct HostView(FlexTensor);

impl HostView {
    fn of<const D: usize>(t: Tensor<D>) -> Option<HostView> {
        let p = t.inner().try_into_primitive::<Flex>().ok()?;
        let contiguous = match p.dtype() {
            DType::F32 => p.as_slice::<f32>().is_some(),
            DType::BF16 => p.as_slice::<bf16>().is_some(),
            DType::F16 => p.as_slice::<f16>().is_some(),
            _ => return None,
        };
        let view = HostView(if contiguous { p } else { p.to_contiguous() });
        view.try_values()?;
        Some(view)
    }

    fn try_values(&self) -> Option<Values<'_>> {
        let p = &self.0;
        Some(match p.dtype() {
            DType::F32 => Values::F32(p.as_slice()?),
            DType::BF16 => Values::Bf16(p.as_slice()?),
            DType::F16 => Values::F16(p.as_slice()?),
            _ => return None,
        })
    }

    fn values(&self) -> Values<'_> {
        self.try_values().expect("checked in HostView::of")
    }

    /// An f32 view (norm weights).
    fn f32(&self) -> Option<&[f32]> {
        self.0.as_slice()
    }

    fn slice(&self) -> &[f32] {
        self.f32().expect("checked in CpuWeights::of")
    }
}

/// The frozen weights of a model on the CPU backend, shared with it.
#[derive(Debug, Clone)]
pub struct CpuWeights {
    embed: HostView,
    norm: HostView,
    /// `[hidden, vocab]`.
    head: HostView,
    /// Per layer: the two norms, then the projections in `TargetModule::ALL` order.
    layers: Vec<[HostView; 9]>,
}

impl CpuWeights {
    /// Whether the projections' products run on AMX tiles (bf16 weights on
    /// a CPU and kernel that offer AMX): those are fast enough that
    /// packing the weights for each product is a large part of their cost,
    /// so a step wants fewer, larger shares.
    pub fn products_on_tiles(&self) -> bool {
        matches!(
            self.layers.first().map(|l| l[2].values()),
            Some(Values::Bf16(_))
        ) && bf16_amx::available()
    }

    /// `None` when the model's weights are not on the CPU backend, its
    /// matrices are not in f32, bf16 or f16, or its norms are not f32.
    pub fn of(model: &Llama) -> Option<CpuWeights> {
        let norm = |t: Tensor<1>| HostView::of(t).filter(|v| v.f32().is_some());
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let m = &l.mlp;
                let views = [
                    norm(l.input_layernorm.weight.val())?,
                    norm(l.post_attention_layernorm.weight.val())?,
                    HostView::of(a.q_proj.weight.val())?,
                    HostView::of(a.k_proj.weight.val())?,
                    HostView::of(a.v_proj.weight.val())?,
                    HostView::of(a.o_proj.weight.val())?,
                    HostView::of(m.gate_proj.weight.val())?,
                    HostView::of(m.up_proj.weight.val())?,
                    HostView::of(m.down_proj.weight.val())?,
                ];
                Some(views)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(CpuWeights {
            embed: HostView::of(model.embed_tokens.val())?,
            norm: norm(model.norm.weight.val())?,
            head: HostView::of(model.lm_head.val())?,
            layers,
        })
    }

    /// Layer `i`'s weights, with the adapters of `lora` on it.
    fn layer<'w>(&'w self, model: &Llama, lora: &'w LoraWeights, i: usize) -> LayerWeights<'w> {
        let views = &self.layers[i];
        let scale = lora.config.scale() as f32;
        let proj = std::array::from_fn(|p| {
            let module = TargetModule::ALL[p];
            let (inp, out) = module.features(&model.config);
            Linear {
                weight: views[2 + p].values(),
                inp,
                out,
                lora: None,
            }
        });
        let mut w = LayerWeights {
            input_norm: views[0].slice(),
            post_norm: views[1].slice(),
            proj,
        };
        let mut at = 0;
        for (site, pair) in &lora.pairs {
            if site.layer == i {
                let p = TargetModule::ALL
                    .iter()
                    .position(|m| *m == site.module)
                    .expect("a projection");
                w.proj[p].lora = Some(Adapter {
                    a: &pair.a.data,
                    b: &pair.b.data,
                    r: lora.config.r,
                    scale,
                    grad_at: at,
                });
            }
            at += pair.a.data.len() + pair.b.data.len();
        }
        w
    }
}

/// [`super::grad::lora_gradients`] of `batches` on the calling thread, on
/// the CPU: the gradient of `Σ loss_sum / denominator` for every LoRA
/// value, laid out as `LoraWeights::to_flat`.
///
/// With [`Activations::Recomputed`] only each layer's input is kept
/// through the forward pass, and the layer's forward pass runs again just
/// before its backward pass: the same arithmetic in the same order, so the
/// same gradients bit for bit, holding one layer's activations instead of
/// every layer's.
pub fn share_gradients(
    model: &Llama,
    weights: &CpuWeights,
    lora: &LoraWeights,
    batches: &[Batch],
    denominator: f64,
    seed: u64,
    activations: Activations,
) -> StepGradients {
    let backward = Backward {
        grad_scale: 1.0 / denominator,
        seed,
        activations,
    };
    passes(model, weights, lora, batches, Some(backward))
}

/// The sum of the targets' cross-entropy over `batches` and their number,
/// without dropout or gradients (evaluation).
pub fn loss_sum<'b>(
    model: &Llama,
    weights: &CpuWeights,
    lora: &LoraWeights,
    batches: impl IntoIterator<Item = &'b Batch>,
) -> (f64, usize) {
    let r = passes(model, weights, lora, batches, None);
    (r.loss_sum, r.targets)
}

/// Frees the buffers that this thread and every thread of the CPU pool
/// keep for their next pass (`spare`).
pub fn release_spare_buffers() {
    spare::release();
    rayon::broadcast(|_| spare::release());
}

/// What a training pass does after its forward pass.
struct Backward {
    /// The gradient is that of `grad_scale · Σ loss_sum`.
    grad_scale: f64,
    /// Seeds the dropout masks, with each row's sample identity.
    seed: u64,
    activations: Activations,
}

/// A layer's forward pass as kept for its backward pass.
enum Kept {
    Activations(Box<LayerActivations>),
    /// The layer's input, to run its forward pass again.
    Input(Vec<f32>),
}

/// Forward passes over `batches`, and with `backward` the backward passes
/// (training: dropout applies).
fn passes<'b>(
    model: &Llama,
    weights: &CpuWeights,
    lora: &LoraWeights,
    batches: impl IntoIterator<Item = &'b Batch>,
    backward: Option<Backward>,
) -> StepGradients {
    let grad_scale = backward.as_ref().map(|b| b.grad_scale);
    let recompute = backward
        .as_ref()
        .is_some_and(|b| b.activations == Activations::Recomputed);
    // Recycled buffers, except where the products run on AMX tiles (`spare`).
    let _recycling = spare::Recycling::set(!weights.products_on_tiles());
    let config = &model.config;
    let layers: Vec<LayerWeights> = (0..config.num_hidden_layers)
        .map(|i| weights.layer(model, lora, i))
        .collect();
    // Layer `i` needs its input gradient only if a layer below it has an adapter.
    let lowest_adapted = layers.iter().position(|l| l.has_adapter());
    let mut grads = vec![0.0f32; lora.num_parameters()];
    let mut loss_sum = 0.0;
    let mut targets = 0;
    let h = config.hidden_size;
    for batch in batches {
        let (rows, seq) = (batch.rows, batch.seq_len);
        let tokens = rows * seq;
        let (cos, sin) = model.rope.host_tables(0, seq);
        let pass = Pass {
            heads: Heads {
                rows,
                seq,
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                dim: config.head_dim,
            },
            hidden: h,
            eps: config.rms_norm_eps as f32,
            cos: &cos,
            sin: &sin,
            dropout: lora.config.dropout,
        };
        let training = backward.is_some();
        let seeds = backward
            .as_ref()
            .filter(|_| lora.config.dropout > 0.0)
            .map(|b| DropoutSeeds {
                seeds: batch
                    .sample_ids
                    .iter()
                    .map(|r| r.dropout_seed(b.seed))
                    .collect(),
            });
        let layer_seeds = |i: usize| seeds.as_ref().map(|s| s.mixed((i as u64 + 1) << 8));

        let embed = weights.embed.values();
        let mut x = spare::for_output(tokens * h);
        for (row, &id) in x.chunks_exact_mut(h).zip(&batch.input_ids) {
            embed.widen_into(id as usize * h, row);
        }
        let mut saved = Vec::with_capacity(layers.len());
        for (i, w) in layers.iter().enumerate() {
            let input = (training && recompute).then(|| spare::copy_of(&x));
            let (next, a) = layer::forward(w, &pass, x, layer_seeds(i).as_ref());
            match (training, input) {
                (true, Some(input)) => {
                    saved.push(Kept::Input(input));
                    a.give_back();
                }
                (true, None) => saved.push(Kept::Activations(Box::new(a))),
                (false, _) => a.give_back(),
            }
            x = next;
        }
        let mut inv = spare::for_output(tokens);
        let mut normed = spare::for_output(tokens * h);
        rms_norm(&x, weights.norm.slice(), pass.eps, &mut normed, &mut inv);

        let target_rows = TargetRows::shifted(&batch.input_ids, &batch.target_mask, seq);
        let (loss, d_normed) = head::cross_entropy(
            &normed,
            weights.head.values(),
            h,
            &target_rows,
            grad_scale.map(|g| g as f32),
        );
        loss_sum += loss;
        targets += batch.num_targets();
        spare::give_back(normed);
        let Some(d_normed) = d_normed else {
            spare::give_back(x);
            spare::give_back(inv);
            continue;
        };
        let mut dy = spare::zeroed(tokens * h);
        kernels::rms_norm_backward(&x, weights.norm.slice(), &inv, &d_normed, &mut dy);
        for v in [x, inv, d_normed] {
            spare::give_back(v);
        }

        let Some(lowest) = lowest_adapted else {
            continue;
        };
        for i in (lowest..layers.len()).rev() {
            let a = match saved.pop().expect("one per layer") {
                Kept::Activations(a) => *a,
                Kept::Input(x) => layer::recompute(&layers[i], &pass, x, layer_seeds(i).as_ref()),
            };
            let dx = layer::backward(&layers[i], &pass, &a, &dy, i > lowest, &mut grads);
            a.give_back();
            match dx {
                Some(dx) => spare::give_back(std::mem::replace(&mut dy, dx)),
                None => break,
            }
        }
        spare::give_back(dy);
    }
    StepGradients {
        loss_sum,
        targets,
        grads,
    }
}
