//! The tokenizer embedded in a llama.cpp GGUF file, rebuilt as a Hugging
//! Face `tokenizers::Tokenizer`.
//!
//! The GGUF loader (`crate::model::gguf`) copies the `tokenizer.*` metadata
//! into a plain [`GgufVocab`]; [`parts_from_gguf`] turns it into
//! [`TokenizerParts`]. Only the byte-level BPE (`tokenizer.ggml.model =
//! gpt2`, as SmolLM2 and Llama 3 use) is supported, with the pre-tokenizers
//! of the `tokenizer.ggml.pre` values listed in [`SUPPORTED_PRE`]. Not here:
//! reading GGUF files, SentencePiece vocabularies, chat rendering (`chat`).

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{TokenizerError, TokenizerParts};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The `tokenizer.ggml.pre` values understood, for error messages.
pub const SUPPORTED_PRE: &str =
    "default, gpt2, smollm, starcoder, refact, llama-bpe, llama3, llama-v3";

/// The Llama 3 split regex (HF `tokenizer.json`, llama.cpp `LLAMA3`).
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.*` metadata of a GGUF file, as plain data.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer splits text before BPE.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token; empty when absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, in priority order.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`, when the file says.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// How text is split before BPE, per `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizerKind {
    /// GPT-2's regex inside ByteLevel.
    Gpt2,
    /// Every digit alone, then GPT-2's regex (SmolLM, StarCoder).
    IndividualDigits,
    /// The Llama 3 regex, then ByteLevel without its own regex; whole-word
    /// vocabulary hits skip the merges (`ignore_merges`).
    Llama3,
}

impl PreTokenizerKind {
    fn parse(pre: Option<&str>) -> Option<PreTokenizerKind> {
        match pre.unwrap_or("default") {
            "default" | "gpt2" | "gpt-2" => Some(PreTokenizerKind::Gpt2),
            "smollm" | "starcoder" | "refact" => Some(PreTokenizerKind::IndividualDigits),
            "llama-bpe" | "llama3" | "llama-v3" => Some(PreTokenizerKind::Llama3),
            _ => None,
        }
    }

    fn build(self) -> Result<PreTokenizerWrapper, String> {
        Ok(match self {
            PreTokenizerKind::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreTokenizerKind::IndividualDigits => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            PreTokenizerKind::Llama3 => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_SPLIT_REGEX.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| format!("the Llama 3 split regex does not compile: {e}"))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
        })
    }
}

