//! What the CLI test binaries share: the binary under test and the reference fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen::checkpoint::{state_dict, write_safetensors};
use llamagen::config::{GptConfig, VqConfig};
use llamagen::gpt::Transformer;
use llamagen::vq::VqModel;

pub fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

/// Runs `cmd` and returns its stdout; the test fails with its stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tiny generator of the training tests (`train-gpt` arguments).
pub const TINY_GPT: [&str; 8] = [
    "--dim",
    "32",
    "--n-layer",
    "2",
    "--n-head",
    "4",
    "--batch-size",
    "4",
];

/// `generate --from png --out out` on the CPU; its stderr is printed when it fails, so a
/// failure the caller did not expect shows why.
pub fn remake(png: &Path, out: &Path) -> std::process::Output {
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

/// The bundled models.
pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

pub fn reference_dir() -> PathBuf {
    std::env::var("LLAMAGEN_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/reference")
        })
}

/// A random tiny tokenizer (4× downsampling, 64 codes) and a matching class-conditional GPT
/// (10 classes, 4×4 tokens → 16 px images), written as safetensors.
pub fn tiny_models(dir: &Path, codebook: usize) -> (PathBuf, PathBuf) {
    let device = Default::default();
    let vq_cfg = VqConfig {
        ch: 32,
        z_channels: 32,
        codebook_size: codebook,
        encoder_ch_mult: vec![1, 1, 2],
        decoder_ch_mult: vec![1, 1, 2],
        ..VqConfig::default()
    };
    let vq = VqModel::<llamagen::backend::Cpu>::init(&vq_cfg, &device).unwrap();
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
    let mut gpt = Transformer::<llamagen::backend::Cpu>::init(&gpt_cfg, &device).unwrap();
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
