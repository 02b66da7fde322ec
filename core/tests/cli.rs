//! The `llamagen` binary end to end: help, inspect, exit codes, data sets, refused training
//! outputs, reconstruction.

mod common;

use common::{llamagen, reference_dir};

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
    assert!(
        !err.contains("panicked") && !err.contains("stopped unexpectedly"),
        "{err}"
    );

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

#[test]
fn dataset_shapes_writes_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = llamagen()
        .args([
            "dataset",
            "shapes",
            "--per-class",
            "2",
            "--size",
            "32",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for class in llamagen::dataset::SHAPE_CLASSES {
        for i in 0..2 {
            let p = dir.path().join(class).join(format!("{i:05}.png"));
            let im = image::open(&p).unwrap();
            assert_eq!((im.width(), im.height()), (32, 32));
        }
    }
    let captions = std::fs::read_to_string(dir.path().join("captions.tsv")).unwrap();
    assert_eq!(captions.lines().count(), 20);
}

/// The whole pipeline on a toy scale: data set → train-vq → extract-codes → train-gpt → card →
/// generate → info; then a training process killed at random moments always leaves a
/// checkpoint that loads, and `--resume` finishes the run.
/// The training commands refuse an output they cannot write before any work starts (a
/// classifier, a codes file, a run folder under a plain file), saying which folder; the error
/// says each reason once.
#[cfg(feature = "train")]
#[test]
fn training_outputs_that_cannot_be_written_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let under = |name: &str| file.join(name).display().to_string();
    let data = dir.path().join("data");
    for (args, folder) in [
        (
            vec![
                "train-classifier".into(),
                "--steps".into(),
                "200".into(),
                "--out".into(),
                under("c.mpk"),
            ],
            file.display().to_string(),
        ),
        (
            vec![
                "train-gpt".into(),
                "--codes".into(),
                "x.codes".into(),
                "--steps".into(),
                "1".into(),
                "--out".into(),
                under("run"),
            ],
            under("run"),
        ),
        (
            vec![
                "extract-codes".into(),
                "--data".into(),
                data.display().to_string(),
                "--vq-ckpt".into(),
                "vq".into(),
                "--out".into(),
                under("x.codes"),
            ],
            file.display().to_string(),
        ),
    ] {
        let out = llamagen().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains(&format!("output folder {folder}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("step "), "{args:?} trained: {err}");
        let reason = err
            .lines()
            .last()
            .unwrap()
            .rsplit(": ")
            .next()
            .unwrap()
            .to_string();
        assert_eq!(err.matches(&reason).count(), 1, "{err}");
    }
    let out = llamagen()
        .args(["eval-classes", "--num", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}

/// `reconstruct` on the demo tokenizer: a shape image through the codes and back.
#[test]
fn reconstruct_round_trips_an_image_through_the_demo_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let sample = llamagen::dataset::render(7, 3, 0, 64);
    let img = image::RgbImage::from_raw(64, 64, sample.rgb).unwrap();
    let input = dir.path().join("shape.png");
    img.save(&input).unwrap();
    let out_dir = dir.path().join("recon");
    let out = llamagen()
        .args(["reconstruct", "--backend", "cpu", "--json", "--out-dir"])
        .arg(&out_dir)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let grid = v["grid"].as_u64().unwrap() as usize;
    assert_eq!(v["codes"].as_array().unwrap().len(), grid * grid);
    let psnr = v["psnr_db"].as_f64().unwrap();
    // The reconstruction must be closer to the input than a flat grey image is.
    let grey = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let grey_mse: f64 = img
        .as_raw()
        .iter()
        .zip(grey.as_raw())
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / img.as_raw().len() as f64;
    let grey_psnr = 10.0 * (255.0f64 * 255.0 / grey_mse).log10();
    assert!(
        psnr > grey_psnr,
        "reconstruction {psnr:.2} dB vs flat grey {grey_psnr:.2} dB"
    );
    let pair = image::open(out_dir.join("shape-reconstruction.png")).unwrap();
    assert!(pair.width() > 2 * 64 - 1 && pair.height() >= 64);

    // A size the tokenizer cannot tile is a clear error, not a panic.
    let out = llamagen()
        .args(["reconstruct", "--backend", "cpu", "--image-size", "60"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("multiple of the tokenizer's downsampling"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("stopped unexpectedly"),
        "{err}"
    );
}

#[test]
fn convert_stores_a_generator_in_16_bits_that_still_generates() {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::assets().join("demo");
    let half = dir.path().join("gpt-f16.safetensors");
    let out = llamagen()
        .args(["convert", "--dtype", "f16"])
        .arg(demo.join("gpt.safetensors"))
        .arg(&half)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stored as f16"), "{err}");
    // Two bytes a value, against four in f32 (whatever the bundled file holds).
    let values: usize = safetensors::SafeTensors::deserialize(&std::fs::read(&half).unwrap())
        .unwrap()
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    let size = std::fs::metadata(&half).unwrap().len() as usize;
    assert!(
        size < values * 2 + 64 * 1024,
        "{size} bytes for {values} values"
    );
    let png = dir.path().join("f16.png");
    let out = llamagen()
        .args(["generate", "--gpt-ckpt"])
        .arg(&half)
        .arg("--vq-ckpt")
        .arg(demo.join("vq.safetensors"))
        .args(["--image-size", "64", "--class", "0", "--seed", "3"])
        .args(["--backend", "cpu", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(png.is_file());
}
