//! The Alpaca shape: `{"instruction", "input", "output"}` read as a
//! completion whose prompt is the Stanford Alpaca template, as Axolotl's
//! `alpaca` type writes it ([`WITH_INPUT`] when the input is not empty,
//! [`WITHOUT_INPUT`] otherwise; an absent or `null` input is empty), so an
//! adapter trained here answers the prompts people already send Alpaca
//! models. The completion is the output. Not here: decoding the JSON
//! (`record`), tokenizing (`format`).

use super::record::{Field, Record};
use super::{Format, RawSample, string_field};

/// The prompt of a record with an input (`{instruction}`, `{input}`).
pub const WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

/// The prompt of a record without one (`{instruction}`).
pub const WITHOUT_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The prompt of `instruction` and `input`.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        WITHOUT_INPUT.replacen("{instruction}", instruction, 1)
    } else {
        // The input goes in after the instruction, so braces in the
        // instruction are never read as a placeholder.
        let (head, tail) = WITH_INPUT
            .split_once("{instruction}")
            .expect("the template names the instruction");
        format!("{head}{instruction}{}", tail.replacen("{input}", input, 1))
    }
}

/// `{"instruction", "input", "output"}` → a completion.
pub(super) fn parse_alpaca(record: Record, format: Format) -> Result<RawSample, String> {
    let near = &record.near_misses;
    let instruction = string_field(record.instruction, "instruction", format, near)?;
    let input = match record.input {
        None | Some(Field::Other("null")) => String::new(),
        Some(Field::Str(s)) => s,
        Some(Field::Other(kind)) => {
            return Err(format!("\"input\" is not a string (got {kind})"));
        }
    };
    let output = string_field(record.output, "output", format, near)?;
    if instruction.trim().is_empty() && input.trim().is_empty() {
        return Err("\"instruction\" is empty".into());
    }
    if output.is_empty() {
        return Err("\"output\" is empty".into());
    }
    Ok(RawSample::Completion {
        prompt: alpaca_prompt(&instruction, &input),
        completion: output,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_record;
    use super::*;
    use crate::data::Shape;

    fn parse(line: &str) -> Result<(Shape, RawSample), String> {
        parse_record(line, Format::Auto)
    }

    fn completion(prompt: &str, completion: &str) -> (Shape, RawSample) {
        let (prompt, completion) = (prompt.into(), completion.into());
        (Shape::Alpaca, RawSample::Completion { prompt, completion })
    }

    #[test]
    fn the_prompt_is_the_alpaca_template() {
        assert_eq!(
            parse(r#"{"instruction": "Add.", "input": "2 3", "output": "5"}"#).unwrap(),
            completion(
                "Below is an instruction that describes a task, paired with an input that provides \
                 further context. Write a response that appropriately completes the request.\n\n\
                 ### Instruction:\nAdd.\n\n### Input:\n2 3\n\n### Response:\n",
                "5"
            )
        );
        // Braces in a record are text, not placeholders.
        assert_eq!(
            alpaca_prompt("Fill {input}.", "{instruction}"),
            WITH_INPUT
                .replacen("{instruction}", "Fill {input}.", 1)
                .replacen("### Input:\n{input}", "### Input:\n{instruction}", 1)
        );
        for input in [r#""input": "", "#, r#""input": null, "#, ""] {
            assert_eq!(
                parse(&format!(
                    r#"{{"instruction": "Hi.", {input}"output": "Hello"}}"#
                ))
                .unwrap(),
                completion(&alpaca_prompt("Hi.", ""), "Hello")
            );
        }
    }

    #[test]
    fn bad_records_name_the_field() {
        let err = |line: &str| parse(line).unwrap_err();
        assert_eq!(
            err(r#"{"instrution": "Add.", "input": "", "output": "5"}"#),
            "no \"instruction\" key; did you mean \"instruction\" for \"instrution\"?"
        );
        assert_eq!(err(r#"{"instruction": "Add."}"#), "no \"output\" key");
        assert_eq!(
            err(r#"{"instruction": "Add.", "input": 2, "output": "5"}"#),
            "\"input\" is not a string (got a number)"
        );
        assert_eq!(
            err(r#"{"instruction": "Add.", "output": ""}"#),
            "\"output\" is empty"
        );
        assert_eq!(
            err(r#"{"instruction": " ", "input": "", "output": "5"}"#),
            "\"instruction\" is empty"
        );
        assert_eq!(
            err(r#"{"instruction": "Add.", "output": "5", "text": "x"}"#),
            "ambiguous shape: has both \"text\" and \"instruction\" keys (set format to pick one)"
        );
        assert_eq!(
            parse_record(r#"{"text": "x"}"#, Format::Alpaca).unwrap_err(),
            "no \"instruction\" key (format: alpaca)"
        );
    }
}
