//! [`RawSample`] → [`TokenizedSample`]: token ids with their loss mask,
//! truncated to `max_seq_len`.
//!
//! Owns: how each shape is tokenized and which tokens are targets (the
//! convention is in the [module doc](super)), and cutting a long record
//! before tokenizing it to what `max_seq_len` tokens can use
//! ([`fit_to_budget`]). Not here: parsing lines ([`super::jsonl`]),
//! packing ([`super::packing`]) or batches.
//!
//! # Locating assistant turns in a chat
//!
//! The chat template is a black box (any HF Jinja template), so assistant
//! turns are found by rendering, the way TRL and axolotl do it: for each
//! assistant message `i`, render the conversation before it with
//! `add_generation_prompt = true` (text `P_i`, ending where the assistant's
//! reply begins) and the conversation up to and including it (text `Q_i`).
//! Both must be prefixes of the whole rendered conversation (a template that
//! rewrites earlier turns depending on later ones is reported as not
//! incremental); the text between `P_i` and `Q_i` is the assistant turn.
//! The conversation text is cut at these offsets, each piece is tokenized on
//! its own (`add_special = false`, as `apply_chat_template` does), and the
//! pieces' ids are concatenated, so the mask boundaries are exact. (This
//! equals tokenizing the whole text whenever the template puts a special
//! token or a pre-tokenizer boundary at the cut, as ChatML and Llama 3 do.)
//! Within an assistant piece the targets end at its last EOS token when it
//! has one: for ChatML, `content<|im_end|>` are targets and the newline the
//! template writes after `<|im_end|>` is not.

use super::jsonl::RawSample;
use super::{DataOptions, Shape};
use crate::tokenizer::{ChatMessage, TextTokenizer, TokenizerError};

/// One training row: ids and which of them are targets (see the
/// [module doc](super) for the convention).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedSample {
    pub input_ids: Vec<u32>,
    /// `target_mask[t]`: token `t` is predicted from position `t - 1` and
    /// counts in the loss. `target_mask[0]` is always false.
    pub target_mask: Vec<bool>,
    /// Where each original sample starts in this row: `[0]` for an unpacked
    /// sample, one offset per sample for a packed row. A backend that resets
    /// positions or blocks attention between packed samples uses these.
    pub segment_starts: Vec<u32>,
}

impl TokenizedSample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn num_targets(&self) -> usize {
        self.target_mask.iter().filter(|&&t| t).count()
    }
}

/// A tokenized line and whether truncation shortened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub sample: TokenizedSample,
    pub truncated: bool,
}

/// Ids and mask being assembled piece by piece.
#[derive(Default)]
struct Builder {
    ids: Vec<u32>,
    mask: Vec<bool>,
}

impl Builder {
    fn push(&mut self, ids: &[u32], target: bool) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(target, ids.len()));
    }

    fn finish(mut self, max_seq_len: usize) -> Encoded {
        let truncated = self.ids.len() > max_seq_len;
        self.ids.truncate(max_seq_len);
        self.mask.truncate(max_seq_len);
        // A kept sample holds only its tokens, not the capacity that the
        // whole (cut) text needed: a dataset costs 5 bytes a kept token.
        self.ids.shrink_to_fit();
        self.mask.shrink_to_fit();
        if let Some(first) = self.mask.first_mut() {
            *first = false;
        }
        Encoded {
            sample: TokenizedSample {
                input_ids: self.ids,
                target_mask: self.mask,
                segment_starts: vec![0],
            },
            truncated,
        }
    }
}

/// The most text bytes one kept token may stand for: no vocabulary of a
/// Llama-family tokenizer has a longer entry (their longest are runs of
/// spaces or symbols of 64–128 bytes).
const MAX_BYTES_PER_TOKEN: usize = 128;
/// Text kept past `max_seq_len × MAX_BYTES_PER_TOKEN`, so that the word the
/// cut falls in, however long, is tokenized the same as in the whole text
/// as long as it is shorter than this.
const CUT_MARGIN_BYTES: usize = 64 << 10;
/// A chat with more messages than this is also cut by the length of its
/// rendering (the template's markup), not only by its contents.
const MESSAGES_WITHOUT_RENDER_CUT: usize = 64;

/// The bytes of a sample's text that are tokenized: what `max_seq_len`
/// tokens can cover, plus a margin. Text beyond could only give tokens
/// that truncation drops, so tokenizing stays bounded (memory and time)
/// however long a record is. The budget is shared by a sample's texts in
/// order (a prompt, then its completion; a chat's messages).
pub fn tokenized_text_budget(max_seq_len: usize) -> usize {
    max_seq_len
        .saturating_mul(MAX_BYTES_PER_TOKEN)
        .saturating_add(CUT_MARGIN_BYTES)
}

