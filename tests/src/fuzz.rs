//! The bodies of the fuzz targets. `fuzz/fuzz_targets/*.rs` hand libFuzzer's inputs to these
//! functions (`scripts/fuzz.sh`), and `tests/tests/suite/fuzz_replay.rs` feeds them every kept input
//! on stable Rust as part of `cargo test`.
//!
//! Each body takes arbitrary bytes and reaches a reader the way a user's file reaches it: written
//! to disk under the name the reader expects, then opened by path. Any `Ok` or `Err` is a pass;
//! a panic, an abort, an allocation beyond the fuzzer's memory limit or a run beyond its time
//! limit is a bug.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use llamagen::backend::Cpu;
use llamagen::checkpoint::{GptHints, Shapes, StateDict, WeightsChoice};
use llamagen::config::GptConfig;

/// Every target: its name (the folder of its corpus under `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("checkpoint_pt", checkpoint_pt),
    ("checkpoint_safetensors", checkpoint_safetensors),
    ("infer_config", infer_config),
    ("png_record", png_record),
    ("model_card", model_card),
    ("codes_file", codes_file),
    ("t5_config", t5_config),
    ("prompt_tokenizer", prompt_tokenizer),
    ("caption", caption),
];

/// The body of the target `name`.
/// libFuzzer's panic hook aborts on every panic, also on those the project contains at its edge
/// (`llamagen::error::contain`, around dependencies that panic on bad input): each target calls
/// this first, so that a contained panic is an answer, not a crash.
pub fn pass_contained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let outer = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !llamagen::error::panic_is_contained() {
                outer(info)
            }
        }));
    });
}

pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

thread_local! {
    /// One scratch folder per thread, kept for the process's life (a fuzzer calls a body
    /// millions of times). In memory (`/dev/shm`) where there is one.
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Writes `data` to `name` in the thread's scratch folder and returns the path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch_dir();
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write to the scratch folder");
    path
}

fn scratch_dir() -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let builder = tempfile::Builder::new()
                .prefix("llamagen-fuzz-")
                .tempdir_in(shm);
            builder
                .or_else(|_| tempfile::tempdir())
                .expect("a scratch folder")
        });
        dir.path().to_path_buf()
    })
}

/// A checkpoint as every user-facing path reads it: open (model or EMA weights), infer both
/// configurations, check the keys, and where a configuration fits, build the model from it.
fn checkpoint(path: &Path) {
    let Ok(sd) = StateDict::open(path, WeightsChoice::PreferEma) else {
        return;
    };
    let device = Default::default();
    let _ = sd.quantization();
    if let Ok(cfg) = sd.infer_gpt_config(&GptHints::default()) {
        let report = sd.check(&cfg.state_dict_specs());
        if report.into_result().is_ok() {
            let _ = llamagen::gpt::Transformer::<Cpu>::load(&sd, &cfg, &device);
        }
    }
    if let Ok(cfg) = sd.infer_vq_config() {
        let report = sd.check(&cfg.state_dict_specs());
        if report.into_result().is_ok() {
            let _ = llamagen::vq::VqModel::<Cpu>::load(&sd, &cfg, &device);
        }
    }
    // Every tensor's values, as the loaders read them.
    let weights = llamagen::checkpoint::Weights::<Cpu>::new(&sd, &device);
    for key in sd.keys() {
        let _ = weights.data(key);
    }
}

/// A `.pt` file: PyTorch's zip of a pickle and its storages (burn-store's pickle reader).
pub fn checkpoint_pt(data: &[u8]) {
    checkpoint(&scratch_file("model.pt", data));
}

/// A `.safetensors` file, with this project's metadata (stored configs, quantization).
pub fn checkpoint_safetensors(data: &[u8]) {
    checkpoint(&scratch_file("model.safetensors", data));
}

