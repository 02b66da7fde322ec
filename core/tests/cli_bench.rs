//! `llamagen bench`'s tokenizer timings: `--vq-only`, `--image-size`, and the encode time
//! beside the decode time.

use std::process::{Command, Output};

fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn vq_only_times_decode_and_encode_of_the_tokenizer_alone() {
    let v = json(
        &llamagen()
            .args(["bench", "--vq-only", "--vq", "VQ-16", "--image-size", "64"])
            .args(["--batch", "2", "--warmup", "0", "--runs", "1", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["image_size"], 64);
    assert_eq!(v["grid"], 4);
    assert_eq!(v["batch"], 2);
    for key in ["vq_decode_seconds", "vq_encode_seconds"] {
        let s = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
        assert!(s > 0.0, "{key} {s}");
    }
    let per_s = v["decode_images_per_s"].as_f64().unwrap();
    let s = v["vq_decode_seconds"].as_f64().unwrap();
    assert!(
        (per_s * s - 2.0).abs() < 1e-6,
        "{per_s} images/s over {s} s"
    );
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1_000_000, "{v}");
    }
}

#[test]
fn a_generation_bench_reports_the_encode_beside_the_decode() {
    let v = json(
        &llamagen()
            .args(["bench", "--config", "GPT-B", "--grid", "2", "--batch", "1"])
            .args(["--backend", "cpu", "--warmup", "0", "--json"])
            .output()
            .unwrap(),
    );
    assert!(v["vq_decode_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["vq_encode_seconds"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn an_image_size_the_tokenizer_cannot_tile_is_refused() {
    let out = llamagen()
        .args(["bench", "--vq-only", "--vq", "VQ-16", "--image-size", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("multiple of VQ-16's downsampling (16"),
        "{err}"
    );
    let out = llamagen()
        .args(["bench", "--vq-only", "--grid", "4", "--image-size", "64"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--grid and --image-size together");
}
