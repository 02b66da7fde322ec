//! Text prompts end to end: the reference fixtures' tiny t2i GPT and tiny T5 (widths from the
//! manifest), a random tokenizer of the GPT's vocabulary, and a tokenizer.json the test writes.

mod common;

use common::{llamagen, reference_dir, tiny_models};
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
    let (_, vq) = tiny_models(&root, get("vocab_size"));
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
    let (_, vq) = tiny_models(&c2i_dir, c["vocab_size"].as_u64().unwrap() as usize);
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
