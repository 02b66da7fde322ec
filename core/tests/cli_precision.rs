//! `--precision` end to end: what inspect and bench say about the weights' bytes, the record a
//! half-precision image keeps and `--from` reuses, and the refusals.

use std::process::{Command, Output};

fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn inspect_says_the_weights_bytes_of_each_precision() {
    let bytes = |p: &str| {
        let out = ok(
            llamagen()
                .args(["inspect", "--config", "GPT-XL", "--json", "--precision", p])
                .output()
                .unwrap(),
            p,
        );
        let v = json(&out);
        assert_eq!(v["precision"], p);
        (
            v["weights_bytes"].as_u64().unwrap(),
            v["parameters"].as_u64().unwrap(),
        )
    };
    let (f32_bytes, params) = bytes("f32");
    assert_eq!(f32_bytes, params * 4);
    let (f16_bytes, _) = bytes("f16");
    assert_eq!(f16_bytes, params * 2);
    assert!(f16_bytes <= 1_600_000_000, "GPT-XL in f16: {f16_bytes}");
    assert_eq!(bytes("bf16").0, f16_bytes);

    let out = llamagen()
        .args(["inspect", "--config", "GPT-B", "--precision", "auto"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auto depends on the device"));
}

#[test]
fn bench_loads_the_weights_in_the_precision_asked() {
    let run = |p: &str| {
        json(&ok(
            llamagen()
                .args(["bench", "--config", "GPT-B", "--grid", "2", "--batch", "1"])
                .args([
                    "--backend",
                    "cpu",
                    "--warmup",
                    "0",
                    "--json",
                    "--precision",
                    p,
                ])
                .output()
                .unwrap(),
            p,
        ))
    };
    let full = run("f32");
    let half = run("bf16");
    assert_eq!(half["precision"], "bf16");
    let (a, b) = (
        full["weights_bytes"].as_u64().unwrap(),
        half["weights_bytes"].as_u64().unwrap(),
    );
    // The CPU keeps the norms' weights in f32: a little more than half.
    assert!(b * 2 >= a && b * 2 < a + a / 100, "f32 {a} bytes, bf16 {b}");
}

#[test]
fn a_half_precision_image_records_it_and_is_remade_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("star.png");
    ok(
        llamagen()
            .args([
                "generate",
                "--class",
                "0",
                "--seed",
                "3",
                "--backend",
                "cpu",
            ])
            .args(["--precision", "f16", "--out"])
            .arg(&png)
            .output()
            .unwrap(),
        "generate",
    );
    let info = |p: &std::path::Path| {
        json(&ok(
            llamagen().args(["info", "--json"]).arg(p).output().unwrap(),
            "info",
        ))
    };
    let first = info(&png);
    assert_eq!(first["samples"][0]["precision"], "f16");
    let again = dir.path().join("again.png");
    let out = ok(
        llamagen()
            .args(["generate", "--backend", "cpu", "--from"])
            .arg(&png)
            .arg("--out")
            .arg(&again)
            .output()
            .unwrap(),
        "--from",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("f16"));
    let second = info(&again);
    assert_eq!(second["samples"][0]["precision"], "f16");
    assert_eq!(
        first["samples"][0]["tokens"], second["samples"][0]["tokens"],
        "the same seed and precision give the same tokens"
    );
}

#[test]
fn a_precision_the_backend_cannot_run_is_refused_with_a_hint() {
    // burn's wgpu backend has no bf16 arithmetic (the adapter does not matter).
    let out = llamagen()
        .args([
            "generate",
            "--class",
            "0",
            "--backend",
            "wgpu",
            "--precision",
            "bf16",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot compute in bf16"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn a_quantized_generator_is_saved_and_loads_without_requantizing() {
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("gpt-q8.safetensors");
    let vq = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/vq.safetensors");
    ok(
        llamagen()
            .args(["quantize", "--quantize", "q8", "--out"])
            .arg(&q8)
            .output()
            .unwrap(),
        "quantize",
    );
    // Against the generator's values in f32 (the bundled file may hold them in 16 bits).
    let demo = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/gpt.safetensors"),
    )
    .unwrap();
    let demo: usize = safetensors::SafeTensors::deserialize(&demo)
        .unwrap()
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>() * 4)
        .sum();
    let saved = std::fs::metadata(&q8).unwrap().len() as usize;
    assert!(saved < demo * 6 / 10, "q8 file {saved} bytes, f32 {demo}");

    // The saved file against quantizing at load: the same values, so the same tokens.
    let from_file = dir.path().join("file.png");
    let out = ok(
        llamagen()
            .args(["generate", "--gpt-ckpt"])
            .arg(&q8)
            .arg("--vq-ckpt")
            .arg(&vq)
            .args([
                "--image-size",
                "64",
                "--class",
                "0",
                "--seed",
                "3",
                "--backend",
                "cpu",
                "--out",
            ])
            .arg(&from_file)
            .output()
            .unwrap(),
        "generate from the q8 file",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("linear layers q8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at_load = dir.path().join("load.png");
    ok(
        llamagen()
            .args([
                "generate",
                "--class",
                "0",
                "--seed",
                "3",
                "--backend",
                "cpu",
            ])
            .args(["--quantize", "q8", "--out"])
            .arg(&at_load)
            .output()
            .unwrap(),
        "generate --quantize q8",
    );
    let tokens = |p: &std::path::Path| {
        let v = json(&ok(
            llamagen().args(["info", "--json"]).arg(p).output().unwrap(),
            "info",
        ));
        assert_eq!(v["samples"][0]["quantize"], "q8");
        v["samples"][0]["tokens"].clone()
    };
    assert_eq!(tokens(&from_file), tokens(&at_load));

    // A file's quantization is not changed at load.
    let out = llamagen()
        .args(["generate", "--gpt-ckpt"])
        .arg(&q8)
        .arg("--vq-ckpt")
        .arg(&vq)
        .args([
            "--image-size",
            "64",
            "--class",
            "0",
            "--backend",
            "cpu",
            "--quantize",
            "q4",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be quantized again"), "{err}");

    // inspect reads the quantized file and finds nothing missing.
    let out = ok(
        llamagen().arg("inspect").arg(&q8).output().unwrap(),
        "inspect",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems found"));
}