/// Cuts `text` to at most `budget` bytes at a character boundary, giving
/// the rest of its memory back; whether it was cut.
fn cut_text(text: &mut String, budget: usize) -> bool {
    if text.len() <= budget {
        return false;
    }
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.shrink_to_fit();
    true
}

/// Cuts `raw` in place to what `max_seq_len` tokens can use, so that
/// tokenizing it gives the same first `max_seq_len` tokens and mask as
/// tokenizing the whole record (the kept part of a sample is always its
/// start), at a cost bounded by [`tokenized_text_budget`]:
///
/// - `text`: cut to the budget;
/// - `completion`: the prompt cut to the budget, the completion to what the
///   prompt left of it;
/// - `chat`: the contents cut in order to the budget, the messages after
///   the first one cut dropped; and when many messages remain, those that
///   start past the budget in the rendered conversation dropped too (so the
///   template's markup is bounded as well). A template renders the first
///   messages of a conversation as the start of the whole one (what
///   [`chat_pieces`] checks), so what is dropped lies past the budget.
///
/// Cutting again changes nothing. The error (a chat template that fails)
/// is the message part of `FILE:LINE: message`.
pub fn fit_to_budget(
    raw: &mut RawSample,
    tokenizer: &TextTokenizer,
    max_seq_len: usize,
) -> Result<(), String> {
    let budget = tokenized_text_budget(max_seq_len);
    match raw {
        RawSample::Text(text) => {
            cut_text(text, budget);
        }
        RawSample::Completion { prompt, completion } => {
            cut_text(prompt, budget);
            cut_text(completion, budget - prompt.len());
        }
        RawSample::Chat {
            messages,
            untrained,
        } => {
            let mut left = budget;
            if let Some(cut) = messages.iter_mut().position(|m| {
                let was_cut = cut_text(&mut m.content, left);
                left -= m.content.len();
                was_cut
            }) {
                messages.truncate(cut + 1);
            }
            if messages.len() > MESSAGES_WITHOUT_RENDER_CUT {
                let keep = messages_rendered_within(messages, tokenizer, budget)?;
                messages.truncate(keep);
            }
            messages.shrink_to_fit();
            untrained.retain(|&i| i < messages.len());
            untrained.shrink_to_fit();
        }
    }
    Ok(())
}

/// The fewest first messages whose rendering is at least `budget` bytes
/// long (all of them when the whole conversation is shorter): the later
/// ones start past the budget. Renders O(log n) prefixes, none much longer
/// than the budget plus one message.
fn messages_rendered_within(
    messages: &[ChatMessage],
    tokenizer: &TextTokenizer,
    budget: usize,
) -> Result<usize, String> {
    let reaches = |k: usize| -> Result<bool, String> {
        let text = tokenizer
            .render_chat(&messages[..k], false)
            .map_err(|e| e.to_string())?;
        Ok(text.len() >= budget)
    };
    // Double until a prefix reaches the budget, then bisect: `short`
    // messages render shorter than the budget, `long` ones reach it.
    let mut short = 0;
    let mut long = 1;
    loop {
        if long >= messages.len() {
            if !reaches(messages.len())? {
                return Ok(messages.len());
            }
            long = messages.len();
            break;
        }
        if reaches(long)? {
            break;
        }
        short = long;
        long *= 2;
    }
    while long - short > 1 {
        let mid = short + (long - short) / 2;
        if reaches(mid)? {
            long = mid;
        } else {
            short = mid;
        }
    }
    Ok(long)
}

/// The bytes of text `raw` gives the tokenizer, counting a chat's markup
/// as [`CHAT_MARKUP_BYTES`] a message: what loading weighs to bound how
/// much is tokenized at once.
pub fn text_bytes(raw: &RawSample) -> usize {
    match raw {
        RawSample::Text(text) => text.len(),
        RawSample::Completion { prompt, completion } => prompt.len() + completion.len(),
        RawSample::Chat { messages, .. } => messages
            .iter()
            .map(|m| m.content.len() + CHAT_MARKUP_BYTES)
            .sum(),
    }
}

/// What [`text_bytes`] counts for a chat template's markup around a
/// message (ChatML writes 16 bytes plus the role).
pub const CHAT_MARKUP_BYTES: usize = 32;

