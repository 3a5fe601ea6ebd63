//! `LlamaConfig`: the shape of a Llama model, read from and written as a
//! Hugging Face `config.json`.
//!
//! Both spellings of the RoPE settings are understood: the classic top-level
//! `rope_theta` + `rope_scaling`, and the `rope_parameters` object newer
//! transformers releases write. What this module does not do: load weights
//! (see `hf` and `gguf`) or build tensors (see `llama`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ModelError;

/// Upper bounds of a model's sizes, checked by [`LlamaConfig::validate`]
/// whichever file they come from (`config.json`, GGUF metadata): far past
/// every released Llama-family model, and small enough that nothing sized
/// from these numbers alone, before any tensor is read, can exhaust memory
/// or overflow. Each tensor is then checked against the shape they imply
/// as it is read (`Llama::from_weights`), so a file cannot claim more than
/// it holds.
pub mod limits {
    /// `vocab_size` (GGUF: `llama.vocab_size` or the token list), 4,194,304.
    pub const VOCAB: usize = 1 << 22;
    /// `hidden_size` (`llama.embedding_length`), 65,536.
    pub const HIDDEN: usize = 1 << 16;
    /// `intermediate_size` (`llama.feed_forward_length`), 262,144.
    pub const INTERMEDIATE: usize = 1 << 18;
    /// `num_hidden_layers` (`llama.block_count`).
    pub const LAYERS: usize = 1024;
    /// `num_attention_heads` and `num_key_value_heads`
    /// (`llama.attention.head_count`, `head_count_kv`).
    pub const HEADS: usize = 1024;
    /// `head_dim` (`llama.attention.key_length`).
    pub const HEAD_DIM: usize = 4096;
    /// `max_position_embeddings` (`llama.context_length`) and
    /// `rope_scaling.original_max_position_embeddings`, 16,777,216.
    pub const POSITIONS: usize = 1 << 24;
}

/// The architecture hyper-parameters of a Llama decoder, in HF naming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The `llama3` RoPE frequency scaling (Llama 3.1 and later).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Named model sizes that `init-model` and `preset:` specs create: small
/// random models for tests, and the shapes of real checkpoints (random
/// weights in the published configs) for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// hidden 256, 4 layers, 4 heads, intermediate 688, vocab 1024.
    Tiny,
    /// hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 32000.
    Small,
    /// `tiny` with grouped-query attention: 4 query heads share 2 KV heads.
    TinyGqa,
    /// SmolLM2-135M's shape: hidden 576, 30 layers, 9 heads sharing 3 KV
    /// heads, intermediate 1536, vocab 49152, tied embeddings.
    Smollm2_135m,
    /// SmolLM2-360M's shape: hidden 960, 32 layers, 15 heads sharing 5 KV
    /// heads, intermediate 2560, vocab 49152, tied embeddings.
    Smollm2_360m,
    /// Llama-3.2-1B's shape: hidden 2048, 16 layers, 32 heads sharing 8 KV
    /// heads, intermediate 8192, vocab 128256, tied embeddings, llama3 RoPE.
    Llama1bShape,
}

