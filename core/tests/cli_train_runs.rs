//! A training run's life, through the CLI (feature `train`): killed mid-run, stopped by Ctrl-C,
//! `--resume`d, and started from another generator with `--init-from`.
#![cfg(feature = "train")]

mod common;

use common::{TINY_GPT, llamagen, run_ok as ok};
use std::path::Path;
use std::time::Duration;

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
        llamagen::gpt::Transformer::<llamagen::backend::Cpu>::load(&sd, &cfg, &Default::default())
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

/// `--init-from` grows a trained generator deeper (its run folder is enough), and refuses one
/// whose width differs, saying so.
#[test]
fn init_from_grows_a_trained_generator_and_refuses_one_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let codes = dir.path().join("codes");
    toy_codes(&codes);
    let small = dir.path().join("small");
    ok(&mut toy_gpt_run(&codes, &small, "2"));
    let start_from = |out: &str, flag: &str, value: &str| {
        let mut args = TINY_GPT;
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let mut c = llamagen();
        c.args(["train-gpt", "--codes"])
            .arg(&codes)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(args)
            .args(["--steps", "1", "--backend", "cpu", "--init-from"])
            .arg(&small);
        c.output().unwrap()
    };
    let grown = start_from("deep", "--n-layer", "3");
    let err = String::from_utf8_lossy(&grown.stderr);
    assert!(grown.status.success(), "{err}");
    assert!(
        err.contains("2 layer(s) taken, 1 new identity layer(s)"),
        "{err}"
    );
    let latest = llamagen::train::checkpoint::latest(&dir.path().join("deep"))
        .unwrap()
        .unwrap();
    let state = llamagen::train::checkpoint::load_state(&latest).unwrap();
    assert_eq!(state["config"]["n_layer"], 3);
    assert_eq!(state["extra"]["init_from"].as_str(), small.to_str());
    // Resumed, the run's later checkpoints still name the generator it started from.
    ok(llamagen()
        .args(["train-gpt", "--codes"])
        .arg(&codes)
        .arg("--out")
        .arg(dir.path().join("deep"))
        .args(["--steps", "2", "--backend", "cpu", "--resume"]));
    let latest = llamagen::train::checkpoint::latest(&dir.path().join("deep"))
        .unwrap()
        .unwrap();
    let state = llamagen::train::checkpoint::load_state(&latest).unwrap();
    assert_eq!(state["step"], 2);
    assert_eq!(state["extra"]["init_from"].as_str(), small.to_str());
    let wide = start_from("wide", "--dim", "64");
    let err = String::from_utf8_lossy(&wide.stderr);
    assert!(!wide.status.success());
    assert!(
        err.contains("its width is 32, the generator being trained has 64"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