/// Tokenizes `raw` with its loss mask, cut first by [`fit_to_budget`] to
/// what `max_seq_len` tokens can use. The error is the message part of
/// `FILE:LINE: message`.
pub fn encode_sample(
    mut raw: RawSample,
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> Result<Encoded, String> {
    fit_to_budget(&mut raw, tokenizer, options.max_seq_len)?;
    encode_whole(&raw, tokenizer, options)
}

/// Tokenizes all of `raw`, then truncates.
fn encode_whole(
    raw: &RawSample,
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> Result<Encoded, String> {
    let tok_err = |e: TokenizerError| e.to_string();
    let eos: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    let mut b = Builder::default();
    match raw {
        RawSample::Text(text) => {
            b.push(&tokenizer.encode_prompt(text).map_err(tok_err)?, true);
            b.push(&eos, true);
        }
        RawSample::Completion { prompt, completion } => {
            let prompt_ids = tokenizer.encode_prompt(prompt).map_err(tok_err)?;
            b.push(&prompt_ids, options.train_on_inputs);
            b.push(&tokenizer.encode(completion, false).map_err(tok_err)?, true);
            b.push(&eos, true);
        }
        RawSample::Chat {
            messages,
            untrained,
        } => {
            for (piece, assistant) in chat_pieces(messages, tokenizer)? {
                let ids = tokenizer.encode(&piece, false).map_err(tok_err)?;
                // An assistant turn given `"weight": 0` is never a target.
                if assistant.is_none_or(|i| untrained.binary_search(&i).is_ok()) {
                    b.push(&ids, options.train_on_inputs && assistant.is_none());
                    continue;
                }
                // Targets end at the turn's last EOS; template text after it
                // (ChatML's newline) is not something to learn.
                let end = match tokenizer.eos_id() {
                    Some(e) => ids
                        .iter()
                        .rposition(|&t| t == e)
                        .map_or(ids.len(), |p| p + 1),
                    None => ids.len(),
                };
                b.push(&ids[..end], true);
                b.push(&ids[end..], options.train_on_inputs);
            }
        }
    }
    if b.ids.is_empty() {
        return Err(format!("{} sample has no tokens", raw.shape()));
    }
    Ok(b.finish(options.max_seq_len))
}

/// The rendered conversation cut into pieces, each with the index of the
/// assistant message it is, if it is one (see the module doc).
pub fn chat_pieces(
    messages: &[ChatMessage],
    tokenizer: &TextTokenizer,
) -> Result<Vec<(String, Option<usize>)>, String> {
    let render = |msgs: &[ChatMessage], gen_prompt: bool| {
        tokenizer
            .render_chat(msgs, gen_prompt)
            .map_err(|e| e.to_string())
    };
    let full = render(messages, false)?;
    let mut pieces = Vec::new();
    let mut done = 0; // bytes of `full` already cut into pieces
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&messages[..i], true)?;
        let through = render(&messages[..=i], false)?;
        let incremental = full.starts_with(&before)
            && full.starts_with(&through)
            && before.len() >= done
            && through.len() >= before.len();
        if !incremental {
            return Err(format!(
                "chat template is not incremental: the conversation rendered up to messages[{i}] is not a prefix of the whole one, so the assistant turn cannot be located"
            ));
        }
        if before.len() > done {
            pieces.push((full[done..before.len()].to_string(), None));
        }
        if through.len() > before.len() {
            pieces.push((full[before.len()..through.len()].to_string(), Some(i)));
        }
        done = through.len();
    }
    if full.len() > done {
        pieces.push((full[done..].to_string(), None));
    }
    Ok(pieces)
}

