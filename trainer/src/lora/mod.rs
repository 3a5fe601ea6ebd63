//! LoRA adapters with Hugging Face PEFT's semantics.
//!
//! A target projection `W` becomes `y = x·W + s · (dropout(x)·A)·B` with
//! `s = alpha / r`, or `alpha / sqrt(r)` with rsLoRA. `A` starts
//! Kaiming-uniform with `a = √5` (so uniform in ±1/√in, as PEFT's
//! `reset_lora_parameters`), `B` at zero, and the base weights are frozen.
//!
//! [`LoraConfig`] says where adapters go and how they scale; [`LoraWeights`]
//! holds an adapter's tensors on the host, in PEFT's names and layout
//! (`lora_A` is `[r, in]`, `lora_B` is `[out, r]`), and is what is attached to
//! a model ([`attach`]), merged ([`merge_into`]) and saved or loaded as a
//! PEFT folder ([`peft`]). The host copy is the master: training updates it
//! and re-attaches it each step. Not here: optimisation (`crate::train`).

pub mod peft;

use std::collections::BTreeMap;
use std::fmt;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::llama::{Llama, Projection};
use crate::model::{HostTensor, LlamaConfig, WeightMap};

/// A linear projection of a Llama block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl TargetModule {
    pub const ALL: [TargetModule; 7] = [
        TargetModule::QProj,
        TargetModule::KProj,
        TargetModule::VProj,
        TargetModule::OProj,
        TargetModule::GateProj,
        TargetModule::UpProj,
        TargetModule::DownProj,
    ];

    /// The module's HF name (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::QProj => "q_proj",
            TargetModule::KProj => "k_proj",
            TargetModule::VProj => "v_proj",
            TargetModule::OProj => "o_proj",
            TargetModule::GateProj => "gate_proj",
            TargetModule::UpProj => "up_proj",
            TargetModule::DownProj => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<TargetModule> {
        TargetModule::ALL.into_iter().find(|m| m.name() == name)
    }

    /// `self_attn` or `mlp`: the block the module lives in.
    pub fn block(self) -> &'static str {
        match self {
            TargetModule::QProj
            | TargetModule::KProj
            | TargetModule::VProj
            | TargetModule::OProj => "self_attn",
            _ => "mlp",
        }
    }

    /// `(in_features, out_features)` of this projection in a model of `config`.
    pub fn features(self, config: &LlamaConfig) -> (usize, usize) {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        let inter = config.intermediate_size;
        match self {
            TargetModule::QProj => (h, q),
            TargetModule::KProj | TargetModule::VProj => (h, kv),
            TargetModule::OProj => (q, h),
            TargetModule::GateProj | TargetModule::UpProj => (h, inter),
            TargetModule::DownProj => (inter, h),
        }
    }
}

impl fmt::Display for TargetModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where adapters go and how they scale (PEFT's `LoraConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Sorted, without duplicates.
    pub target_modules: Vec<TargetModule>,
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn new(r: usize, alpha: f64, targets: &[TargetModule]) -> LoraConfig {
        let mut target_modules = targets.to_vec();
        target_modules.sort();
        target_modules.dedup();
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules,
            use_rslora: false,
        }
    }

    /// The factor the adapter's output is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Names one adapted projection: layer index and module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdapterSite {
    pub layer: usize,
    pub module: TargetModule,
}

impl AdapterSite {
    /// The HF name of the projection, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn hf_name(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer,
            self.module.block(),
            self.module.name()
        )
    }
}

/// One adapter's matrices in PEFT layout: `a` is `[r, in]`, `b` is `[out, r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub a: HostTensor,
    pub b: HostTensor,
}

/// Every adapter of a model, on the host, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    pub config: LoraConfig,
    pub pairs: BTreeMap<AdapterSite, LoraPair>,
}

impl LoraWeights {
    /// Fresh adapters as PEFT initialises them: `A` uniform in ±1/√in, `B` zero.
    pub fn init(config: &LoraConfig, model: &LlamaConfig, seed: u64) -> LoraWeights {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x10_7a_5e_ed);
        let mut pairs = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for &module in &config.target_modules {
                let (inp, out) = module.features(model);
                let bound = 1.0 / (inp as f32).sqrt();
                let a = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                pairs.insert(
                    AdapterSite { layer, module },
                    LoraPair {
                        a: HostTensor::new(vec![config.r, inp], a),
                        b: HostTensor::new(vec![out, config.r], vec![0.0; out * config.r]),
                    },
                );
            }
        }
        LoraWeights {
            config: config.clone(),
            pairs,
        }
    }

    /// Number of trainable values.
    pub fn num_parameters(&self) -> usize {
        self.pairs
            .values()
            .map(|p| p.a.data.len() + p.b.data.len())
            .sum()
    }

    /// All values in one flat vector, in [`Self::pairs`] order, A before B.
    pub fn to_flat(&self) -> Vec<f32> {
        let mut flat = Vec::with_capacity(self.num_parameters());
        for p in self.pairs.values() {
            flat.extend_from_slice(&p.a.data);
            flat.extend_from_slice(&p.b.data);
        }
        flat
    }

    /// Overwrites every value from a vector laid out as [`Self::to_flat`].
    pub fn set_flat(&mut self, flat: &[f32]) {
        assert_eq!(flat.len(), self.num_parameters(), "flat LoRA vector length");
        let mut at = 0;
        for p in self.pairs.values_mut() {
            for t in [&mut p.a, &mut p.b] {
                let n = t.data.len();
                t.data.copy_from_slice(&flat[at..at + n]);
                at += n;
            }
        }
    }
}

