//! The training commands end to end (feature `train`): the whole pipeline on a tiny data set,
//! from images to a model card the other commands load. A run's life (killed, Ctrl-C,
//! `--resume`, `--init-from`) is in `cli_train_runs.rs`.
#![cfg(feature = "train")]

mod common;

use common::{TINY_GPT, llamagen, run_ok as ok};
use std::path::Path;

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
    // The class demo's generator stored in f16: half the bytes, and it still generates (below).
    ok(llamagen()
        .args(["card", "--name", "toy", "--gpt-dtype", "f16", "--gpt"])
        .arg(d.join("gpt"))
        .arg("--vq")
        .arg(d.join("vq"))
        .arg("--out")
        .arg(assets.join("demo")));
    let stored = std::fs::metadata(assets.join("demo/gpt.safetensors"))
        .unwrap()
        .len();
    let latest = llamagen::bundle::run_folder_checkpoint(&d.join("gpt"))
        .unwrap()
        .unwrap();
    let trained = std::fs::metadata(latest.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        stored * 10 < trained * 6,
        "f16: {stored} bytes against {trained} in f32"
    );
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