/// Whether `tokenizer` can encode samples of `shape` (a chat needs a template).
pub fn can_encode(shape: Shape, tokenizer: &TextTokenizer) -> bool {
    !matches!(shape, Shape::Chat | Shape::ShareGpt) || tokenizer.chat_template().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(|b| b as u32 + 3).collect()
    }

    fn opts() -> DataOptions {
        DataOptions {
            max_seq_len: 1000,
            ..DataOptions::default()
        }
    }

    #[test]
    fn text_targets_everything_after_the_first_token() {
        let t = TextTokenizer::init_model_default();
        let e = encode_sample(RawSample::Text("hi".into()), &t, &opts()).unwrap();
        assert_eq!(e.sample.input_ids, [bytes("hi"), vec![2]].concat());
        assert_eq!(e.sample.target_mask, [false, true, true]);
        assert!(!e.truncated);
    }

    #[test]
    fn chatml_pieces_split_at_turns() {
        let t = TextTokenizer::init_model_default();
        let msgs = [
            ChatMessage::new("user", "q"),
            ChatMessage::new("assistant", "a"),
        ];
        let pieces = chat_pieces(&msgs, &t).unwrap();
        assert_eq!(
            pieces,
            [
                (
                    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n".to_string(),
                    None
                ),
                ("a<|im_end|>\n".to_string(), Some(1)),
            ]
        );
    }

    #[test]
    fn truncation_keeps_the_head() {
        let t = TextTokenizer::init_model_default();
        let o = DataOptions {
            max_seq_len: 3,
            ..opts()
        };
        let e = encode_sample(RawSample::Text("hello".into()), &t, &o).unwrap();
        assert_eq!(e.sample.input_ids, bytes("hel"));
        assert!(e.truncated);
    }

    /// What encoding the whole sample and then truncating gives.
    fn whole_then_truncated(raw: &RawSample, t: &TextTokenizer, max_seq_len: usize) -> Encoded {
        let mut e = encode_whole(raw, t, &opts()).unwrap();
        e.truncated = e.sample.input_ids.len() > max_seq_len;
        e.sample.input_ids.truncate(max_seq_len);
        e.sample.target_mask.truncate(max_seq_len);
        e
    }

    /// `raw` fitted to `max_seq_len`, and how many text bytes it keeps.
    fn fitted(raw: &RawSample, t: &TextTokenizer, max_seq_len: usize) -> (RawSample, usize) {
        let mut cut = raw.clone();
        fit_to_budget(&mut cut, t, max_seq_len).unwrap();
        let bytes = text_bytes(&cut);
        (cut, bytes)
    }

    #[test]
    fn long_texts_are_cut_before_tokenizing_without_changing_the_sample() {
        let t = TextTokenizer::init_model_default();
        let max_seq_len = 16;
        let budget = tokenized_text_budget(max_seq_len);
        // Three times the budget, with a multi-byte character on the cut.
        let long: String = "ab é".repeat(budget);
        assert!(!long.is_char_boundary(budget) || !long.is_char_boundary(budget + 1));
        let turn = |role: &str, content: &str| ChatMessage::new(role, content);
        let samples = [
            RawSample::Text(long.clone()),
            RawSample::Completion {
                prompt: "q".into(),
                completion: long.clone(),
            },
            RawSample::Completion {
                prompt: long.clone(),
                completion: "a".into(),
            },
            RawSample::chat(vec![turn("user", &long), turn("assistant", &long)]),
            RawSample::chat(vec![turn("user", "q"), turn("assistant", &long)]),
            // Many turns, each under the budget: cut by their sum.
            RawSample::chat(
                (0..40)
                    .map(|i| turn(["user", "assistant"][i % 2], &long[..budget / 8]))
                    .collect(),
            ),
            // Many short turns: cut by the length of their rendering.
            RawSample::chat(
                (0..2_000)
                    .map(|i| turn(["user", "assistant"][i % 2], ["0123456789", "é"][i % 2]))
                    .collect(),
            ),
        ];
        let o = DataOptions {
            max_seq_len,
            ..opts()
        };
        for raw in &samples {
            let (cut, bytes) = fitted(raw, &t, max_seq_len);
            assert!(cut != *raw, "{:?} was not cut", raw.shape());
            assert!(
                bytes <= 2 * budget + 128 * CHAT_MARKUP_BYTES,
                "{:?}: {bytes} bytes left to tokenize",
                raw.shape()
            );
            let (again, _) = fitted(&cut, &t, max_seq_len);
            assert_eq!(again, cut, "cutting again changes nothing");
            let got = encode_sample(raw.clone(), &t, &o).unwrap();
            assert_eq!(
                got,
                whole_then_truncated(raw, &t, max_seq_len),
                "{:?}",
                raw.shape()
            );
            assert!(got.truncated);
        }
        // A short sample is left as it is.
        let short = RawSample::chat(vec![turn("user", "q"), turn("assistant", "a")]);
        assert_eq!(fitted(&short, &t, max_seq_len).0, short);
    }

    #[test]
    fn the_render_cut_keeps_the_fewest_messages_that_reach_the_budget() {
        let t = TextTokenizer::init_model_default();
        let messages: Vec<ChatMessage> = (0..1000)
            .map(|i| ChatMessage::new(["user", "assistant"][i % 2], "abc"))
            .collect();
        let rendered = |k: usize| t.render_chat(&messages[..k], false).unwrap().len();
        for budget in [1, 100, 5_000, rendered(1000), rendered(1000) + 1] {
            let k = messages_rendered_within(&messages, &t, budget).unwrap();
            if budget > rendered(1000) {
                assert_eq!(k, 1000);
            } else {
                assert!(rendered(k) >= budget && (k == 1 || rendered(k - 1) < budget));
            }
        }
    }
}
