//! `llamagen generate` end to end: the bundled demo by default, a random pair written as
//! safetensors, records and `--from`, a run killed half-way, the backend choice.

mod common;

use common::{llamagen, remake, tiny_models};
use std::path::PathBuf;

fn run(args: &[&str]) -> std::process::Output {
    llamagen().args(args).output().unwrap()
}

/// Runs `args`, which must succeed (its stderr shown otherwise).
fn run_ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The record `llamagen info --json` reads from a PNG.
fn record_of(png: &str) -> serde_json::Value {
    let info = run(&["info", png, "--json"]);
    assert!(info.status.success());
    serde_json::from_slice(&info.stdout).unwrap()
}

#[test]
fn generate_info_and_reproduce_from_png() {
    let dir = tempfile::tempdir().unwrap();
    let (gpt, vq) = tiny_models(dir.path(), 64);
    let (gpt, vq) = (gpt.to_str().unwrap(), vq.to_str().unwrap());
    let out_dir = dir.path().join("out");
    let common = [
        "--gpt-ckpt",
        gpt,
        "--vq-ckpt",
        vq,
        "--n-head",
        "4",
        "--image-size",
        "16",
        "--backend",
        "cpu",
    ];
    let mut args = vec!["generate"];
    args.extend(common);
    args.extend([
        "--class",
        "3",
        "--class",
        "7",
        "--num",
        "2",
        "--seed",
        "5",
        "--batch-size",
        "3",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files[0].ends_with("0000-3-seed5.png") && files[3].ends_with("0003-7-seed8.png"),
        "{files:?}"
    );

    // The same command again: the folder's numbers go on, nothing earlier is replaced.
    let before = std::fs::read(&files[0]).unwrap();
    let out = run(&args);
    assert!(out.status.success());
    let more: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        more[0].ends_with("0004-3-seed5.png") && more[3].ends_with("0007-7-seed8.png"),
        "{more:?}"
    );
    assert_eq!(std::fs::read(&files[0]).unwrap(), before);
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 8);

    let record = record_of(&files[2]);
    let sample = &record["samples"][0];
    assert_eq!(sample["class"], 7);
    assert_eq!(sample["params"]["seed"], 7);
    assert_eq!(sample["params"]["cfg_scale"], 4.0);
    // No model card: the official sampler's defaults.
    assert_eq!(sample["params"]["top_k"], 2000);
    assert_eq!(sample["tokens"].as_array().unwrap().len(), 16);

    // --from regenerates the same image, pixel for pixel.
    let again = dir.path().join("again.png");
    let again_s = again.to_str().unwrap();
    run_ok(&[
        "generate",
        "--from",
        &files[2],
        "--backend",
        "cpu",
        "--out",
        again_s,
    ]);
    let record2 = record_of(again_s);
    assert_eq!(record2["samples"][0]["params"], sample["params"]);
    assert_eq!(record2["samples"][0]["tokens"], sample["tokens"]);
    let a = image::open(&files[2]).unwrap().to_rgb8();
    let b = image::open(&again).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (16, 16));
    assert_eq!(a, b);

    // Sampler options beside --from replace the PNG's; the rest (seed, class) stays.
    let other = dir.path().join("other.png");
    let other_s = other.to_str().unwrap();
    run_ok(&[
        "generate",
        "--from",
        &files[2],
        "--cfg-scale",
        "1.5",
        "--top-k",
        "3",
        "--backend",
        "cpu",
        "--out",
        other_s,
    ]);
    let record3 = record_of(other_s);
    let params = &record3["samples"][0]["params"];
    assert_eq!(params["cfg_scale"], 1.5);
    assert_eq!(params["top_k"], 3);
    assert_eq!(params["seed"], 7);
    assert_eq!(params["temperature"], sample["params"]["temperature"]);
    assert_eq!(record3["samples"][0]["class"], 7);

    // One grid file with every sample recorded.
    let grid = dir.path().join("grid.png");
    let mut args = vec!["generate"];
    args.extend(common);
    args.extend([
        "--class",
        "1",
        "--num",
        "4",
        "--seed",
        "1",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(run(&args).status.success());
    let info = run(&["info", grid.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert_eq!(text.matches("class: 1").count(), 4, "{text}");
}

#[test]
fn from_refuses_a_png_made_by_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let (gpt, vq) = tiny_models(dir.path(), 64);
    let (gpt_s, vq_s) = (gpt.to_str().unwrap(), vq.to_str().unwrap());
    let png = dir.path().join("one.png");
    let png_s = png.to_str().unwrap();
    run_ok(&[
        "generate",
        "--gpt-ckpt",
        gpt_s,
        "--vq-ckpt",
        vq_s,
        "--n-head",
        "4",
        "--image-size",
        "16",
        "--backend",
        "cpu",
        "--class",
        "2",
        "--seed",
        "3",
        "--out",
        png_s,
    ]);
    let record = record_of(png_s);
    assert!(
        record["samples"][0]["gpt"]["fingerprint"].is_string(),
        "{record}"
    );
    // The generator retrained in place: the same file name and size, other weights (the last
    // values of its data changed).
    let mut bytes = std::fs::read(&gpt).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 16..] {
        *b ^= 0x01;
    }
    std::fs::write(&gpt, &bytes).unwrap();
    let again = dir.path().join("again.png");
    let again_s = again.to_str().unwrap();
    let out = run(&[
        "generate",
        "--from",
        png_s,
        "--backend",
        "cpu",
        "--out",
        again_s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("was made by another generator"), "{err}");
    assert!(err.contains("fingerprint"), "{err}");
    assert!(err.contains("--any-model"), "{err}");
    assert!(!again.exists(), "nothing is written");
    // Asked for, it draws the recorded settings with the model it has.
    run_ok(&[
        "generate",
        "--from",
        png_s,
        "--any-model",
        "--backend",
        "cpu",
        "--out",
        again_s,
    ]);
    assert_eq!(record_of(again_s)["samples"][0]["params"]["seed"], 3);
}

#[test]
fn bad_generate_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (gpt, vq) = tiny_models(dir.path(), 64);
    let (_, vq32) = {
        let sub = dir.path().join("small");
        std::fs::create_dir_all(&sub).unwrap();
        tiny_models(&sub, 32)
    };
    let (gpt, vq, vq32) = (
        gpt.to_str().unwrap(),
        vq.to_str().unwrap(),
        vq32.to_str().unwrap(),
    );
    let base = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--gpt-ckpt",
            gpt,
            "--vq-ckpt",
            vq,
            "--n-head",
            "4",
            "--image-size",
            "16",
            "--backend",
            "cpu",
        ];
        a.extend_from_slice(extra);
        a.push("--out");
        a.push("/dev/null/never.png");
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (extra, expect) in [
        (vec!["--class", "10"], "out of range"),
        (vec!["--class", "zebra"], "unknown class"),
        (vec!["--class", "1", "--top-k", "-1"], "--top-k"),
        (vec!["--class", "1", "--temperature", "0"], "temperature"),
        (vec!["--class", "1", "--top-p", "1.5"], "top-p"),
        (vec!["--class", "1", "--cfg-scale", "-2"], "cfg-scale"),
        (vec!["--class", "1", "--precision", "f8"], "precision"),
        (vec![], "--class"),
    ] {
        let out = llamagen().args(base(&extra)).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("stopped unexpectedly"),
            "{extra:?}: {err}"
        );
    }
    // Outputs that cannot be written are refused before any sampling, saying why.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let mut in_a_file = base(&["--class", "1"]);
    in_a_file.pop();
    in_a_file.push(blocker.join("x.png").display().to_string());
    let mut jpeg = base(&["--class", "1"]);
    jpeg.pop();
    jpeg.push(dir.path().join("x.jpg").display().to_string());
    let mut dir_in_a_file = base(&["--class", "1"]);
    dir_in_a_file.truncate(dir_in_a_file.len() - 2);
    dir_in_a_file.push("--out-dir".into());
    dir_in_a_file.push(blocker.join("sub").display().to_string());
    for (args, expect) in [
        (in_a_file, "cannot make the output folder"),
        (jpeg, "writes PNG files"),
        (dir_in_a_file, "cannot make the output folder"),
    ] {
        let out = llamagen().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("generated"), "{args:?}: {err}");
    }
    assert!(!dir.path().join("x.jpg").exists());

    // Tokenizer and generator that do not fit together.
    let out = run(&[
        "generate",
        "--gpt-ckpt",
        gpt,
        "--vq-ckpt",
        vq32,
        "--n-head",
        "4",
        "--image-size",
        "16",
        "--class",
        "1",
        "--backend",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("codebook has 32 entries"),
        "{err}"
    );
    // An image size the tokenizer cannot make.
    let out = run(&[
        "generate",
        "--gpt-ckpt",
        gpt,
        "--vq-ckpt",
        vq,
        "--n-head",
        "4",
        "--image-size",
        "18",
        "--class",
        "1",
        "--backend",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("downsampling"),
        "{err}"
    );
    // One checkpoint without the other (none at all means the bundled demo model).
    let out = run(&[
        "generate",
        "--class",
        "1",
        "--gpt-ckpt",
        gpt,
        "--backend",
        "cpu",
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--vq-ckpt"));
}

/// With no checkpoint options, a prompt goes to the bundled text demo (assets/demo-text) and
/// its own encoder; `--from` remakes the image without --t5, the card naming the encoder.
#[test]
fn a_prompt_uses_the_bundled_text_demo_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("star.png");
    let prompt = "a yellow star on a blue background";
    let out = llamagen()
        .args([
            "generate",
            "--prompt",
            prompt,
            "--seed",
            "2",
            "--backend",
            "cpu",
        ])
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("demo-text"), "{err}");
    let info = llamagen().arg("info").arg(&png).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains(prompt));
    // The text demo shares the class demo's tokenizer: both named by their place in the assets.
    assert!(
        text.contains("bundled:demo-text/gpt.safetensors")
            && text.contains("tokenizer: bundled:demo/vq.safetensors"),
        "{text}"
    );
    let again = dir.path().join("again.png");
    assert!(remake(&png, &again).status.success());
    assert_eq!(
        image::open(&png).unwrap().to_rgb8(),
        image::open(&again).unwrap().to_rgb8()
    );
}