impl Preset {
    pub const NAMES: &'static [&'static str] = &[
        "tiny",
        "small",
        "tiny-gqa",
        "smollm2-135m",
        "smollm2-360m",
        "llama-1b-shape",
    ];

    const ALL: [Preset; 6] = [
        Preset::Tiny,
        Preset::Small,
        Preset::TinyGqa,
        Preset::Smollm2_135m,
        Preset::Smollm2_360m,
        Preset::Llama1bShape,
    ];

    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::TinyGqa => "tiny-gqa",
            Preset::Smollm2_135m => "smollm2-135m",
            Preset::Smollm2_360m => "smollm2-360m",
            Preset::Llama1bShape => "llama-1b-shape",
        }
    }

    /// The architecture; the real shapes follow the published
    /// `config.json` of HuggingFaceTB/SmolLM2-135M, SmolLM2-360M and
    /// meta-llama/Llama-3.2-1B.
    pub fn config(self) -> LlamaConfig {
        let (hidden, layers, heads, kv_heads, inter, vocab) = match self {
            Preset::Tiny => (256, 4, 4, 4, 688, 1024),
            Preset::Small => (512, 8, 8, 8, 1376, 32000),
            Preset::TinyGqa => (256, 4, 4, 2, 688, 1024),
            Preset::Smollm2_135m => (576, 30, 9, 3, 1536, 49152),
            Preset::Smollm2_360m => (960, 32, 15, 5, 2560, 49152),
            Preset::Llama1bShape => (2048, 16, 32, 8, 8192, 128256),
        };
        let mut config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden / heads,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            bos_token_id: Some(crate::tokenizer::BOS_ID),
            eos_token_ids: vec![crate::tokenizer::EOS_ID],
        };
        match self {
            Preset::Tiny | Preset::Small | Preset::TinyGqa => {}
            Preset::Smollm2_135m | Preset::Smollm2_360m => {
                config.max_position_embeddings = 8192;
                config.rope_theta = 100_000.0;
                config.tie_word_embeddings = true;
            }
            Preset::Llama1bShape => {
                config.max_position_embeddings = 131_072;
                config.rope_theta = 500_000.0;
                config.rope_scaling = Some(RopeScaling {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                });
                config.tie_word_embeddings = true;
            }
        }
        config
    }
}

impl LlamaConfig {
    /// Reads a HF `config.json` document. `source` names the file in errors.
    pub fn from_hf_json(text: &str, source: &str) -> Result<LlamaConfig, ModelError> {
        let bad = |message: String| ModelError::Config {
            file: source.to_string(),
            message,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;

        if let Some(t) = obj.get("model_type").and_then(Value::as_str)
            && !matches!(t, "llama" | "mistral" | "smollm" | "smollm2")
        {
            return Err(bad(format!(
                "model_type {t:?} is not supported (expected \"llama\")"
            )));
        }
        let req = |key: &str| -> Result<usize, ModelError> {
            obj.get(key)
                .ok_or_else(|| bad(format!("missing field `{key}`")))?
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("field `{key}` must be a non-negative integer")))
        };
        let opt_usize = |key: &str| obj.get(key).and_then(Value::as_u64).map(|n| n as usize);
        let opt_f64 = |key: &str| obj.get(key).and_then(Value::as_f64);
        let flag = |key: &str| obj.get(key).and_then(Value::as_bool).unwrap_or(false);

        for unsupported in ["attention_bias", "mlp_bias"] {
            if flag(unsupported) {
                return Err(bad(format!("`{unsupported}: true` is not supported")));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(bad(format!(
                "hidden_act {act:?} is not supported (expected \"silu\")"
            )));
        }

        let hidden_size = req("hidden_size")?;
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads = opt_usize("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = opt_usize("head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));

