//! The `llamagen` binary end to end: help, inspect, exit codes.

use std::path::PathBuf;
use std::process::Command;

fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

fn reference_dir() -> PathBuf {
    std::env::var("LLAMAGEN_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/reference")
        })
}

#[test]
fn help_explains_the_commands() {
    let out = llamagen().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("inspect"), "{text}");
    let out = llamagen().args(["inspect", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("--json"),
        "{text}"
    );
}

#[test]
fn inspect_named_configs_prints_exact_parameter_counts() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("param_counts.json")).unwrap(),
    )
    .unwrap();
    let expected = |key: &str| counts["configs"][key]["total_params"].as_u64().unwrap();
    for (args, key) in [
        (vec!["GPT-B"], "GPT-B_c2i_block256"),
        (vec!["GPT-L"], "GPT-L_c2i_block256"),
        (vec!["GPT-XL"], "GPT-XL_c2i_block256"),
        (vec!["GPT-XXL"], "GPT-XXL_c2i_block256"),
        (vec!["GPT-3B"], "GPT-3B_c2i_block256"),
        (vec!["GPT-XL", "--type", "t2i"], "GPT-XL_t2i_block256"),
        (vec!["VQ-16"], "VQ-16"),
        (vec!["VQ-8"], "VQ-8"),
    ] {
        let mut cmd = llamagen();
        cmd.args(["inspect", "--json", "--config"]).args(&args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(v["parameters"].as_u64().unwrap(), expected(key), "{args:?}");
    }
    // The sizes without a reference count still work.
    for name in ["GPT-XXXL", "GPT-1B", "GPT-7B"] {
        let out = llamagen()
            .args(["inspect", "--config", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("parameters"));
    }
}

#[test]
fn inspect_a_checkpoint_file() {
    let path = reference_dir().join("gpt_c2i_gqa.pt");
    let out = llamagen()
        .arg("inspect")
        .arg(&path)
        .args(["--n-head", "4", "--image-size", "64", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "gpt");
    assert_eq!(v["config"]["n_kv_head"], 2);
    assert_eq!(v["weights"], "model");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    let out = llamagen()
        .arg("inspect")
        .arg(reference_dir().join("vq_ds8_tiny.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems found"));
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit_code() {
    let out = llamagen()
        .args(["inspect", "/no/such/file.pt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("/no/such/file.pt"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = llamagen()
        .args(["inspect", "--config", "GPT-Q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown GPT size"));

    // Width 64 is no named size: the error says what to pass.
    let out = llamagen()
        .arg("inspect")
        .arg(reference_dir().join("gpt_c2i_gqa.pt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--n-head"));

    let out = llamagen()
        .arg("inspect")
        .arg(reference_dir().join("patchgan_tiny.pt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a LlamaGen GPT"));
}