/// The adapter part of a [`Projection`]: burn layout, `a` is `[in, r]`,
/// `b` is `[r, out]`.
#[derive(burn::module::Module, Debug)]
pub struct LoraAdapter {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    pub dropout: f64,
}

/// Attaches `weights` to `model` on `device`: every listed site gets an
/// adapter (replacing any it had); base weights stay as they are.
/// With `trainable`, the adapter tensors require gradients.
pub fn attach(model: &mut Llama, weights: &LoraWeights, device: &Device, trainable: bool) {
    let scale = weights.config.scale();
    let dropout = weights.config.dropout;
    for (site, pair) in &weights.pairs {
        let proj = projection_mut(model, *site);
        let to_tensor = |t: &HostTensor| {
            let t = crate::model::llama::transpose(t);
            let tensor =
                Tensor::from_data(TensorData::new(t.data, [t.shape[0], t.shape[1]]), device);
            if trainable {
                Param::from_tensor(tensor.require_grad())
            } else {
                Param::from_tensor(tensor).set_require_grad(false)
            }
        };
        proj.lora = Some(LoraAdapter {
            a: to_tensor(&pair.a),
            b: to_tensor(&pair.b),
            scale,
            dropout,
        });
    }
}

/// Adds each adapter into the HF-layout base weights in `base`
/// (`W[out, in] += s · B[out, r] · A[r, in]`), as PEFT's `merge_and_unload`.
pub fn merge_into(
    base: &mut WeightMap,
    lora: &LoraWeights,
) -> Result<(), crate::model::ModelError> {
    let scale = lora.config.scale() as f32;
    for (site, pair) in &lora.pairs {
        let name = format!("{}.weight", site.hf_name());
        let (out, r) = (pair.b.shape[0], pair.b.shape[1]);
        let inp = pair.a.shape[1];
        let mut w = base.take(&name, &[out, inp])?;
        for o in 0..out {
            for k in 0..r {
                let bk = pair.b.data[o * r + k] * scale;
                if bk == 0.0 {
                    continue;
                }
                let a_row = &pair.a.data[k * inp..(k + 1) * inp];
                let w_row = &mut w.data[o * inp..(o + 1) * inp];
                for (wi, ai) in w_row.iter_mut().zip(a_row) {
                    *wi += bk * ai;
                }
            }
        }
        base.insert(name, w);
    }
    Ok(())
}

/// The projection of `model` at `site`.
pub fn projection(model: &Llama, site: AdapterSite) -> &Projection {
    let l = &model.layers[site.layer];
    match site.module {
        TargetModule::QProj => &l.self_attn.q_proj,
        TargetModule::KProj => &l.self_attn.k_proj,
        TargetModule::VProj => &l.self_attn.v_proj,
        TargetModule::OProj => &l.self_attn.o_proj,
        TargetModule::GateProj => &l.mlp.gate_proj,
        TargetModule::UpProj => &l.mlp.up_proj,
        TargetModule::DownProj => &l.mlp.down_proj,
    }
}

fn projection_mut(model: &mut Llama, site: AdapterSite) -> &mut Projection {
    let l = &mut model.layers[site.layer];
    match site.module {
        TargetModule::QProj => &mut l.self_attn.q_proj,
        TargetModule::KProj => &mut l.self_attn.k_proj,
        TargetModule::VProj => &mut l.self_attn.v_proj,
        TargetModule::OProj => &mut l.self_attn.o_proj,
        TargetModule::GateProj => &mut l.mlp.gate_proj,
        TargetModule::UpProj => &mut l.mlp.up_proj,
        TargetModule::DownProj => &mut l.mlp.down_proj,
    }
}

/// A 2-D tensor copied to the host.
pub fn host(t: Tensor<2>) -> HostTensor {
    let [r, c] = t.dims();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor");
    HostTensor::new(vec![r, c], data)
}
