//! `llamagen-studio`'s command line: bad model paths are refused before any window opens.

use std::process::Command;

fn studio(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen-studio"))
        .args(args)
        .env("DISPLAY", "")
        .env("WAYLAND_DISPLAY", "")
        .output()
        .expect("run llamagen-studio");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_checkpoint_is_an_error_with_a_hint() {
    let (code, err) = studio(&[
        "--gpt-ckpt",
        "no/such/c2i_B_256.pt",
        "--vq-ckpt",
        "no/such/vq_ds16_c2i.pt",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: --gpt-ckpt no/such/c2i_B_256.pt"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn a_file_that_is_no_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("vq_ds16_c2i.pt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let gpt = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/demo/gpt.safetensors"
    );
    let (code, err) = studio(&["--gpt-ckpt", gpt, "--vq-ckpt", text.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--vq-ckpt") && err.contains("not a checkpoint"),
        "{err}"
    );
}

#[test]
fn a_generator_needs_its_tokenizer_and_t5_must_be_a_folder() {
    let gpt = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/demo/gpt.safetensors"
    );
    let (code, err) = studio(&["--gpt-ckpt", gpt]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--vq-ckpt"), "{err}");
    let (code, err) = studio(&["--t5", gpt]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a folder") && err.contains("FLAN-T5"),
        "{err}"
    );
    let (code, err) = studio(&["--image-size", "0", "--gpt-ckpt", gpt, "--vq-ckpt", gpt]);
    assert_eq!(code, 2, "{err}");
}
