//! Chat templates: HF's Jinja templates rendered with minijinja.
//!
//! The template sees what transformers gives it: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, and a
//! `raise_exception` function; Python string methods (`.strip()`, ...)
//! come from minijinja-contrib's pycompat layer.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Renders `template` for `messages`.
pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template("chat", template)
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    let tmpl = env.get_template("chat").expect("just added");
    tmpl.render(context! {
        messages => minijinja::Value::from(minijinja::value::Serde(messages)),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TokenizerError::Template(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_like_transformers() {
        let out = render(
            super::super::CHATML_TEMPLATE,
            &[ChatMessage::new("user", "What is 2+2?")],
            true,
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions_work() {
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() }}";
        assert_eq!(
            render(t, &[ChatMessage::new("user", "  x  ")], false, "", "").unwrap(),
            "x"
        );
        let err = render(t, &[ChatMessage::new("system", "x")], false, "", "").unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }
}
