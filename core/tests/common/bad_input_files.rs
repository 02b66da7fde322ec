//! The files the bad-input table points at: real models, broken copies of them, a PNG without a
//! record and one whose models are gone, codes files from this and another tokenizer.

use std::path::{Path, PathBuf};

use llamagen::train::data::{CodeSet, CodesMeta};

use super::common::{assets, llamagen, reference_dir};

/// Files the cases point at, made once in `dir`.
pub struct Files {
    pub dir: PathBuf,
    pub gpt: String,
    pub vq: String,
    pub empty: String,
    pub truncated_pt: String,
    pub truncated_safetensors: String,
    pub folder: String,
    pub text: String,
    pub data: String,
    pub png_without_record: String,
    pub png_of_gone_models: String,
    pub text_gpt: String,
    pub codes: String,
    pub codes_of_another_tokenizer: String,
    pub existing: PathBuf,
}

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn files(dir: &Path) -> Files {
    let gpt = assets().join("demo/gpt.safetensors");
    let vq = assets().join("demo/vq.safetensors");
    let empty = dir.join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    let reference_pt = std::fs::read(reference_dir().join("gpt_c2i_tiny.pt")).unwrap();
    let truncated_pt = dir.join("truncated.pt");
    std::fs::write(&truncated_pt, &reference_pt[..reference_pt.len() / 2]).unwrap();
    let st = std::fs::read(&gpt).unwrap();
    let truncated_safetensors = dir.join("truncated.safetensors");
    std::fs::write(&truncated_safetensors, &st[..st.len() / 3]).unwrap();
    let folder = dir.join("folder.pt");
    std::fs::create_dir(&folder).unwrap();
    let text = dir.join("notes.pt");
    std::fs::write(&text, "these are not weights\n").unwrap();

    // An image folder of the demo's kind.
    let data = dir.join("data");
    let out = llamagen()
        .args([
            "dataset",
            "shapes",
            "--per-class",
            "2",
            "--size",
            "64",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let png_without_record = dir.join("plain.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 10, 10]))
        .save(&png_without_record)
        .unwrap();
    // A record naming models that are no longer there: made with copies, then deleted.
    let gone = dir.join("gone");
    std::fs::create_dir(&gone).unwrap();
    std::fs::copy(&gpt, gone.join("gpt.safetensors")).unwrap();
    std::fs::copy(&vq, gone.join("vq.safetensors")).unwrap();
    let png_of_gone_models = dir.join("made-with-gone-models.png");
    let out = llamagen()
        .args([
            "generate",
            "--backend",
            "cpu",
            "--class",
            "0",
            "--seed",
            "1",
            "--gpt-ckpt",
        ])
        .arg(gone.join("gpt.safetensors"))
        .arg("--vq-ckpt")
        .arg(gone.join("vq.safetensors"))
        .arg("--out")
        .arg(&png_of_gone_models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&gone).unwrap();

    let meta = |tokenizer: &str, codebook_size| CodesMeta {
        num_images: 2,
        num_aug: 1,
        seq_len: 4,
        codebook_size,
        image_size: 16,
        class_names: vec!["a".into(), "b".into()],
        tokenizer: tokenizer.into(),
        captions: Vec::new(),
    };
    let codes = dir.join("toy.codes");
    CodeSet {
        meta: meta("toy", 16),
        labels: vec![0, 1],
        codes: (0..8).collect(),
    }
    .write(&codes)
    .unwrap();
    let codes_of_another_tokenizer = dir.join("other.codes");
    CodeSet {
        meta: meta("another tokenizer", 32),
        labels: vec![0, 1],
        codes: (0..8).collect(),
    }
    .write(&codes_of_another_tokenizer)
    .unwrap();

    let existing = dir.join("existing.safetensors");
    std::fs::write(&existing, b"an earlier file that must survive").unwrap();

    Files {
        dir: dir.to_path_buf(),
        gpt: s(&gpt),
        vq: s(&vq),
        empty: s(&empty),
        truncated_pt: s(&truncated_pt),
        truncated_safetensors: s(&truncated_safetensors),
        folder: s(&folder),
        text: s(&text),
        data: s(&data),
        png_without_record: s(&png_without_record),
        png_of_gone_models: s(&png_of_gone_models),
        text_gpt: s(&assets().join("demo-text/gpt.safetensors")),
        codes: s(&codes),
        codes_of_another_tokenizer: s(&codes_of_another_tokenizer),
        existing,
    }
}
