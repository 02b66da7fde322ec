//! Every input the fuzz targets keep, replayed on stable Rust: the corpora `scripts/fuzz.sh`
//! grew and minimised (`fuzz/corpus/<target>/`) and the inputs that once found a bug
//! (`fuzz/regressions/<target>/`, each with the fix's test beside its cause). The readers must
//! answer every one with a value or an error, never a panic.

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut count = 0;
    for (target, body) in llamagen_tests::fuzz::TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_kept_corpus_input_is_answered_without_a_panic() {
    let n = replay("corpus");
    assert!(n > 0, "no corpus under fuzz/corpus");
}

#[test]
fn every_input_that_once_found_a_bug_is_answered_without_a_panic() {
    // A rank-0 embedding for the configuration inference, a malformed decoder entry for the
    // prompt tokenizer (fuzz/regressions/<target>/), and whatever is added after them.
    let n = replay("regressions");
    assert!(n >= 4, "{n} regression inputs under fuzz/regressions");
}

/// The real files the corpora grew from: every reference checkpoint through both checkpoint
/// targets (the extension decides the reader, so each file is also read as the other format).
#[test]
fn the_seed_checkpoints_pass_through_both_readers() {
    let dir = llamagen_tests::reference_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "pt"
            || (ext == "safetensors" && std::fs::metadata(&path).unwrap().len() < 1 << 20)
        {
            let data = std::fs::read(&path).unwrap();
            llamagen_tests::fuzz::checkpoint_pt(&data);
            llamagen_tests::fuzz::checkpoint_safetensors(&data);
            n += 1;
        }
    }
    assert!(n >= 4, "reference checkpoints under {}", dir.display());
}
