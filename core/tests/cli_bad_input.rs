//! Bad input, one table: every case must end with a non-zero exit, an `error:` line that says
//! what is wrong, a hint (our `hint:` line, or clap's `try '--help'` for a malformed command
//! line), no panic text, and no output file written or replaced.

mod common;
#[path = "common/bad_input_files.rs"]
mod files;

use std::path::{Path, PathBuf};

use common::{llamagen, reference_dir};
use files::{Files, files, s};

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Words the error must contain.
    expect: &'static str,
    /// A file or folder the command must leave as it was (absent, or with the same bytes).
    output: Option<PathBuf>,
}

fn cases(f: &Files) -> Vec<Case> {
    let out = |name: &str| f.dir.join("out").join(name);
    let case = |name, args: &[&str], expect, output: Option<PathBuf>| Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        expect,
        output,
    };
    let png = out("x.png");
    let p = s(&png);
    let generate = |name, extra: &[&str], expect| {
        let mut a = vec!["generate", "--backend", "cpu", "--out", p.as_str()];
        a.extend_from_slice(extra);
        case(name, &a, expect, Some(png.clone()))
    };
    let with_models = |name, gpt: &str, vq: &str, expect| {
        generate(
            name,
            &["--class", "0", "--gpt-ckpt", gpt, "--vq-ckpt", vq],
            expect,
        )
    };
    let reference = reference_dir();
    let gqa = s(&reference.join("gpt_c2i_gqa.pt"));
    let tiny_gpt = s(&reference.join("gpt_c2i_tiny.pt"));
    let tiny_vq = s(&reference.join("vq_tiny.safetensors"));
    let safetensors = out("w.safetensors");
    let st = s(&safetensors);
    let codes_out = out("c.codes");
    let co = s(&codes_out);
    let run = out("run");
    let r = s(&run);
    let npz = out("s.npz");
    let n = s(&npz);
    let recon = out("recon");
    let rc = s(&recon);
    let existing = s(&f.existing);
    let unwritable = "/proc/llamagen-cannot-write-here/x.png";

    vec![
        // Checkpoints: missing, empty, truncated, a folder, text, the wrong model, the wrong
        // configuration.
        with_models(
            "generate: missing generator",
            "/no/such/gpt.pt",
            &f.vq,
            "/no/such/gpt.pt",
        ),
        with_models(
            "generate: missing tokenizer",
            &f.gpt,
            "/no/such/vq.pt",
            "/no/such/vq.pt",
        ),
        with_models("generate: empty checkpoint", &f.empty, &f.vq, "empty.pt"),
        with_models(
            "generate: truncated .pt",
            &f.truncated_pt,
            &f.vq,
            "truncated.pt",
        ),
        with_models(
            "generate: truncated safetensors",
            &f.truncated_safetensors,
            &f.vq,
            "truncated.safetensors",
        ),
        with_models(
            "generate: a folder for a checkpoint",
            &f.folder,
            &f.vq,
            "folder.pt",
        ),
        with_models(
            "generate: a text file for a checkpoint",
            &f.text,
            &f.vq,
            "notes.pt",
        ),
        with_models(
            "generate: generator and tokenizer swapped",
            &f.vq,
            &f.gpt,
            "gpt.safetensors",
        ),
        with_models(
            "generate: a generator that does not fit the tokenizer",
            &tiny_gpt,
            &f.vq,
            "tokenizer",
        ),
        generate(
            "generate: a configuration the weights do not fit",
            &[
                "--class",
                "0",
                "--gpt-ckpt",
                &gqa,
                "--vq-ckpt",
                &tiny_vq,
                "--gpt-model",
                "GPT-B",
            ],
            "width",
        ),
        // Conditions.
        generate(
            "generate: class id out of range",
            &["--class", "1000"],
            "out of range",
        ),
        generate(
            "generate: unknown class name",
            &["--class", "zebra"],
            "zebra",
        ),
        generate(
            "generate: a prompt to a class model",
            &[
                "--prompt",
                "a red star",
                "--gpt-ckpt",
                &f.gpt,
                "--vq-ckpt",
                &f.vq,
            ],
            "prompt",
        ),
        generate(
            "generate: a class to a text model",
            &[
                "--class",
                "0",
                "--gpt-ckpt",
                &f.text_gpt,
                "--vq-ckpt",
                &f.vq,
            ],
            "class",
        ),
        generate("generate: no class", &[], "--class"),
        // Sampler.
        generate(
            "generate: temperature 0",
            &["--class", "0", "--temperature", "0"],
            "temperature",
        ),
        generate(
            "generate: negative temperature",
            &["--class", "0", "--temperature", "-1"],
            "temperature",
        ),
        generate(
            "generate: temperature NaN",
            &["--class", "0", "--temperature", "NaN"],
            "temperature",
        ),
        generate(
            "generate: top-k beyond the vocabulary",
            &["--class", "0", "--top-k", "100000"],
            "top-k",
        ),
        generate(
            "generate: negative top-k",
            &["--class", "0", "--top-k", "-3"],
            "top-k",
        ),
        generate(
            "generate: top-p above 1",
            &["--class", "0", "--top-p", "1.5"],
            "top-p",
        ),
        generate(
            "generate: top-p 0",
            &["--class", "0", "--top-p", "0"],
            "top-p",
        ),
        generate(
            "generate: negative cfg-scale",
            &["--class", "0", "--cfg-scale", "-2"],
            "cfg-scale",
        ),
        generate(
            "generate: a non-number cfg-scale",
            &["--class", "0", "--cfg-scale", "lots"],
            "cfg-scale",
        ),
        generate(
            "generate: batch size 0",
            &["--class", "0", "--batch-size", "0"],
            "batch",
        ),
        generate(
            "generate: an SJD window of 0",
            &["--class", "0", "--decode", "sjd", "--sjd-window", "0"],
            "window",
        ),
        generate(
            "generate: an image size the tokenizer cannot tile",
            &[
                "--class",
                "0",
                "--gpt-ckpt",
                &f.gpt,
                "--vq-ckpt",
                &f.vq,
                "--image-size",
                "70",
            ],
            "70",
        ),
        // PNG records.
        generate(
            "generate: --from a PNG without a record",
            &["--from", &f.png_without_record],
            "plain.png",
        ),
        generate(
            "generate: --from a PNG whose models are gone",
            &["--from", &f.png_of_gone_models],
            "gone",
        ),
        generate(
            "generate: --from a missing PNG",
            &["--from", "/no/such/image.png"],
            "/no/such/image.png",
        ),
        // Outputs.
        case(
            "generate: an output folder that cannot be written",
            &[
                "generate",
                "--backend",
                "cpu",
                "--class",
                "0",
                "--out",
                unwritable,
            ],
            "llamagen-cannot-write-here",
            None,
        ),
        case(
            "generate: --out-dir is a file",
            &[
                "generate",
                "--backend",
                "cpu",
                "--class",
                "0",
                "--out-dir",
                &existing,
            ],
            "existing.safetensors",
            Some(f.existing.clone()),
        ),
        // info.
        case(
            "info: a PNG without a record",
            &["info", &f.png_without_record],
            "plain.png",
            None,
        ),
        case("info: not an image", &["info", &f.text], "notes.pt", None),
        case(
            "info: a missing file",
            &["info", "/no/such/image.png"],
            "/no/such/image.png",
            None,
        ),
        // inspect.
        case(
            "inspect: missing file",
            &["inspect", "/no/such/file.pt"],
            "/no/such/file.pt",
            None,
        ),
        case(
            "inspect: empty file",
            &["inspect", &f.empty],
            "empty.pt",
            None,
        ),
        case(
            "inspect: truncated .pt",
            &["inspect", &f.truncated_pt],
            "truncated.pt",
            None,
        ),
        case(
            "inspect: a folder",
            &["inspect", &f.folder],
            "folder.pt",
            None,
        ),
        case(
            "inspect: unknown named size",
            &["inspect", "--config", "GPT-Q"],
            "GPT-Q",
            None,
        ),
        // convert.
        case(
            "convert: missing input",
            &["convert", "/no/such/file.pt", &st],
            "/no/such/file.pt",
            Some(safetensors.clone()),
        ),
        case(
            "convert: truncated input",
            &["convert", &f.truncated_pt, &st],
            "truncated.pt",
            Some(safetensors.clone()),
        ),
        case(
            "convert: an output that exists",
            &["convert", &tiny_gpt, &existing],
            "existing.safetensors",
            Some(f.existing.clone()),
        ),
        case(
            "convert: an output folder that cannot be written",
            &[
                "convert",
                &tiny_gpt,
                "/proc/llamagen-cannot-write-here/w.safetensors",
            ],
            "llamagen-cannot-write-here",
            None,
        ),
        // reconstruct.
        case(
            "reconstruct: not an image",
            &["reconstruct", "--backend", "cpu", "--out-dir", &rc, &f.text],
            "notes.pt",
            Some(recon.clone()),
        ),
        case(
            "reconstruct: a missing image",
            &[
                "reconstruct",
                "--backend",
                "cpu",
                "--out-dir",
                &rc,
                "/no/such/image.png",
            ],
            "/no/such/image.png",
            Some(recon.clone()),
        ),
        case(
            "reconstruct: a truncated tokenizer",
            &[
                "reconstruct",
                "--backend",
                "cpu",
                "--vq-ckpt",
                &f.truncated_safetensors,
                "--out-dir",
                &rc,
                &f.png_without_record,
            ],
            "truncated.safetensors",
            Some(recon.clone()),
        ),
        // sample.
        case(
            "sample: class out of range",
            &[
                "sample",
                "--backend",
                "cpu",
                "--class",
                "1000",
                "--num-per-class",
                "1",
                "--out",
                &n,
            ],
            "out of range",
            Some(npz.clone()),
        ),
        case(
            "sample: temperature 0",
            &[
                "sample",
                "--backend",
                "cpu",
                "--num-per-class",
                "1",
                "--temperature",
                "0",
                "--out",
                &n,
            ],
            "temperature",
            Some(npz.clone()),
        ),
        case(
            "sample: a missing generator",
            &[
                "sample",
                "--backend",
                "cpu",
                "--num-per-class",
                "1",
                "--gpt-ckpt",
                "/no/such/gpt.pt",
                "--vq-ckpt",
                &f.vq,
                "--out",
                &n,
            ],
            "/no/such/gpt.pt",
            Some(npz.clone()),
        ),
        // train-vq.
        case(
            "train-vq: a missing data folder",
            &[
                "train-vq",
                "--backend",
                "cpu",
                "--data",
                "/no/such/images",
                "--out",
                &r,
                "--steps",
                "1",
            ],
            "/no/such/images",
            Some(run.clone()),
        ),
        case(
            "train-vq: a file for a data folder",
            &[
                "train-vq",
                "--backend",
                "cpu",
                "--data",
                &f.text,
                "--out",
                &r,
                "--steps",
                "1",
            ],
            "notes.pt",
            Some(run.clone()),
        ),
        case(
            "train-vq: --resume with no run",
            &[
                "train-vq",
                "--backend",
                "cpu",
                "--data",
                &f.data,
                "--out",
                &r,
                "--steps",
                "1",
                "--resume",
            ],
            "resume",
            Some(run.clone()),
        ),
        case(
            "train-vq: an image size the configuration cannot tile",
            &[
                "train-vq",
                "--backend",
                "cpu",
                "--data",
                &f.data,
                "--out",
                &r,
                "--steps",
                "1",
                "--image-size",
                "70",
            ],
            "70",
            Some(run.clone()),
        ),
        // extract-codes.
        case(
            "extract-codes: a missing tokenizer",
            &[
                "extract-codes",
                "--backend",
                "cpu",
                "--data",
                &f.data,
                "--vq-ckpt",
                "/no/such/vq.pt",
                "--out",
                &co,
            ],
            "/no/such/vq.pt",
            Some(codes_out.clone()),
        ),
        case(
            "extract-codes: a generator for a tokenizer",
            &[
                "extract-codes",
                "--backend",
                "cpu",
                "--data",
                &f.data,
                "--vq-ckpt",
                &f.gpt,
                "--out",
                &co,
            ],
            "gpt.safetensors",
            Some(codes_out.clone()),
        ),
        case(
            "extract-codes: a missing data folder",
            &[
                "extract-codes",
                "--backend",
                "cpu",
                "--data",
                "/no/such/images",
                "--vq-ckpt",
                &f.vq,
                "--out",
                &co,
            ],
            "/no/such/images",
            Some(codes_out.clone()),
        ),
        // train-gpt.
        case(
            "train-gpt: a missing codes file",
            &[
                "train-gpt",
                "--backend",
                "cpu",
                "--codes",
                "/no/such/x.codes",
                "--out",
                &r,
                "--steps",
                "1",
            ],
            "/no/such/x.codes",
            Some(run.clone()),
        ),
        case(
            "train-gpt: a file that is not a codes file",
            &[
                "train-gpt",
                "--backend",
                "cpu",
                "--codes",
                &f.text,
                "--out",
                &r,
                "--steps",
                "1",
            ],
            "notes.pt",
            Some(run.clone()),
        ),
        case(
            "train-gpt: --resume with no run",
            &[
                "train-gpt",
                "--backend",
                "cpu",
                "--codes",
                &f.codes,
                "--out",
                &r,
                "--steps",
                "1",
                "--resume",
                "--gpt-model",
                "GPT-B",
                "--dim",
                "16",
                "--n-layer",
                "1",
                "--n-head",
                "2",
            ],
            "resume",
            Some(run.clone()),
        ),
        case(
            "train-gpt: a validation set of another tokenizer",
            &[
                "train-gpt",
                "--backend",
                "cpu",
                "--codes",
                &f.codes,
                "--val-codes",
                &f.codes_of_another_tokenizer,
                "--out",
                &r,
                "--steps",
                "1",
                "--dim",
                "16",
                "--n-layer",
                "1",
                "--n-head",
                "2",
            ],
            "do not match",
            Some(run.clone()),
        ),
        case(
            "train-gpt: a tokenizer that did not make the codes",
            &[
                "train-gpt",
                "--backend",
                "cpu",
                "--codes",
                &f.codes,
                "--vq-ckpt",
                &f.vq,
                "--out",
                &r,
                "--steps",
                "1",
                "--dim",
                "16",
                "--n-layer",
                "1",
                "--n-head",
                "2",
            ],
            "codes file was made by",
            Some(run.clone()),
        ),
        // eval-classes.
        case(
            "eval-classes: a missing classifier",
            &[
                "eval-classes",
                "--classifier",
                "/no/such/judge.mpk",
                "--num",
                "1",
            ],
            "/no/such/judge.mpk",
            None,
        ),
        case(
            "eval-classes: a missing generator",
            &[
                "eval-classes",
                "--gpt-ckpt",
                "/no/such/gpt.pt",
                "--vq-ckpt",
                &f.vq,
                "--num",
                "1",
            ],
            "/no/such/gpt.pt",
            None,
        ),
        case(
            "eval-classes: temperature 0",
            &["eval-classes", "--num", "1", "--temperature", "0"],
            "temperature",
            None,
        ),
    ]
}

