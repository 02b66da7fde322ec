//! The `llamagen` binary end to end: help, inspect, exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

/// `generate --from png --out out` on the CPU; its stderr is printed when it fails, so a
/// failure the caller did not expect shows why.
fn remake(png: &Path, out: &Path) -> std::process::Output {
    let output = llamagen()
        .args(["generate", "--backend", "cpu", "--from"])
        .arg(png)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    output
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

mod generate {
    use super::llamagen;
    use llamagen::checkpoint::{state_dict, write_safetensors};
    use llamagen::config::{GptConfig, VqConfig};
    use llamagen::gpt::Transformer;
    use llamagen::vq::VqModel;
    use std::path::{Path, PathBuf};

    type B = llamagen::backend::Cpu;

    /// A random tiny tokenizer (4× downsampling, 64 codes) and a matching class-conditional GPT
    /// (10 classes, 4×4 tokens → 16 px images), written as safetensors.
    pub(super) fn tiny_models(dir: &Path, codebook: usize) -> (PathBuf, PathBuf) {
        let device = Default::default();
        let vq_cfg = VqConfig {
            ch: 32,
            z_channels: 32,
            codebook_size: codebook,
            encoder_ch_mult: vec![1, 1, 2],
            decoder_ch_mult: vec![1, 1, 2],
            ..VqConfig::default()
        };
        let vq = VqModel::<B>::init(&vq_cfg, &device).unwrap();
        let vq_path = dir.join("vq.safetensors");
        write_safetensors(
            &vq_path,
            &state_dict(&vq, &vq_cfg.state_dict_specs()).unwrap(),
            None,
        )
        .unwrap();
        let gpt_cfg = GptConfig {
            dim: 64,
            n_layer: 2,
            n_head: 4,
            vocab_size: 64,
            num_classes: 10,
            block_size: 16,
            ..GptConfig::default()
        };
        let mut gpt = Transformer::<B>::init(&gpt_cfg, &device).unwrap();
        // A random head instead of the official zero one, so the classes and CFG matter.
        gpt.output = burn::nn::LinearConfig::new(64, 64)
            .with_bias(false)
            .init(&device);
        let gpt_path = dir.join("gpt.safetensors");
        write_safetensors(
            &gpt_path,
            &state_dict(&gpt, &gpt_cfg.state_dict_specs()).unwrap(),
            None,
        )
        .unwrap();
        (gpt_path, vq_path)
    }

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
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--vq-ckpt")
        );
    }
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

#[cfg(feature = "train")]
mod training {
    use super::llamagen;
    use std::path::Path;
    use std::time::Duration;