/// Configuration inference and the key check on any set of names and shapes. The input is
/// text, one tensor a line: a name, then its dimensions (`tok_embeddings.weight 1000 64`); the
/// first line may give hints (`hints IMAGE_SIZE DOWNSAMPLE N_HEAD`).
pub fn infer_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut shapes = Shapes::new();
    let mut hints = GptHints::default();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let numbers: Vec<usize> = words.filter_map(|w| w.parse().ok()).collect();
        if i == 0 && name == "hints" {
            hints.image_size = numbers.first().copied();
            hints.downsample = numbers.get(1).copied();
            hints.n_head = numbers.get(2).copied();
            continue;
        }
        shapes.insert(name.to_string(), numbers);
    }
    if let Ok(cfg) = llamagen::checkpoint::infer_gpt_config(&shapes, &hints) {
        check_against(&shapes, &cfg);
    }
    if let Ok(cfg) = llamagen::checkpoint::infer_vq_config(&shapes) {
        let _ = cfg.state_dict_specs();
    }
}

/// The key check of a GPT configuration against shapes, spec by spec.
fn check_against(shapes: &Shapes, cfg: &GptConfig) {
    for spec in cfg.state_dict_specs() {
        let _ = shapes.get(&spec.name) == Some(&spec.shape);
    }
}

/// A PNG's generation record (iTXt), as `info` and `generate --from` read it.
pub fn png_record(data: &[u8]) {
    let path = scratch_file("image.png", data);
    if let Ok(record) = llamagen::image_io::read_png_record(&path) {
        let _ = record.summary();
        for sample in &record.samples {
            let _ = sample.params.validate();
            let _ = llamagen::image_io::sample_file_name(0, sample);
            let _ = llamagen::bundle::is_bundled(&sample.gpt);
        }
    }
}

/// A model card (`model.json`).
pub fn model_card(data: &[u8]) {
    let path = scratch_file("model.json", data);
    let _ = llamagen::bundle::ModelCard::read(&path);
}

/// The codes file `extract-codes` writes and `train-gpt` reads.
pub fn codes_file(data: &[u8]) {
    let path = scratch_file("codes.bin", data);
    if let Ok(set) = llamagen::train::data::CodeSet::read(&path) {
        for image in 0..set.meta.num_images.min(4) {
            let _ = set.grid(image, set.meta.centre_aug());
        }
    }
}

/// A T5 folder's `config.json`, beside a small set of weights that it may or may not fit.
pub fn t5_config(data: &[u8]) {
    let dir = scratch_dir().join("t5");
    std::fs::create_dir_all(&dir).expect("scratch t5 folder");
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        // The tiny reference encoder's weights, when the reference set is at hand.
        let src = crate::reference_dir().join("t5_tiny_hf/model.safetensors");
        if std::fs::copy(&src, &weights).is_err() {
            std::fs::write(&weights, b"").expect("scratch weights");
        }
    }
    std::fs::write(dir.join("config.json"), data).expect("scratch config");
    if let Ok(folder) = llamagen::text::T5Folder::open(&dir) {
        let _ = folder.load_encoder::<Cpu>(&Default::default());
    }
}

/// An arbitrary `tokenizer.json` and a prompt, separated by the first byte 0xFF (the prompt is
/// empty without one).
pub fn prompt_tokenizer(data: &[u8]) {
    let (json, prompt) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let path = scratch_file("tokenizer.json", json);
    if let Ok(tok) = llamagen::text::PromptTokenizer::open(&path, Some(1), Some(0)) {
        let prompt = String::from_utf8_lossy(prompt);
        let _ = tok.tokenize(&prompt, 120);
        let _ = tok.tokenize(&llamagen::text::clean::clean_caption(&prompt), 8);
    }
}

/// The official caption cleaning on arbitrary text.
pub fn caption(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = llamagen::text::clean::clean_caption(&text);
    let _ = llamagen::text::clean::preprocess_prompt(&text);
    let _ = llamagen::text::clean::lower_strip(&text);
}
