//! `--vq-tile` end to end: an image decoded in tiles keeps the tile size in its record, `info`
//! says it, and `--from` remakes the same pixels with it; `bench --vq-only` reports the decode's
//! own peak memory.

mod common;

use std::process::Output;

use common::llamagen;

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn record(png: &std::path::Path) -> serde_json::Value {
    let out = ok(
        llamagen()
            .args(["info", "--json"])
            .arg(png)
            .output()
            .unwrap(),
        "info",
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn a_tiled_decode_is_recorded_and_remade_by_from() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, tiled, again) = (
        dir.path().join("whole.png"),
        dir.path().join("tiled.png"),
        dir.path().join("again.png"),
    );
    let generate = |extra: &[&str], out: &std::path::Path| {
        ok(
            llamagen()
                .args([
                    "generate",
                    "--backend",
                    "cpu",
                    "--class",
                    "2",
                    "--seed",
                    "5",
                ])
                .args(extra)
                .arg("--out")
                .arg(out)
                .output()
                .unwrap(),
            "generate",
        )
    };
    generate(&[], &whole);
    // The demo's grid is 8×8 tokens: tiles of 4 overlap by 1.
    generate(&["--vq-tile", "4"], &tiled);
    let r = record(&tiled);
    assert_eq!(r["samples"][0]["vq_tile"], 4);
    assert!(record(&whole)["samples"][0].get("vq_tile").is_none());
    let text = ok(llamagen().arg("info").arg(&tiled).output().unwrap(), "info");
    assert!(String::from_utf8_lossy(&text.stdout).contains("tiles of 4×4 tokens"));
    ok(
        llamagen()
            .args(["generate", "--backend", "cpu", "--from"])
            .arg(&tiled)
            .arg("--out")
            .arg(&again)
            .output()
            .unwrap(),
        "--from",
    );
    let pixels = |p: &std::path::Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(record(&again)["samples"][0]["vq_tile"], 4);
    assert_eq!(
        pixels(&again),
        pixels(&tiled),
        "--from remakes the tiled pixels"
    );
    assert_eq!(
        r["samples"][0]["tokens"],
        record(&whole)["samples"][0]["tokens"],
        "tiling changes the decode, not the tokens"
    );
    assert_ne!(pixels(&tiled), pixels(&whole));
}

#[test]
fn a_tile_of_one_token_is_refused() {
    let out = llamagen()
        .args(["generate", "--class", "0", "--vq-tile", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vq-tile"));
}

#[test]
fn bench_reports_the_decode_peak_of_a_tiled_decode() {
    let out = ok(
        llamagen()
            .args([
                "bench",
                "--vq-only",
                "--vq",
                "VQ-8",
                "--grid",
                "8",
                "--vq-tile",
                "4",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--json",
            ])
            .output()
            .unwrap(),
        "bench",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vq_tile"], 4);
    assert_eq!(v["precision"], "f32");
    let (decode, all) = (
        v["decode_peak_rss_bytes"].as_u64().unwrap(),
        v["peak_rss_bytes"].as_u64().unwrap(),
    );
    assert!(decode > 0 && decode <= all, "{decode} {all}");
}