    fn ok(cmd: &mut std::process::Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{:?} failed:\n{}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tiny_vq(data: &Path, out: &Path) {
        ok(llamagen()
            .args(["train-vq", "--data"])
            .arg(data)
            .arg("--out")
            .arg(out)
            .args([
                "--config",
                "VQ-8",
                "--ch",
                "32",
                "--ch-mult",
                "1,2",
                "--z-channels",
                "32",
                "--num-res-blocks",
                "1",
                "--codebook-size",
                "32",
                "--image-size",
                "16",
                "--batch-size",
                "2",
                "--steps",
                "2",
                "--disc-start",
                "1",
                "--disc-ndf",
                "8",
                "--disc-layers",
                "1",
                "--ema",
                "--sample-every",
                "1",
                // Two data-parallel replicas, with the adversarial terms on.
                "--replicas",
                "2",
                "--backend",
                "cpu",
            ]));
    }

    /// The tiny generator of the training tests.
    const TINY_GPT: [&str; 8] = [
        "--dim",
        "32",
        "--n-layer",
        "2",
        "--n-head",
        "4",
        "--batch-size",
        "4",
    ];

    /// `train-gpt` on `d/codes` for three steps of a tiny generator, into `d/<out>`, with
    /// samples from `d/vq`.
    fn tiny_gpt_run(d: &Path, out: &str) -> std::process::Command {
        let mut c = llamagen();
        c.args(["train-gpt", "--codes"])
            .arg(d.join("codes"))
            .arg("--out")
            .arg(d.join(out))
            .arg("--vq-ckpt")
            .arg(d.join("vq"))
            .args(TINY_GPT)
            .args(["--steps", "3", "--sample-every", "3", "--backend", "cpu"]);
        c
    }

    #[test]
    fn the_pipeline_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ok(llamagen()
            .args([
                "dataset",
                "shapes",
                "--per-class",
                "2",
                "--size",
                "16",
                "--out",
            ])
            .arg(d.join("data")));
        tiny_vq(&d.join("data"), &d.join("vq"));
        assert!(d.join("vq/samples/step-0000002.png").is_file());
        // The adversarial terms ran (disc-start 1) and the run refuses to be overwritten.
        // A train-vq call that must be refused, into d/<out>: its error message.
        let refused_vq = |extra: &[&str], out: &str| {
            let o = llamagen()
                .arg("train-vq")
                .args(extra)
                .args(["--steps", "1", "--data"])
                .arg(d.join("data"))
                .arg("--out")
                .arg(d.join(out))
                .output()
                .unwrap();
            assert!(!o.status.success());
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        assert!(refused_vq(&[], "vq").contains("--resume"));
        // extract-codes with a tokenizer run, into d/<out>.
        let extract = |vq: &str, out: &str, extra: &[&str]| {
            llamagen()
                .args(["extract-codes", "--image-size", "16", "--data"])
                .arg(d.join("data"))
                .arg("--vq-ckpt")
                .arg(d.join(vq))
                .arg("--out")
                .arg(d.join(out))
                .args(extra)
                .output()
                .unwrap()
        };
        let out = extract("vq", "codes", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A decoder fine-tuned from the run keeps every image's codes: the codes extracted
        // with it are the same, so generators trained on them stay valid with it.
        assert!(refused_vq(&["--decoder-only"], "vq-refused").contains("--init-from"));
        ok(llamagen()
            .args(["train-vq", "--decoder-only", "--init-from"])
            .arg(d.join("vq"))
            .arg("--data")
            .arg(d.join("data"))
            .arg("--out")
            .arg(d.join("vq-dec"))
            .args([
                "--image-size",
                "16",
                "--batch-size",
                "2",
                "--steps",
                "2",
                "--lr",
                "1e-2",
                "--sample-every",
                "0",
                "--backend",
                "cpu",
            ]));
        let out = extract("vq-dec", "codes-dec", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before = llamagen::train::data::CodeSet::read(&d.join("codes")).unwrap();
        let after = llamagen::train::data::CodeSet::read(&d.join("codes-dec")).unwrap();
        assert_eq!(before.codes, after.codes);
        assert_eq!(before.labels, after.labels);
        let weights = |run: &str| {
            let latest = llamagen::train::checkpoint::latest(&d.join(run))
                .unwrap()
                .unwrap();
            llamagen::checkpoint::StateDict::open(
                latest.join("model.safetensors"),
                llamagen::checkpoint::WeightsChoice::PreferEma,
            )
            .unwrap()
        };
        let (old, new) = (weights("vq"), weights("vq-dec"));
        assert_eq!(
            old.infer_vq_config().unwrap(),
            new.infer_vq_config().unwrap()
        );
        let device = Default::default();
        let same = |name: &str| {
            let read = |sd| {
                llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(sd, &device)
                    .data(name)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            };
            read(&old) == read(&new)
        };
        assert!(same("quantize.embedding.weight"));
        assert!(same("quant_conv.weight"));
        assert!(same("encoder.conv_in.weight"));
        assert!(!same("decoder.conv_out.weight"));
        // The centre crop alone (one grid an image) makes the held-out codes; a generator
        // reports its loss on them at the start, every --val-every steps and at the end.
        let refused = extract("vq", "refused", &["--mirror", "false"]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--ten-crop false"));
        let out = extract(
            "vq",
            "codes-val",
            &["--ten-crop", "false", "--mirror", "false"],
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("20 images × 1 crops"), "{log}");
        let out = tiny_gpt_run(d, "gpt-val")
            .arg("--val-codes")
            .arg(d.join("codes-val"))
            .args(["--val-every", "2"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let held_out: Vec<(u64, f32)> = log
            .lines()
            .filter_map(|l| {
                let (step, rest) = l.strip_prefix("step ")?.split_once(": held-out loss ")?;
                Some((step.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
            })
            .collect();
        assert_eq!(
            held_out.iter().map(|h| h.0).collect::<Vec<_>>(),
            [0, 2, 3],
            "{log}"
        );
        assert!(
            held_out.iter().all(|h| h.1.is_finite() && h.1 > 0.0),
            "{log}"
        );
        // `reconstruct` takes the run folder as its tokenizer, as extract-codes does, at the
        // size it trained at (16 px, 8×8 tokens) unless told otherwise.
        let image = std::fs::read_dir(d.join("data/star"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let out = ok(llamagen()
            .args(["reconstruct", "--backend", "cpu", "--vq-ckpt"])
            .arg(d.join("vq"))
            .arg(&image));
        assert!(out.contains("16 px, 8×8 tokens"), "{out}");
        let out = ok(llamagen()
            .args([
                "reconstruct",
                "--backend",
                "cpu",
                "--image-size",
                "8",
                "--vq-ckpt",
            ])
            .arg(d.join("vq/step-0000002"))
            .arg(&image));
        assert!(out.contains("8 px, 4×4 tokens"), "{out}");
        ok(tiny_gpt_run(d, "gpt").args(["--lr", "1e-3", "--lr-decay-steps", "2"]));
        assert!(d.join("gpt/samples/step-0000003.png").is_file());
        // The decay over the last two steps is part of the run's options, so a resume keeps it.
        let options = |step: &str| -> serde_json::Value {
            let path = d.join(format!("gpt/step-000000{step}/state.json"));
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            state["options"].clone()
        };
        assert_eq!(options("3")["lr_decay"], serde_json::json!([1, 3]));
        assert_eq!(options("3")["lr"], serde_json::json!(1e-3));
        // Resumed with a new rate and decay, the run anneals a second time from the lower rate.
        ok(llamagen()
            .args(["train-gpt", "--codes"])
            .arg(d.join("codes"))
            .arg("--out")
            .arg(d.join("gpt"))
            .args([
                "--resume",
                "--steps",
                "5",
                "--lr",
                "5e-4",
                "--lr-decay-steps",
                "2",
            ])
            .args(["--backend", "cpu"]));
        assert_eq!(options("5")["lr_decay"], serde_json::json!([3, 5]));
        assert_eq!(options("5")["lr"], serde_json::json!(5e-4));
        ok(llamagen()
            .args(["card", "--name", "toy", "--gpt"])
            .arg(d.join("gpt"))
            .arg("--vq")
            .arg(d.join("vq"))
            .arg("--out")
            .arg(d.join("model")));
        // The card's files, and the run folders themselves (their class names come from what
        // train-gpt recorded).
        for (gpt, vq, png) in [
            ("model/gpt.safetensors", "model/vq.safetensors", "star.png"),
            ("gpt", "vq", "star-run.png"),
        ] {
            let png = d.join(png);
            ok(llamagen()
                .args([
                    "generate",
                    "--class",
                    "star",
                    "--seed",
                    "3",
                    "--backend",
                    "cpu",
                ])
                .arg("--gpt-ckpt")
                .arg(d.join(gpt))
                .arg("--vq-ckpt")
                .arg(d.join(vq))
                .arg("--out")
                .arg(&png));
            let info = ok(llamagen().arg("info").arg(&png));
            assert!(info.contains("star"), "{info}");
        }

        // The shape classifier, trained for a few steps with and without degradations; both
        // score the same samples of the toy model, and its tokenizer's reconstructions.
        for (name, augment) in [("clf-a.mpk", "true"), ("clf-b.mpk", "false")] {
            let out = ok(llamagen()
                .args(["train-classifier", "--steps", "2", "--batch-size", "4"])
                .args(["--augment", augment, "--out"])
                .arg(d.join(name)));
            assert!(out.contains("held-out accuracy"), "{out}");
        }
        let both_classifiers = |c: &mut std::process::Command| {
            c.arg("--classifier")
                .arg(d.join("clf-a.mpk"))
                .arg("--classifier")
                .arg(d.join("clf-b.mpk"));
        };
        let classifiers = |c: &mut std::process::Command| {
            both_classifiers(c);
            c.arg("--gpt-ckpt")
                .arg(d.join("model/gpt.safetensors"))
                .arg("--vq-ckpt")
                .arg(d.join("model/vq.safetensors"));
        };
        let mut eval = llamagen();
        eval.args(["eval-classes", "--num", "1", "--cfg-scale", "2", "--json"]);
        classifiers(&mut eval);
        let report: serde_json::Value = serde_json::from_str(&ok(&mut eval)).unwrap();
        let rows = report.as_array().unwrap();
        assert_eq!(rows.len(), 2, "one row per classifier: {report}");
        for (row, name) in rows.iter().zip(["clf-a.mpk", "clf-b.mpk"]) {
            assert!(row["classifier"].as_str().unwrap().ends_with(name), "{row}");
            assert_eq!(row["per_class"].as_object().unwrap().len(), 10, "{row}");
            let overall = row["overall"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&overall), "{row}");
            let interval: Vec<f64> = row["interval_95"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert!(
                interval.len() == 2 && interval[0] <= overall && overall <= interval[1],
                "{row}"
            );
        }
        // With nothing given, the bundled demo model is scored by the bundled classifier.
        let mut bundled = llamagen();
        bundled.args(["eval-classes", "--num", "1", "--cfg-scale", "1", "--json"]);
        let report: serde_json::Value = serde_json::from_str(&ok(&mut bundled)).unwrap();
        let rows = report.as_array().unwrap();
        assert_eq!(rows.len(), 1, "{report}");
        let path = rows[0]["classifier"].as_str().unwrap().replace('\\', "/");
        assert!(path.ends_with("eval/classifier.mpk"), "{path}");
        assert_eq!(rows[0]["per_class"].as_object().unwrap().len(), 10);
        // With one sample a class, a class is either right (no mistake to name) or mistaken
        // for one shape, all of it.
        let mistaken = rows[0]["mostly_mistaken_for"].as_object().unwrap();
        assert_eq!(mistaken.len(), 10, "{report}");
        for (class, m) in mistaken {
            let right = rows[0]["per_class"][class].as_f64().unwrap();
            match m.as_object() {
                None => assert_eq!(right, 1.0, "{report}"),
                Some(m) => {
                    assert_eq!((right, m["fraction"].as_f64().unwrap()), (0.0, 1.0));
                    assert_ne!(m["shape"].as_str().unwrap(), class, "{report}");
                }
            }
        }
        // The tokenizer alone is enough to measure reconstructions; without --reconstructions
        // it is refused with a hint.
        let tokenizer_alone = |c: &mut std::process::Command| {
            c.args(["eval-classes", "--num", "1", "--image-size", "16"]);
            both_classifiers(c);
            c.arg("--vq-ckpt").arg(d.join("vq"));
        };
        let mut refused = llamagen();
        tokenizer_alone(&mut refused);
        let out = refused.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--reconstructions"),
            "{err}"
        );
        let mut rec = llamagen();
        tokenizer_alone(&mut rec);
        rec.arg("--reconstructions");
        let text = ok(&mut rec);
        assert_eq!(
            text.matches("tokenizer reconstructions").count(),
            2,
            "{text}"
        );
        let mut rec = llamagen();
        rec.args(["eval-classes", "--num", "1", "--reconstructions", "--json"]);
        classifiers(&mut rec);
        let report: serde_json::Value = serde_json::from_str(&ok(&mut rec)).unwrap();
        let rows = report.as_array().unwrap();
        assert_eq!(rows.len(), 2, "one row per classifier: {report}");
        assert!(
            rows[1]["classifier"]
                .as_str()
                .unwrap()
                .ends_with("clf-b.mpk")
        );
        for row in rows {
            let r = row["reconstruction"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&r), "{row}");
        }

        // A perceptual network of the project's own stands in for LPIPS's VGG16: trained by
        // train-perceptual, it adds the perceptual term to train-vq (and cannot be combined
        // with the VGG16 files).
        let out = ok(llamagen()
            .args([
                "train-perceptual",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--out",
            ])
            .arg(d.join("perceptual.mpk")));
        assert!(out.contains("held-out accuracy"), "{out}");
        let vq_p = |c: &mut std::process::Command| {
            c.args([
                "train-vq",
                "--config",
                "VQ-8",
                "--ch",
                "16",
                "--ch-mult",
                "1,2",
            ])
            .args([
                "--z-channels",
                "16",
                "--num-res-blocks",
                "1",
                "--norm-groups",
                "8",
            ])
            .args([
                "--codebook-size",
                "16",
                "--image-size",
                "16",
                "--batch-size",
                "2",
            ])
            .args(["--steps", "1", "--backend", "cpu", "--data"])
            .arg(d.join("data"))
            .arg("--out")
            .arg(d.join("vq-p"))
            .arg("--perceptual-net")
            .arg(d.join("perceptual.mpk"));
        };
        let mut with_net = llamagen();
        vq_p(&mut with_net);
        let out = with_net.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(" lpips ") && !err.contains("WITHOUT"), "{err}");
        let mut both = llamagen();
        vq_p(&mut both);
        both.arg("--lpips-vgg")
            .arg(d.join("perceptual.mpk"))
            .arg("--lpips-lin")
            .arg(d.join("perceptual.mpk"));
        let out = both.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--perceptual-net"),
            "{err}"
        );

        // Text-conditional: the codes kept the data set's captions; a small T5 made by the
        // project encodes them; the card carries the encoder, so prompts need no --t5.
        let codes = llamagen::train::data::CodeSet::read(&d.join("codes")).unwrap();
        assert_eq!(codes.meta.captions.len(), 20);
        assert!(codes.meta.captions.iter().any(|c| c.contains(" star on ")));
        ok(llamagen()
            .args([
                "init-t5",
                "--d-model",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--captions",
            ])
            .arg(d.join("data/captions.tsv"))
            .arg("--out")
            .arg(d.join("t5")));
        ok(tiny_gpt_run(d, "gpt-text")
            .arg("--t5")
            .arg(d.join("t5"))
            .args(["--caption-tokens", "10"]));
        assert!(d.join("gpt-text/samples/step-0000003.png").is_file());
        let assets = d.join("assets");
        ok(llamagen()
            .args(["card", "--name", "toy", "--gpt"])
            .arg(d.join("gpt"))
            .arg("--vq")
            .arg(d.join("vq"))
            .arg("--out")
            .arg(assets.join("demo")));
        ok(llamagen()
            .args([
                "card",
                "--name",
                "toy text",
                "--share-vq",
                "../demo/vq.safetensors",
                "--gpt",
            ])
            .arg(d.join("gpt-text"))
            .arg("--vq")
            .arg(d.join("vq"))
            .arg("--t5")
            .arg(d.join("t5"))
            .arg("--out")
            .arg(assets.join("demo-text")));
        assert!(!assets.join("demo-text/vq.safetensors").exists());
        assert!(assets.join("demo-text/t5/tokenizer.json").is_file());
        // With no checkpoints, a prompt goes to the text demo and a class to the class demo.
        let png = d.join("prompt.png");
        ok(llamagen()
            .env("LLAMAGEN_ASSETS", &assets)
            .args([
                "generate",
                "--prompt",
                "a red star on a blue background",
                "--seed",
                "1",
            ])
            .args(["--backend", "cpu", "--out"])
            .arg(&png));
        let info = ok(llamagen().arg("info").arg(&png));
        assert!(info.contains("a red star on a blue background"), "{info}");
        ok(llamagen()
            .env("LLAMAGEN_ASSETS", &assets)
            .args(["generate", "--class", "star", "--backend", "cpu", "--out"])
            .arg(d.join("class.png")));
        // A --share-vq file that is not the tokenizer is refused.
        let wrong = llamagen()
            .args(["card", "--share-vq", "../demo/gpt.safetensors", "--gpt"])
            .arg(d.join("gpt-text"))
            .arg("--vq")
            .arg(d.join("vq"))
            .arg("--out")
            .arg(assets.join("demo-text"))
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("does not hold the weights"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
    }

    /// A codes file of 8 images of two classes, 4×4 tokens of a 16-entry codebook.
    fn toy_codes(codes: &Path) {
        use llamagen::train::data::{CodeSet, CodesMeta};
        CodeSet {
            meta: CodesMeta {
                num_images: 8,
                num_aug: 2,
                seq_len: 16,
                codebook_size: 16,
                image_size: 64,
                class_names: vec!["a".into(), "b".into()],
                tokenizer: "test".into(),
                captions: Vec::new(),
            },
            labels: (0..8).map(|i| i % 2).collect(),
            codes: (0..8 * 2 * 16).map(|i| (i % 16) as u16).collect(),
        }
        .write(codes)
        .unwrap();
    }

    /// `train-gpt` of the tiny generator on `codes` into `run`, on the CPU.
    fn toy_gpt_run(codes: &Path, run: &Path, steps: &str) -> std::process::Command {
        let mut c = llamagen();
        c.args(["train-gpt", "--codes"])
            .arg(codes)
            .arg("--out")
            .arg(run)
            .args(TINY_GPT)
            .args(["--steps", steps, "--backend", "cpu"]);
        c
    }

    #[test]
    fn a_killed_training_run_leaves_a_loadable_checkpoint_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let codes = dir.path().join("codes");
        toy_codes(&codes);
        let run = dir.path().join("run");
        let train = |resume: bool, steps: &str| {
            let mut c = toy_gpt_run(&codes, &run, steps);
            c.args(["--save-every", "1"]);
            if resume {
                c.arg("--resume");
            }
            c
        };
        for (round, wait_ms) in [0u64, 37, 113, 251].iter().enumerate() {
            let mut child = train(round > 0, "1000000")
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Wait for a first checkpoint, then kill at some moment of the save cycle.
            let t0 = std::time::Instant::now();
            while llamagen::train::checkpoint::latest(&run)
                .ok()
                .flatten()
                .is_none()
                && t0.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(*wait_ms));
            child.kill().unwrap();
            child.wait().unwrap();
            let latest = llamagen::train::checkpoint::latest(&run).unwrap().unwrap();
            let state = llamagen::train::checkpoint::load_state(&latest).unwrap();
            let cfg: llamagen::GptConfig = serde_json::from_value(state["config"].clone()).unwrap();
            let sd = llamagen::checkpoint::StateDict::open(
                latest.join("model.safetensors"),
                llamagen::checkpoint::WeightsChoice::Model,
            )
            .unwrap();
            llamagen::gpt::Transformer::<llamagen::backend::Cpu>::load(
                &sd,
                &cfg,
                &Default::default(),
            )
            .unwrap();
        }
        let step = saved_step(&run);
        ok(&mut train(true, &(step + 2).to_string()));
        assert_eq!(saved_step(&run), step + 2);
    }

    /// The step of `run`'s latest checkpoint.
    fn saved_step(run: &Path) -> u64 {
        let latest = llamagen::train::checkpoint::latest(run).unwrap().unwrap();
        llamagen::train::checkpoint::load_state(&latest).unwrap()["step"]
            .as_u64()
            .unwrap()
    }

    /// Starts `cmd` (a training run far too long to finish), waits until it has logged step 3,
    /// sends it SIGINT as a terminal's Ctrl-C does, and returns the step it said it stopped at
    /// after checking that it ended with status 130 and said how to go on.
    #[cfg(unix)]
    fn stop_with_ctrl_c(cmd: &mut std::process::Command) -> u64 {
        use std::io::BufRead;
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.starts_with("step 3/") {
                break;
            }
        }
        assert!(log.contains("step 3/"), "the run ended early:\n{log}");
        let sent = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        for line in lines {
            log.push_str(&line.unwrap());
            log.push('\n');
        }
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{log}");
        assert!(log.contains("stopping after this step"), "{log}");
        assert!(log.contains("with --resume"), "{log}");
        assert!(!log.contains("error"), "{log}");
        let at = log
            .split("stopped at step ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no stopping step in:\n{log}"));
        assert!(at >= 3, "{log}");
        at
    }

    /// Ctrl-C in train-gpt and train-vq saves a checkpoint at the step it stops at (none would
    /// be due for a million steps), and `--resume` goes on from exactly there.
    #[cfg(unix)]
    #[test]
    fn ctrl_c_saves_the_step_it_stops_at_and_resume_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let codes = d.join("codes");
        toy_codes(&codes);
        let gpt = |run: &Path, steps: u64| {
            let mut c = toy_gpt_run(&codes, run, &steps.to_string());
            c.args(["--save-every", "1000000", "--log-every", "1"]);
            c
        };
        let run = d.join("gpt");
        let at = stop_with_ctrl_c(&mut gpt(&run, 1_000_000));
        assert_eq!(saved_step(&run), at);
        ok(gpt(&run, at + 2).arg("--resume"));
        assert_eq!(saved_step(&run), at + 2);

        ok(llamagen()
            .args([
                "dataset",
                "shapes",
                "--per-class",
                "1",
                "--size",
                "16",
                "--out",
            ])
            .arg(d.join("data")));
        let vq = |run: &Path, steps: u64| {
            let mut c = llamagen();
            c.args(["train-vq", "--data"])
                .arg(d.join("data"))
                .arg("--out")
                .arg(run)
                .args(["--config", "VQ-8", "--ch", "16", "--ch-mult", "1,2"])
                .args([
                    "--z-channels",
                    "8",
                    "--num-res-blocks",
                    "1",
                    "--norm-groups",
                    "4",
                ])
                .args([
                    "--codebook-size",
                    "16",
                    "--image-size",
                    "16",
                    "--batch-size",
                    "2",
                ])
                .args([
                    "--save-every",
                    "1000000",
                    "--sample-every",
                    "0",
                    "--log-every",
                    "1",
                ])
                .args(["--backend", "cpu", "--steps", &steps.to_string()]);
            c
        };
        let run = d.join("vq");
        let at = stop_with_ctrl_c(&mut vq(&run, 1_000_000));
        assert_eq!(saved_step(&run), at);
        ok(vq(&run, at + 1).arg("--resume"));
        assert_eq!(saved_step(&run), at + 1);
    }
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

/// Text prompts end to end: the reference fixtures' tiny t2i GPT and tiny T5 (widths from the
/// manifest), a random tokenizer of the GPT's vocabulary, and a tokenizer.json the test writes.
mod prompts {
    use super::{llamagen, reference_dir};
    use std::path::{Path, PathBuf};

    struct Setup {
        _dir: tempfile::TempDir,
        root: PathBuf,
        gpt: String,
        vq: String,
        t5: String,
        n_head: String,
        image_size: String,
    }

    fn setup() -> Setup {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(reference_dir().join("manifest.json")).unwrap(),
        )
        .unwrap();
        let cfg = &manifest["cases"]["gpt_t2i_tiny"]["config"];
        let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // 4× downsampling tokenizer with the generator's vocabulary as codebook.
        let (_, vq) = super::generate::tiny_models(&root, get("vocab_size"));
        let grid = (get("block_size") as f64).sqrt() as usize;
        let t5 = root.join("flan-t5-tiny");
        std::fs::create_dir_all(&t5).unwrap();
        for entry in std::fs::read_dir(reference_dir().join("t5_tiny_hf")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), t5.join(entry.file_name())).unwrap();
        }
        llamagen::text::write_word_tokenizer(
            &t5.join("tokenizer.json"),
            &["a", "red", "cat", "blue", "sky", "on", "the", "mat"],
        )
        .unwrap();
        Setup {
            gpt: reference_dir()
                .join("gpt_t2i_tiny.safetensors")
                .display()
                .to_string(),
            vq: vq.display().to_string(),
            t5: t5.display().to_string(),
            n_head: get("n_head").to_string(),
            image_size: (grid * 4).to_string(),
            root,
            _dir: dir,
        }
    }

