//! Hostile inputs: absurd numbers in specs and model configs. Each is one
//! clear error naming the field and its bound (exit 2), before anything is
//! allocated, stored or sent.

use crate::common::fleet::{Fleet, text};
use crate::common::{lorafleet, spec_in};

#[test]
fn an_absurd_layer_count_in_config_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let out = lorafleet(&[
        "init-model",
        "--preset",
        "tiny",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = serde_json::json!(1u64 << 30);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let expected = "num_hidden_layers is 1073741824, over the limit of 1024";
    let out = lorafleet(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
    // A spec training on it says the same at validate.
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| {
        t.replace("  preset: tiny", &format!("  path: {}", model.display()))
    });
    let out = lorafleet(&["validate", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_step_count_past_the_bound_is_refused_at_validate_and_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 18446744073709551615")
    });
    let spec = spec.to_str().unwrap();
    let expected = "training.max_steps: must be at most 1000000000, got 18446744073709551615";
    let out = lorafleet(&["validate", spec]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );

    let fleet = Fleet::serve(
        &tmp.path().join("state.db"),
        "127.0.0.1:0",
        None,
        "bounds-token",
    );
    let out = fleet.cli(Some(&fleet.token), &["submit", spec]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
    // Sent anyway, the coordinator refuses it the same way (not INTERNAL).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = crate::lab::connect(&runtime, &fleet.url, &fleet.token);
    let request = crate::lab::submit_request(&std::fs::read_to_string(spec).unwrap(), tmp.path());
    let refused = runtime.block_on(conn.jobs().submit(request)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(expected),
        "{}",
        refused.message()
    );
}
