//! The Alpaca shape: `{"instruction", "input", "output"}` read as a
//! completion. The prompt is the instruction, followed by `"\n\n"` and the
//! input when the input is not empty (an absent or `null` input is empty);
//! the completion is the output, which follows the prompt directly, as in
//! the completion shape. Not here: decoding the JSON (`record`),
//! tokenizing (`format`).

use super::record::{Field, Record};
use super::{Format, RawSample, string_field};

/// What separates the instruction from a non-empty input in the prompt.
const INPUT_SEPARATOR: &str = "\n\n";

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
    let prompt = if input.is_empty() {
        instruction
    } else {
        let mut prompt = instruction;
        prompt.reserve_exact(INPUT_SEPARATOR.len() + input.len());
        prompt.push_str(INPUT_SEPARATOR);
        prompt.push_str(&input);
        prompt
    };
    Ok(RawSample::Completion {
        prompt,
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
    fn the_input_follows_the_instruction_after_a_blank_line() {
        assert_eq!(
            parse(r#"{"instruction": "Add.", "input": "2 3", "output": "5"}"#).unwrap(),
            completion("Add.\n\n2 3", "5")
        );
        for input in [r#""input": "", "#, r#""input": null, "#, ""] {
            assert_eq!(
                parse(&format!(
                    r#"{{"instruction": "Hi.", {input}"output": "Hello"}}"#
                ))
                .unwrap(),
                completion("Hi.", "Hello")
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