    impl Setup {
        fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
            let mut a = vec![
                "generate",
                "--gpt-ckpt",
                &self.gpt,
                "--vq-ckpt",
                &self.vq,
                "--n-head",
                &self.n_head,
                "--image-size",
                &self.image_size,
                "--backend",
                "cpu",
            ];
            a.extend_from_slice(extra);
            a
        }
    }

    fn ok(out: &std::process::Output) -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn err(out: &std::process::Output) -> String {
        assert!(!out.status.success(), "should fail");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !e.contains("panicked") && !e.contains("stopped unexpectedly"),
            "{e}"
        );
        e
    }

    fn record(png: &Path) -> serde_json::Value {
        let out = llamagen()
            .arg("info")
            .arg(png)
            .arg("--json")
            .output()
            .unwrap();
        serde_json::from_str(&ok(&out)).unwrap()
    }

    #[test]
    fn prompts_generate_record_and_reproduce() {
        let s = setup();
        let out_dir = s.root.join("out");
        let out_dir_s = out_dir.display().to_string();
        let out = llamagen()
            .args(s.args(&[
                "--t5",
                &s.t5,
                "--prompt",
                "A red cat on the mat",
                "--prompt",
                "a blue sky",
                "--seed",
                "3",
                "--out-dir",
                &out_dir_s,
            ]))
            .output()
            .unwrap();
        let stdout = ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("tokens"), "{stderr}");
        let files: Vec<&str> = stdout.lines().collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(
            files[0].ends_with("0000-a_red_cat_on_the_mat-seed3.png"),
            "{files:?}"
        );
        let rec = record(Path::new(files[1]));
        let sample = &rec["samples"][0];
        assert_eq!(sample["prompt"], "a blue sky");
        assert!(sample["class"].is_null());
        assert_eq!(sample["params"]["seed"], 4);

        // --from needs the T5 folder, and then makes the same image again.
        let again = s.root.join("again.png").display().to_string();
        let e = err(&llamagen()
            .args([
                "generate",
                "--from",
                files[1],
                "--backend",
                "cpu",
                "--out",
                &again,
            ])
            .output()
            .unwrap());
        assert!(e.contains("--t5"), "{e}");
        ok(&llamagen()
            .args([
                "generate",
                "--from",
                files[1],
                "--t5",
                &s.t5,
                "--backend",
                "cpu",
                "--out",
                &again,
            ])
            .output()
            .unwrap());
        let rec2 = record(Path::new(&again));
        assert_eq!(rec2["samples"][0]["tokens"], sample["tokens"]);
        assert_eq!(rec2["samples"][0]["prompt"], "a blue sky");
        let a = image::open(files[1]).unwrap().to_rgb8();
        let b = image::open(&again).unwrap().to_rgb8();
        assert_eq!(a, b);

        // A prompt file: one prompt a line, comments and blank lines skipped; same seed and
        // prompt as above → same tokens.
        let list = s.root.join("prompts.txt");
        std::fs::write(&list, "# prompts\nA red cat on the mat\n\na blue sky\n").unwrap();
        let grid = s.root.join("grid.png").display().to_string();
        ok(&llamagen()
            .args(s.args(&[
                "--t5",
                &s.t5,
                "--prompt-file",
                list.to_str().unwrap(),
                "--seed",
                "3",
                "--out",
                &grid,
            ]))
            .output()
            .unwrap());
        let rec3 = record(Path::new(&grid));
        assert_eq!(rec3["samples"].as_array().unwrap().len(), 2);
        assert_eq!(rec3["samples"][1]["tokens"], sample["tokens"]);
        let text = ok(&llamagen().arg("info").arg(&grid).output().unwrap());
        assert!(text.contains("prompt: A red cat on the mat"), "{text}");
    }

    #[test]
    fn prompt_problems_are_clear_errors() {
        let s = setup();
        // Writable, so that each failure below is the one asked about; never written.
        let never_path = s.root.join("never.png");
        let never = never_path.to_str().unwrap();
        // A class for a text-conditional model.
        let e = err(&llamagen()
            .args(s.args(&["--t5", &s.t5, "--class", "3", "--out", never]))
            .output()
            .unwrap());
        assert!(e.contains("text-conditional"), "{e}");
        // No prompt, or no --t5.
        let e = err(&llamagen()
            .args(s.args(&["--t5", &s.t5, "--out", never]))
            .output()
            .unwrap());
        assert!(e.contains("--prompt"), "{e}");
        let e = err(&llamagen()
            .args(s.args(&["--prompt", "a cat", "--out", never]))
            .output()
            .unwrap());
        assert!(e.contains("--t5"), "{e}");
        // A T5 folder without its tokenizer: the missing file is named.
        let broken = s.root.join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(Path::new(&s.t5).join(f), broken.join(f)).unwrap();
        }
        let broken_s = broken.display().to_string();
        let e = err(&llamagen()
            .args(s.args(&["--t5", &broken_s, "--prompt", "a cat", "--out", never]))
            .output()
            .unwrap());
        assert!(e.contains("tokenizer.json"), "{e}");
        std::fs::remove_file(broken.join("model.safetensors")).unwrap();
        let e = err(&llamagen()
            .args(s.args(&["--t5", &broken_s, "--prompt", "a cat", "--out", never]))
            .output()
            .unwrap());
        assert!(e.contains("model.safetensors"), "{e}");
        // A T5 whose width is not the generator's caption width.
        let wide = s.root.join("wide");
        std::fs::create_dir_all(&wide).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(Path::new(&s.t5).join(f), wide.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(&s.t5).join("config.json")).unwrap(),
        )
        .unwrap();
        let d = cfg["d_model"].as_u64().unwrap();
        cfg["d_model"] = serde_json::json!(d * 2);
        std::fs::write(wide.join("config.json"), cfg.to_string()).unwrap();
        let wide_s = wide.display().to_string();
        let e = err(&llamagen()
            .args(s.args(&["--t5", &wide_s, "--prompt", "a cat", "--out", never]))
            .output()
            .unwrap());
        assert!(
            e.contains("caption") && e.contains(&(d * 2).to_string()),
            "{e}"
        );
        // A prompt for a class-conditional model.
        let c2i = reference_dir().join("gpt_c2i_tiny.safetensors");
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(reference_dir().join("manifest.json")).unwrap(),
        )
        .unwrap();
        let c = &manifest["cases"]["gpt_c2i_tiny"]["config"];
        let c2i_dir = s.root.join("c2i");
        std::fs::create_dir_all(&c2i_dir).unwrap();
        let (_, vq) =
            super::generate::tiny_models(&c2i_dir, c["vocab_size"].as_u64().unwrap() as usize);
        let grid = (c["block_size"].as_u64().unwrap() as f64).sqrt() as usize;
        let e = err(&llamagen()
            .arg("generate")
            .arg("--gpt-ckpt")
            .arg(&c2i)
            .arg("--vq-ckpt")
            .arg(&vq)
            .args([
                "--n-head",
                &c["n_head"].to_string(),
                "--image-size",
                &(grid * 4).to_string(),
                "--backend",
                "cpu",
                "--prompt",
                "a cat",
                "--out",
                never,
            ])
            .output()
            .unwrap());
        assert!(e.contains("class-conditional"), "{e}");
        assert!(!never_path.exists());
    }
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