/// With no checkpoint options, `generate` uses the bundled demo model in assets/demo.
#[test]
fn generate_uses_the_bundled_demo_model_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("star.png");
    let out = llamagen()
        .args([
            "generate",
            "--class",
            "star",
            "--num",
            "2",
            "--seed",
            "5",
            "--backend",
            "cpu",
            "--out",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let im = image::open(&png).unwrap();
    assert!(im.width() >= 2 * 64 && im.height() >= 64);
    let info = llamagen().arg("info").arg(&png).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("star"), "{text}");
    // With no sampler options, the model card's settings (what its figures were measured at).
    let info = llamagen()
        .arg("info")
        .arg(&png)
        .arg("--json")
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo/model.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // The bundled files are named by their place in the assets, not this checkout's path, so
    // that `--from` remakes the image on any machine.
    let sample = &record["samples"][0];
    assert_eq!(sample["gpt"]["path"], "bundled:demo/gpt.safetensors");
    assert_eq!(sample["vq"]["path"], "bundled:demo/vq.safetensors");
    for key in ["cfg_scale", "cfg_interval", "temperature", "top_k", "top_p"] {
        assert_eq!(
            record["samples"][0]["params"][key], card["sampler"][key],
            "{key}"
        );
    }
    // A record from before the `bundled:` names, made on a checkout that lies elsewhere:
    // `--from` still finds the demo files here (same folder, name and size) and remakes it.
    let mut old = llamagen::image_io::read_png_record(&png).unwrap();
    for s in &mut old.samples {
        s.gpt.path = "/elsewhere/llamagen/assets/demo/gpt.safetensors".into();
        s.vq.path = "/elsewhere/llamagen/assets/demo/vq.safetensors".into();
    }
    let image = image::open(&png).unwrap().to_rgb8();
    let moved = dir.path().join("moved.png");
    llamagen::image_io::save_png(&moved, &image, &old).unwrap();
    let again = dir.path().join("again.png");
    assert!(remake(&moved, &again).status.success());
    assert_eq!(image::open(&again).unwrap().to_rgb8(), image);
    // A size that is not the bundled file's is another model: its path is tried, and missing.
    for s in &mut old.samples {
        s.gpt.bytes += 1;
    }
    llamagen::image_io::save_png(&moved, &image, &old).unwrap();
    let out = remake(&moved, &again);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/elsewhere/llamagen/assets/demo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without --out: samples.png, then samples-1.png; the first run's image stays.
    for _ in 0..2 {
        let out = llamagen()
            .current_dir(dir.path())
            .args(["generate", "--class", "circle", "--backend", "cpu"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.path().join("samples.png").is_file());
    assert!(dir.path().join("samples-1.png").is_file());
    // An unknown class lists what the demo model knows.
    let out = llamagen()
        .args(["generate", "--class", "dragon", "--backend", "cpu", "--out"])
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `--out-dir` writes each batch when it is done: a run killed half-way leaves the images it
/// finished, every one a whole PNG with its record (written then renamed), none half-written.
#[test]
fn a_run_killed_half_way_keeps_the_images_it_finished() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = llamagen()
        .args([
            "generate",
            "--class",
            "ring",
            "--num",
            "500",
            "--batch-size",
            "1",
            "--seed",
            "1",
            "--backend",
            "cpu",
            "--out-dir",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let finished = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("-seed1.png"))
                    .count()
            })
            .unwrap_or(0)
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while finished(&out) == 0 {
        assert!(std::time::Instant::now() < end, "no image written");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut pngs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert!(!pngs.is_empty() && pngs.len() < 500, "{}", pngs.len());
    for (i, png) in pngs.iter().enumerate() {
        let record = llamagen::image_io::read_png_record(png).unwrap();
        assert_eq!(
            record.samples[0].params.seed,
            1 + i as u64,
            "{}",
            png.display()
        );
        assert_eq!(image::open(png).unwrap().width(), 64);
    }
}

/// `--backend auto` runs on wgpu only on a hardware adapter: a software rasteriser (Mesa's
/// lavapipe, which CI installs) is many times slower than the CPU backend, so it is passed over,
/// saying so. `--backend wgpu` still uses whatever adapter there is.
#[test]
fn auto_backend_passes_over_software_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |backend: &str| {
        llamagen()
            .args(["generate", "--class", "circle", "--num", "1", "--seed", "3"])
            .args(["--backend", backend, "--out"])
            .arg(dir.path().join(format!("{backend}.png")))
            .output()
            .unwrap()
    };
    let out = generate("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    match llamagen::backend::wgpu_adapter() {
        Some(adapter) if !adapter.software => assert!(stderr.contains(" on wgpu "), "{stderr}"),
        Some(adapter) => {
            assert!(stderr.contains(" on cpu "), "{stderr}");
            assert!(
                stderr.contains(&format!(
                    "only a software graphics adapter ({})",
                    adapter.name
                )),
                "{stderr}"
            );
            let out = generate("wgpu");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(stderr.contains(" on wgpu "), "{stderr}");
            assert!(stderr.contains("software adapter"), "{stderr}");
        }
        None => {
            assert!(stderr.contains(" on cpu "), "{stderr}");
            assert!(stderr.contains("no GPU adapter found"), "{stderr}");
        }
    }
}