        // Newer transformers write `rope_parameters`; older ones `rope_theta` + `rope_scaling`.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("rope_theta"))
            .unwrap_or(10000.0);
        let scaling_obj = match obj.get("rope_scaling") {
            Some(Value::Object(m)) => Some(m),
            _ => rope_params,
        };
        let rope_scaling = match scaling_obj {
            None => None,
            Some(m) => {
                let kind = m
                    .get("rope_type")
                    .or_else(|| m.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let num = |k: &str| {
                            m.get(k).and_then(Value::as_f64).ok_or_else(|| {
                                bad(format!(
                                    "rope_scaling: missing number `{k}` for type llama3"
                                ))
                            })
                        };
                        Some(RopeScaling {
                            factor: num("factor")?,
                            low_freq_factor: num("low_freq_factor")?,
                            high_freq_factor: num("high_freq_factor")?,
                            original_max_position_embeddings: num(
                                "original_max_position_embeddings",
                            )?
                                as usize,
                        })
                    }
                    other => {
                        return Err(bad(format!(
                            "rope_scaling type {other:?} is not supported (expected \"llama3\" or none)"
                        )));
                    }
                }
            }
        };

        // Token ids are kept as u32: a larger one is refused, not cut short
        // into another token's id.
        let token_id = |key: &str, n: u64| {
            u32::try_from(n)
                .map_err(|_| bad(format!("{key} is {n}, over the limit of {}", u32::MAX)))
        };
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => vec![token_id("eos_token_id", n)?],
                None => Vec::new(),
            },
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|n| token_id("eos_token_id", n))
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let bos_token_id = match obj.get("bos_token_id").and_then(Value::as_u64) {
            Some(n) => Some(token_id("bos_token_id", n)?),
            None => None,
        };

        let config = LlamaConfig {
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(2048),
            rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: flag("tie_word_embeddings"),
            bos_token_id,
            eos_token_ids,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the relations between sizes that the model relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        let mut bounded = vec![
            ("vocab_size", self.vocab_size, limits::VOCAB),
            ("hidden_size", self.hidden_size, limits::HIDDEN),
            (
                "intermediate_size",
                self.intermediate_size,
                limits::INTERMEDIATE,
            ),
            ("num_hidden_layers", self.num_hidden_layers, limits::LAYERS),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::HEADS,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                limits::HEADS,
            ),
            ("head_dim", self.head_dim, limits::HEAD_DIM),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                limits::POSITIONS,
            ),
        ];
        if let Some(s) = &self.rope_scaling {
            bounded.push((
                "rope_scaling.original_max_position_embeddings",
                s.original_max_position_embeddings,
                limits::POSITIONS,
            ));
        }
        for (name, value, most) in bounded {
            if value > most {
                return Err(format!("{name} is {value}, over the limit of {most}"));
            }
        }
        let positive_finite = [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        for (name, value) in positive_finite {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{name} must be a positive number, got {value}"));
            }
        }
        if let Some(s) = &self.rope_scaling {
            let factors = [
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
            ];
            for (name, value) in factors {
                if !(value.is_finite() && value > 0.0) {
                    return Err(format!("{name} must be a positive number, got {value}"));
                }
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// The `config.json` that transformers' `LlamaForCausalLM` reads.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => serde_json::json!(one),
                many => serde_json::json!(many),
            },
        });
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        v
    }

    /// Number of parameters of the full model.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * per_layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a model of `c`'s shape (no biases; one head if tied).
    fn parameters(c: &LlamaConfig) -> usize {
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let layer = 2 * h * q + 2 * h * kv + 3 * h * c.intermediate_size + 2 * h;
        let head = if c.tie_word_embeddings {
            0
        } else {
            c.vocab_size * h
        };
        c.vocab_size * h + c.num_hidden_layers * layer + h + head
    }

    #[test]
    fn the_real_shapes_have_the_published_parameter_counts() {
        // The totals the published checkpoints' safetensors hold.
        for (preset, total) in [
            (Preset::Smollm2_135m, 134_515_008),
            (Preset::Smollm2_360m, 361_821_120),
            (Preset::Llama1bShape, 1_235_814_400),
        ] {
            let c = preset.config();
            assert_eq!(parameters(&c), total, "{}", preset.name());
            assert_eq!(c.head_dim, 64, "{}", preset.name());
            assert!(c.tie_word_embeddings);
        }
        assert!(Preset::Llama1bShape.config().rope_scaling.is_some());
    }

    #[test]
    fn every_preset_name_parses_back() {
        for name in Preset::NAMES {
            assert_eq!(Preset::parse(name).map(Preset::name), Some(*name));
        }
        assert_eq!(Preset::NAMES.len(), Preset::ALL.len());
        assert_eq!(Preset::parse("smollm2"), None);
    }

    #[test]
    fn reads_classic_and_v5_rope_spellings() {
        let classic = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c = LlamaConfig::from_hf_json(classic, "config.json").unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.head_dim, 4);

        let v5 = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_type":"default","rope_theta":1234.0}}"#;
        let c = LlamaConfig::from_hf_json(v5, "config.json").unwrap();
        assert_eq!(c.rope_theta, 1234.0);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn missing_field_is_named() {
        let text = r#"{"vocab_size":10,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let err = LlamaConfig::from_hf_json(text, "m/config.json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m/config.json: missing field `hidden_size`"
        );
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        let base = Preset::Tiny.config().to_hf_json();
        for (key, value, message) in [
            (
                "num_hidden_layers",
                serde_json::json!(1u64 << 30),
                "num_hidden_layers is 1073741824, over the limit of 1024",
            ),
            (
                "vocab_size",
                serde_json::json!(u64::MAX),
                "vocab_size is 18446744073709551615, over the limit of 4194304",
            ),
            (
                "hidden_size",
                serde_json::json!(1u64 << 40),
                "over the limit of 65536",
            ),
            (
                "intermediate_size",
                serde_json::json!(1u64 << 32),
                "intermediate_size is 4294967296, over the limit of 262144",
            ),
            (
                "max_position_embeddings",
                serde_json::json!(1u64 << 50),
                "over the limit of 16777216",
            ),
            (
                "rms_norm_eps",
                serde_json::json!(-1.0),
                "rms_norm_eps must be a positive number, got -1",
            ),
        ] {
            let mut config = base.clone();
            config[key] = value;
            let err = LlamaConfig::from_hf_json(&config.to_string(), "m/config.json").unwrap_err();
            let err = err.to_string();
            assert!(
                err.starts_with("m/config.json: ") && err.contains(message),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn every_limit_is_inclusive() {
        let mut c = Preset::Tiny.config();
        c.vocab_size = limits::VOCAB;
        c.hidden_size = limits::HIDDEN;
        c.intermediate_size = limits::INTERMEDIATE;
        c.num_hidden_layers = limits::LAYERS;
        c.num_attention_heads = limits::HEADS;
        c.num_key_value_heads = limits::HEADS;
        c.head_dim = limits::HEAD_DIM;
        c.max_position_embeddings = limits::POSITIONS;
        assert_eq!(c.validate(), Ok(()));
        c.head_dim = limits::HEAD_DIM + 2;
        assert_eq!(
            c.validate().unwrap_err(),
            "head_dim is 4098, over the limit of 4096"
        );
    }

    #[test]
    fn rope_scaling_and_token_ids_are_bounded_too() {
        let mut config = Preset::Tiny.config().to_hf_json();
        config["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1e30,
        });
        let err = LlamaConfig::from_hf_json(&config.to_string(), "m/config.json").unwrap_err();
        assert!(
            err.to_string().contains(
                "rope_scaling.original_max_position_embeddings is 18446744073709551615, over the limit of 16777216"
            ),
            "{err}"
        );
        config["rope_scaling"]["original_max_position_embeddings"] = serde_json::json!(8192);
        config["rope_scaling"]["factor"] = serde_json::json!(0.0);
        let err = LlamaConfig::from_hf_json(&config.to_string(), "m/config.json").unwrap_err();
        assert!(
            err.to_string()
                .contains("rope_scaling.factor must be a positive number, got 0"),
            "{err}"
        );

        for key in ["bos_token_id", "eos_token_id"] {
            let mut config = Preset::Tiny.config().to_hf_json();
            config[key] = serde_json::json!((1u64 << 32) + 2);
            let err = LlamaConfig::from_hf_json(&config.to_string(), "m/config.json").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("m/config.json: {key} is 4294967298, over the limit of 4294967295")
            );
        }
        let mut config = Preset::Tiny.config().to_hf_json();
        config["eos_token_id"] = serde_json::json!([2, 1u64 << 33]);
        assert!(LlamaConfig::from_hf_json(&config.to_string(), "m/config.json").is_err());
    }

    #[test]
    fn round_trips_through_hf_json() {
        let mut c = Preset::TinyGqa.config();
        c.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1024,
        });
        let text = c.to_hf_json().to_string();
        assert_eq!(LlamaConfig::from_hf_json(&text, "x").unwrap(), c);
    }
}
