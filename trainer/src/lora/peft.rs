//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are PEFT's for a `LlamaForCausalLM`
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`; the
//! adapter name is not in the key), `lora_A` is `[r, in]` and `lora_B`
//! `[out, r]`, so `PeftModel.from_pretrained(base, dir)` loads a folder
//! written here, and a folder PEFT wrote loads here. Not here: applying the
//! adapter (`super::attach`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{AdapterSite, LoraConfig, LoraPair, LoraWeights, TargetModule};
use crate::model::{LlamaConfig, ModelError, WeightMap, hf};

const PREFIX: &str = "base_model.model.";

/// PEFT's key for one matrix of an adapter.
pub fn peft_key(site: &AdapterSite, matrix: &str) -> String {
    format!("{PREFIX}{}.lora_{matrix}.weight", site.hf_name())
}

/// The `adapter_config.json` document PEFT writes for `config`.
pub fn adapter_config_json(config: &LoraConfig, base_model: &str) -> Value {
    let targets: Vec<&str> = config.target_modules.iter().map(|m| m.name()).collect();
    // PEFT types `lora_alpha` as an int; write whole numbers as one.
    let alpha = if config.alpha.fract() == 0.0 && config.alpha.abs() < 1e15 {
        serde_json::json!(config.alpha as i64)
    } else {
        serde_json::json!(config.alpha)
    };
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// Writes `weights` as a PEFT folder in `dir`.
pub fn save(dir: &Path, weights: &LoraWeights, base_model: &str) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&adapter_config_json(&weights.config, base_model))
        .expect("config serializes");
    std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))?;
    let mut tensors = Vec::new();
    for (site, pair) in &weights.pairs {
        tensors.push((peft_key(site, "A"), &pair.a));
        tensors.push((peft_key(site, "B"), &pair.b));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    hf::write_safetensors(
        &dir.join("adapter_model.safetensors"),
        tensors.iter().map(|(k, t)| (k.as_str(), *t)),
        Some(metadata),
    )
}

/// Reads a PEFT LoRA folder for a model of `model`'s shape.
pub fn load(dir: &Path, model: &LlamaConfig) -> Result<LoraWeights, ModelError> {
    let cfg_path = dir.join("adapter_config.json");
    let file = cfg_path.display().to_string();
    let bad = |message: String| ModelError::Config {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(bad("`peft_type` must be \"LORA\"".into()));
    }
    for (flag, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out")] {
        if v.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("{what} adapters are not supported")));
        }
    }
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("missing number `lora_alpha`".into()))?;
    let targets: Vec<TargetModule> = match v.get("target_modules") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(TargetModule::parse)
                    .ok_or_else(|| bad(format!("target module {t} is not a Llama projection")))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) if s == "all-linear" => TargetModule::ALL.to_vec(),
        _ => return Err(bad("`target_modules` must be a list of module names".into())),
    };
    if v.get("rank_pattern")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
        || v.get("alpha_pattern")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    {
        return Err(bad(
            "per-module `rank_pattern`/`alpha_pattern` is not supported".into(),
        ));
    }
    let mut config = LoraConfig::new(r, alpha, &targets);
    config.dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    config.use_rslora = v
        .get("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let st_path = dir.join("adapter_model.safetensors");
    let mut tensors: WeightMap = hf::read_safetensors_file(&st_path)?;
    let mut pairs = BTreeMap::new();
    for layer in 0..model.num_hidden_layers {
        for &module in &config.target_modules {
            let site = AdapterSite { layer, module };
            let (inp, out) = module.features(model);
            let a = tensors.take(&peft_key(&site, "A"), &[r, inp])?;
            let b = tensors.take(&peft_key(&site, "B"), &[out, r])?;
            pairs.insert(site, LoraPair { a, b });
        }
    }
    if let Some(extra) = tensors.names().next() {
        return Err(ModelError::Format {
            file: st_path.display().to_string(),
            message: format!(
                "unexpected tensor `{extra}` ({} in all) for a {}-layer model with targets {:?}",
                tensors.len(),
                model.num_hidden_layers,
                config
                    .target_modules
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
            ),
        });
    }
    Ok(LoraWeights { config, pairs })
}