/// Builds the byte-level BPE tokenizer a GGUF file describes. `file` names
/// the GGUF file in errors.
pub fn parts_from_gguf(vocab: &GgufVocab, file: &str) -> Result<TokenizerParts, TokenizerError> {
    let bad = |message: String| TokenizerError::Load {
        file: file.to_string(),
        message,
    };
    if vocab.model != "gpt2" {
        return Err(bad(format!(
            "tokenizer.ggml.model {:?} is not supported (expected \"gpt2\", a byte-level BPE)",
            vocab.model
        )));
    }
    let pre_kind = PreTokenizerKind::parse(vocab.pre.as_deref()).ok_or_else(|| {
        bad(format!(
            "tokenizer.ggml.pre {:?} is not supported (expected one of: {SUPPORTED_PRE})",
            vocab.pre.as_deref().unwrap_or_default()
        ))
    })?;
    if vocab.tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens is empty".into()));
    }
    if !vocab.token_types.is_empty() && vocab.token_types.len() != vocab.tokens.len() {
        return Err(bad(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            vocab.token_types.len(),
            vocab.tokens.len()
        )));
    }
    for (key, id) in [("bos", vocab.bos), ("eos", vocab.eos)] {
        if let Some(id) = id
            && id as usize >= vocab.tokens.len()
        {
            return Err(bad(format!(
                "tokenizer.ggml.{key}_token_id {id} is outside the vocabulary of {} tokens",
                vocab.tokens.len()
            )));
        }
    }

    // A token spelled twice keeps its first id, as llama.cpp's text lookup does.
    let mut ids: HashMap<String, u32> = HashMap::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        ids.entry(token.clone()).or_insert(id as u32);
    }
    let merges = vocab
        .merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    bad(format!(
                        "tokenizer.ggml.merges[{i}] {merge:?} is not \"left right\""
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let bpe = BPE::builder()
        .vocab_and_merges(
            ids.into_iter().collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .ignore_merges(pre_kind == PreTokenizerKind::Llama3)
        .build()
        .map_err(|e| bad(format!("byte-level BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_kind.build().map_err(bad)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    let specials: Vec<AddedToken> = vocab
        .tokens
        .iter()
        .enumerate()
        .filter_map(|(id, token)| {
            let token_type = vocab.token_types.get(id).copied();
            let is_special = is_special_token(token, token_type)
                || Some(id as u32) == vocab.bos
                || Some(id as u32) == vocab.eos;
            let is_added = is_special || token_type == Some(TOKEN_TYPE_USER_DEFINED);
            is_added.then(|| AddedToken::from(token.clone(), is_special))
        })
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| bad(format!("special tokens: {e}")))?;

    let add_bos = vocab
        .add_bos
        .unwrap_or(pre_kind == PreTokenizerKind::Llama3);
    Ok(TokenizerParts {
        tokenizer,
        bos: vocab.bos,
        eos: vocab.eos,
        add_bos,
        chat_template: vocab.chat_template.clone(),
    })
}

/// Control tokens are special; so are user-defined (or, without token types,
/// any) tokens spelled like a tag: `<|im_start|>`, `<repo_name>`.
fn is_special_token(token: &str, token_type: Option<i32>) -> bool {
    let tag_like = token.len() > 2 && token.starts_with('<') && token.ends_with('>');
    match token_type {
        Some(TOKEN_TYPE_CONTROL) => true,
        Some(TOKEN_TYPE_USER_DEFINED) | None => tag_like,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, the 256 byte symbols,
    /// then the merges `Ġ t`, `h e`, `Ġt he`, `1 2`.
    fn tiny_vocab(pre: &str) -> GgufVocab {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(String::from)
            .to_vec();
        let mut token_types = vec![TOKEN_TYPE_CONTROL; 3];
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        tokens.extend(alphabet.iter().map(char::to_string));
        let merges = ["Ġ t", "h e", "Ġt he", "1 2"].map(String::from).to_vec();
        tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
        token_types.resize(tokens.len(), TOKEN_TYPE_NORMAL);
        GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types,
            merges,
            bos: Some(1),
            eos: Some(2),
            add_bos: Some(false),
            chat_template: Some("{{ messages }}".into()),
        }
    }

    fn encode(parts: &TokenizerParts, text: &str) -> Vec<u32> {
        parts
            .tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    fn token_id(vocab: &GgufVocab, token: &str) -> u32 {
        vocab.tokens.iter().position(|t| t == token).unwrap() as u32
    }

    #[test]
    fn builds_byte_level_bpe_with_single_token_specials() {
        let vocab = tiny_vocab("smollm");
        let parts = parts_from_gguf(&vocab, "m.gguf").unwrap();
        assert_eq!(
            (parts.bos, parts.eos, parts.add_bos),
            (Some(1), Some(2), false)
        );
        assert_eq!(parts.chat_template.as_deref(), Some("{{ messages }}"));

        let ids = encode(&parts, "<|im_start|>user the<|im_end|>");
        assert_eq!(ids[0], 1);
        assert_eq!(ids[ids.len() - 1], 2);
        assert!(ids.contains(&token_id(&vocab, "Ġthe")));

        let text = "<|im_start|>Hi, wörld 🦀\n the 123<|im_end|>";
        let ids = encode(&parts, text);
        assert_eq!(parts.tokenizer.decode(&ids, false).unwrap(), text);
        let plain = parts.tokenizer.decode(&ids, true).unwrap();
        assert_eq!(plain, "Hi, wörld 🦀\n the 123");
    }

    #[test]
    fn smollm_splits_digits_but_gpt2_merges_them() {
        let one_two = token_id(&tiny_vocab("gpt2"), "12");
        let digits = parts_from_gguf(&tiny_vocab("smollm"), "m.gguf").unwrap();
        assert!(!encode(&digits, "12").contains(&one_two));
        let gpt2 = parts_from_gguf(&tiny_vocab("gpt2"), "m.gguf").unwrap();
        assert_eq!(encode(&gpt2, "12"), [one_two]);
    }

    #[test]
    fn llama3_pre_tokenizer_groups_three_digits_and_adds_bos_by_default() {
        let mut vocab = tiny_vocab("llama-bpe");
        vocab.add_bos = None;
        let parts = parts_from_gguf(&vocab, "m.gguf").unwrap();
        assert!(parts.add_bos);
        let text = "12345 the\n\n  x";
        let ids = encode(&parts, text);
        assert_eq!(parts.tokenizer.decode(&ids, false).unwrap(), text);
        assert_eq!(ids[0], token_id(&vocab, "12"));
    }

    #[test]
    fn unsupported_models_and_bad_metadata_are_named() {
        let mut vocab = tiny_vocab("smollm");
        vocab.model = "llama".into();
        let err = parts_from_gguf(&vocab, "m.gguf").err().unwrap().to_string();
        assert!(
            err.starts_with("m.gguf: tokenizer.ggml.model \"llama\" is not supported"),
            "{err}"
        );

        let vocab = tiny_vocab("qwen2");
        let err = parts_from_gguf(&vocab, "m.gguf").err().unwrap().to_string();
        assert!(
            err.contains("tokenizer.ggml.pre \"qwen2\" is not supported"),
            "{err}"
        );

        let mut vocab = tiny_vocab("smollm");
        vocab.merges.push("nospace".into());
        let err = parts_from_gguf(&vocab, "m.gguf").err().unwrap().to_string();
        assert!(
            err.contains("tokenizer.ggml.merges[4] \"nospace\""),
            "{err}"
        );

        let mut vocab = tiny_vocab("smollm");
        vocab.token_types.pop();
        let err = parts_from_gguf(&vocab, "m.gguf").err().unwrap().to_string();
        assert!(err.contains("token_type has"), "{err}");

        let mut vocab = tiny_vocab("smollm");
        vocab.eos = Some(100_000);
        let err = parts_from_gguf(&vocab, "m.gguf").err().unwrap().to_string();
        assert!(err.contains("eos_token_id 100000 is outside"), "{err}");
    }
}