#[test]
fn every_bad_input_is_one_clear_error_with_a_hint_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let cases = cases(&files);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let existing = std::fs::read(&files.existing).unwrap();
    let mut failures = Vec::new();
    let outputs = dir.path().join("out");
    for case in &cases {
        // Each case starts from an empty output folder: what one case wrote cannot decide
        // the next.
        std::fs::remove_dir_all(&outputs).unwrap();
        std::fs::create_dir(&outputs).unwrap();
        let before = case.output.as_ref().map(|p| std::fs::read(p).ok());
        let out = llamagen().args(&case.args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let mut wrong = Vec::new();
        if out.status.success() {
            wrong.push("exit status 0".to_string());
        }
        let errors = err.lines().filter(|l| l.starts_with("error:")).count();
        if errors != 1 {
            wrong.push(format!("{errors} `error:` lines"));
        }
        if !err.contains(case.expect) {
            wrong.push(format!("no {:?} in the message", case.expect));
        }
        if !err.lines().any(|l| l.starts_with("hint:")) && !err.contains("try '--help'") {
            wrong.push("no hint".into());
        }
        if err.contains("panicked") || err.contains("stopped unexpectedly") {
            wrong.push("panic text".into());
        }
        if let (Some(path), Some(before)) = (&case.output, before)
            && std::fs::read(path).ok() != before
            && !(before.is_none() && path.is_dir() && dir_is_empty(path))
        {
            wrong.push(format!("{} was written", path.display()));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n  llamagen {}\n  {}",
                case.name,
                wrong.join(", "),
                case.args.join(" "),
                err.trim().replace('\n', "\n  ")
            ));
        }
    }
    assert!(
        std::fs::read(&files.existing).unwrap() == existing,
        "existing.safetensors was replaced"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

/// A file that cannot be read at all gets a hint about the file, not the options that override
/// an inferred configuration (they cannot help it).
#[test]
fn an_unreadable_checkpoint_is_hinted_as_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    for gpt in [&f.truncated_pt, &f.truncated_safetensors] {
        let out = llamagen()
            .args(["generate", "--backend", "cpu", "--class", "0"])
            .args(["--gpt-ckpt", gpt, "--vq-ckpt", &f.vq])
            .arg("--out")
            .arg(dir.path().join("x.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let hint = err.lines().find(|l| l.starts_with("hint:")).unwrap_or("");
        assert!(
            hint.contains("not a checkpoint this tool can read"),
            "{gpt}: {err}"
        );
        assert!(!hint.contains("--n-head"), "{gpt}: {err}");
    }
}
