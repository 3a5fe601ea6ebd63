//! Text ↔ token ids, special tokens and chat templates.
//!
//! [`TextTokenizer`] wraps a Hugging Face `tokenizers::Tokenizer` together with
//! what `tokenizer_config.json` adds to it: the BOS/EOS tokens and the Jinja
//! chat template, rendered with minijinja the way transformers'
//! `apply_chat_template` does. It is built from a HF folder, from a GGUF
//! file's metadata (see [`gguf`]), or made from scratch for the random models
//! of `init-model` ([`TextTokenizer::byte_level`]). Not here: batching and
//! loss masks (the data pipeline) or sampling (`crate::generate`).

pub mod chat;
pub mod gguf;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub use chat::ChatMessage;

/// Id of `<|endoftext|>` in the tokenizer `init-model` writes (also BOS and padding).
pub const BOS_ID: u32 = 0;
/// Id of `<|im_end|>` in the tokenizer `init-model` writes: the end of a chat turn.
pub const EOS_ID: u32 = 2;

/// The ChatML template written with `init-model` models (the one SmolLM2 uses).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{file}: {message}")]
    Load { file: String, message: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Encode(String),
}

/// The pieces of a tokenizer before they are put together; what loaders produce.
pub struct TokenizerParts {
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether a plain-text prompt starts with BOS (`add_bos_token`).
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// A tokenizer with its special tokens and chat template.
pub struct TextTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl TextTokenizer {
    pub fn from_parts(parts: TokenizerParts) -> TextTokenizer {
        TextTokenizer {
            inner: parts.tokenizer,
            bos: parts.bos,
            eos: parts.eos,
            add_bos: parts.add_bos,
            chat_template: parts.chat_template,
        }
    }

    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` from `dir`.
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer, TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        let file = tok_path.display().to_string();
        if !tok_path.exists() {
            return Err(TokenizerError::Load {
                file,
                message: "not found (a model folder needs tokenizer.json for text prompts)".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| TokenizerError::Load {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let mut parts = TokenizerParts {
            tokenizer,
            bos: None,
            eos: None,
            add_bos: false,
            chat_template: None,
        };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let cfg_file = cfg_path.display().to_string();
            let bad = |message: String| TokenizerError::Load {
                file: cfg_file.clone(),
                message,
            };
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(e.to_string()))?;
            let cfg: Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
            let token_id = |key: &str| -> Option<u32> {
                let content = match cfg.get(key)? {
                    Value::String(s) => s.as_str(),
                    Value::Object(o) => o.get("content")?.as_str()?,
                    _ => return None,
                };
                parts.tokenizer.token_to_id(content)
            };
            parts.bos = token_id("bos_token");
            parts.eos = token_id("eos_token");
            parts.add_bos = cfg
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            parts.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take the default one.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
        }
        if parts.chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if let Ok(text) = std::fs::read_to_string(jinja) {
                parts.chat_template = Some(text);
            }
        }
        Ok(TextTokenizer::from_parts(parts))
    }

    /// A byte-level BPE tokenizer: `specials` first (ids 0..), then the 256
    /// byte symbols, then one symbol per merge in `merges` order.
    pub fn byte_level(
        specials: &[&str],
        merges: &[(String, String)],
    ) -> Result<TextTokenizer, TokenizerError> {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for s in specials {
            let id = vocab.len() as u32;
            vocab.insert(s.to_string(), id);
        }
        for byte in 0..=255u8 {
            let id = vocab.len() as u32;
            vocab.insert(byte_symbol(byte).to_string(), id);
        }
        for (a, b) in merges {
            let id = vocab.len() as u32;
            vocab.entry(format!("{a}{b}")).or_insert(id);
        }
        let parts = byte_level_parts(vocab, merges.to_vec(), specials)?;
        Ok(TextTokenizer::from_parts(parts))
    }

    /// The tokenizer `init-model` writes: ChatML specials, byte-level symbols.
    pub fn init_model_default() -> TextTokenizer {
        let mut t =
            TextTokenizer::byte_level(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"], &[])
                .expect("the built-in byte-level tokenizer is valid");
        t.bos = Some(BOS_ID);
        t.eos = Some(EOS_ID);
        t.chat_template = Some(CHATML_TEMPLATE.to_string());
        t
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_hf(&self, dir: &Path) -> Result<(), TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        self.inner
            .save(&tok_path, true)
            .map_err(|e| TokenizerError::Load {
                file: tok_path.display().to_string(),
                message: e.to_string(),
            })?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "pad_token": name(self.bos),
            "unk_token": null,
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 2048,
            "chat_template": self.chat_template,
        });
        let cfg_path = dir.join("tokenizer_config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).map_err(|e| {
            TokenizerError::Load {
                file: cfg_path.display().to_string(),
                message: e.to_string(),
            }
        })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Encodes plain text as a prompt: BOS first when the model asks for it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode(text, true)?;
        if self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Encodes `text`; `add_special` runs the tokenizer's post-processor.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Renders `messages` with the chat template and encodes the result as
    /// transformers' `apply_chat_template(..., tokenize=True)` does.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// Renders `messages` with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            TokenizerError::Template("the model has no chat template; use a plain prompt".into())
        })?;
        let name = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        chat::render(
            template,
            messages,
            add_generation_prompt,
            &name(self.bos),
            &name(self.eos),
        )
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}

/// Assembles a GPT-2 style byte-level BPE (as SmolLM2 and Llama 3 use) from
/// a vocabulary, its merges and the names of its special tokens.
pub fn byte_level_parts(
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    specials: &[&str],
) -> Result<TokenizerParts, TokenizerError> {
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .build()
        .map_err(|e| TokenizerError::Load {
            file: "byte-level BPE".into(),
            message: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(added)
        .map_err(|e| TokenizerError::Load {
            file: "byte-level BPE".into(),
            message: format!("special tokens: {e}"),
        })?;
    Ok(TokenizerParts {
        tokenizer,
        bos: None,
        eos: None,
        add_bos: false,
        chat_template: None,
    })
}

/// The printable character GPT-2's byte-level BPE uses for `byte`
/// (`bytes_to_unicode` in the GPT-2 sources): printable Latin-1 bytes stand
/// for themselves, the others map to U+0100 onwards in byte order.
pub fn byte_symbol(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).expect("below U+0200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_are_gpt2s() {
        assert_eq!(byte_symbol(b' '), 'Ġ');
        assert_eq!(byte_symbol(b'\n'), 'Ċ');
        assert_eq!(byte_symbol(b'A'), 'A');
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_symbol).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn byte_level_round_trips_any_text() {
        let t = TextTokenizer::init_model_default();
        let text = "Hello, wörld! 🦀\n\tüber";
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        // Specials are single tokens, never split into bytes.
        let ids = t.encode("<|im_start|>user", false).unwrap();
        assert_eq!(ids[0], 1);
    }

    #[test]
    fn saved_tokenizer_reloads_with_specials_and_template() {
        let dir = tempfile::tempdir().unwrap();
        let t = TextTokenizer::init_model_default();
        t.save_hf(dir.path()).unwrap();
        let back = TextTokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(back.bos_id(), Some(BOS_ID));
        assert_eq!(back.eos_id(), Some(EOS_ID));
        let msgs = [ChatMessage::new("user", "hi")];
        assert_eq!(
            back.encode_chat(&msgs, true).unwrap(),
            t.encode_chat(&msgs, true).unwrap()
        );
    }
}
