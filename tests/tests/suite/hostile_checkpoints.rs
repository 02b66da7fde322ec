//! Checkpoints written to attack their reader. A `.pt` file is a zip holding a pickle, and a
//! pickle is a small program: Python's `torch.load` without `weights_only` would run what it
//! calls. This project reads pickles without running anything, so each file here must be
//! refused (or its hostile part ignored) with a clear error, quickly, in bounded memory, and
//! without any side effect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llamagen::checkpoint::{StateDict, WeightsChoice};

/// Writes a PyTorch-style zip (`archive/data.pkl`, `archive/version`, storages under
/// `archive/data/`) holding `pickle`.
fn write_pt(path: &Path, pickle: &[u8], storages: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    for (name, bytes) in storages {
        zip.start_file(format!("archive/data/{name}"), stored)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Pickle opcodes (protocol 2), enough to write the attacks by hand.
mod op {
    pub const PROTO2: &[u8] = b"\x80\x02";
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const REDUCE: u8 = b'R';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const SETITEM: u8 = b's';
    pub const BINPERSID: u8 = b'Q';
    pub const NONE: u8 = b'N';
    pub const NEWFALSE: u8 = 0x89;

    /// GLOBAL `module.name`.
    pub fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    /// BINUNICODE.
    pub fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((s.len() as u32).to_le_bytes());
        v.extend(s.as_bytes());
        v
    }

    /// LONG1: any integer up to 8 bytes, little-endian two's complement.
    pub fn int(n: i64) -> Vec<u8> {
        let mut v = vec![0x8a, 8];
        v.extend(n.to_le_bytes());
        v
    }
}

/// A pickle calling `module.name(argument)`, at the top level or as the value of a state
/// dict's tensor.
fn call(module: &str, name: &str, argument: &str, in_a_dict: bool) -> Vec<u8> {
    let mut p = op::PROTO2.to_vec();
    if in_a_dict {
        p.push(op::EMPTY_DICT);
        p.extend(op::text("tok_embeddings.weight"));
    }
    p.extend(op::global(module, name));
    p.extend(op::text(argument));
    p.push(op::TUPLE1);
    p.push(op::REDUCE);
    if in_a_dict {
        p.push(op::SETITEM);
    }
    p.push(op::STOP);
    p
}

/// Opens `path` as the CLI does, on a thread of its own, and says how it ended and how long
/// it took. A panic is a test failure; a stack overflow or an abort ends the test binary.
fn open(path: &Path) -> (Result<(), String>, Duration) {
    let path = path.to_path_buf();
    let start = Instant::now();
    let result = std::thread::spawn(move || {
        let sd = StateDict::open(&path, WeightsChoice::PreferEma).map_err(|e| e.to_string())?;
        // Whatever was read: every tensor's values, as loading reads them.
        let device = Default::default();
        let w = llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(&sd, &device);
        for key in sd.keys() {
            w.data(key).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .join()
    .expect("reading a hostile checkpoint panicked");
    (result, start.elapsed())
}

fn marker(dir: &Path) -> PathBuf {
    dir.join("ran")
}

#[test]
fn a_pickle_that_would_run_a_command_runs_nothing_and_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ran = marker(dir.path());
    let command = format!("touch {}", ran.display());
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("subprocess", "check_output"),
        ("builtins", "eval"),
        ("builtins", "exec"),
    ] {
        for in_a_dict in [false, true] {
            let path = dir.path().join(format!("{module}-{name}-{in_a_dict}.pt"));
            write_pt(&path, &call(module, name, &command, in_a_dict), &[]);
            let (result, took) = open(&path);
            assert!(
                result.is_err(),
                "{module}.{name} (in a dict: {in_a_dict}) was accepted"
            );
            let err = result.unwrap_err();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(took < Duration::from_secs(5), "{module}.{name}: {took:?}");
            assert!(!ran.exists(), "{module}.{name} ran its command");
        }
    }
}

#[test]
fn a_pickle_that_imports_arbitrary_modules_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("import.pt");
    // builtins.__import__("os"), then getattr(module, "system")("…"): the classic chain.
    let mut p = op::PROTO2.to_vec();
    p.extend(op::global("builtins", "getattr"));
    p.push(op::MARK);
    p.extend(op::global("builtins", "__import__"));
    p.extend(op::text("os"));
    p.push(op::TUPLE1);
    p.push(op::REDUCE);
    p.extend(op::text("system"));
    p.push(op::TUPLE);
    p.push(op::REDUCE);
    p.extend(op::text(&format!("touch {}", marker(dir.path()).display())));
    p.push(op::TUPLE1);
    p.push(op::REDUCE);
    p.push(op::STOP);
    write_pt(&path, &p, &[]);
    let (result, _) = open(&path);
    assert!(result.is_err(), "an importing pickle was accepted");
    assert!(!marker(dir.path()).exists());
}

#[test]
fn deeply_nested_pickles_are_refused_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    for depth in [10_000usize, 1_000_000] {
        // [[[[…]]]]: each list appended to the one before it.
        let mut p = op::PROTO2.to_vec();
        p.extend(std::iter::repeat_n(op::EMPTY_LIST, depth));
        p.extend(std::iter::repeat_n(op::APPEND, depth - 1));
        p.push(op::STOP);
        let lists = dir.path().join(format!("lists-{depth}.pt"));
        write_pt(&lists, &p, &[]);
        let (result, took) = open(&lists);
        assert!(
            result.is_err(),
            "nested lists ({depth}) were taken as a state dict"
        );
        assert!(
            took < Duration::from_secs(10),
            "{depth} levels took {took:?}"
        );

        // The same depth of MARKs with nothing closing them.
        let mut p = op::PROTO2.to_vec();
        p.extend(std::iter::repeat_n(op::MARK, depth));
        p.push(op::STOP);
        let marks = dir.path().join(format!("marks-{depth}.pt"));
        write_pt(&marks, &p, &[]);
        let (result, took) = open(&marks);
        assert!(result.is_err());
        assert!(
            took < Duration::from_secs(10),
            "{depth} marks took {took:?}"
        );
    }
}

/// `{"w": torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, None)}` over a
/// storage of `storage_numel` floats whose bytes are `bytes`.
fn tensor_pickle(storage_numel: i64, shape: &[i64]) -> Vec<u8> {
    let mut p = op::PROTO2.to_vec();
    p.push(op::EMPTY_DICT);
    p.extend(op::text("w"));
    p.extend(op::global("torch._utils", "_rebuild_tensor_v2"));
    p.push(op::MARK);
    // The persistent id: ('storage', torch.FloatStorage, '0', 'cpu', numel).
    p.push(op::MARK);
    p.extend(op::text("storage"));
    p.extend(op::global("torch", "FloatStorage"));
    p.extend(op::text("0"));
    p.extend(op::text("cpu"));
    p.extend(op::int(storage_numel));
    p.push(op::TUPLE);
    p.push(op::BINPERSID);
    p.extend(op::int(0));
    p.push(op::MARK);
    for &d in shape {
        p.extend(op::int(d));
    }
    p.push(op::TUPLE);
    p.push(op::MARK);
    let mut stride = 1i64;
    let mut strides = Vec::new();
    for &d in shape.iter().rev() {
        strides.push(stride);
        stride = stride.wrapping_mul(d);
    }
    for s in strides.iter().rev() {
        p.extend(op::int(*s));
    }
    p.push(op::TUPLE);
    p.push(op::NEWFALSE);
    p.push(op::NONE);
    p.push(op::TUPLE);
    p.push(op::REDUCE);
    p.push(op::SETITEM);
    p.push(op::STOP);
    p
}

#[test]
fn a_well_formed_tensor_pickle_reads_back() {
    // The control for the attacks below: the same hand-written pickle with honest sizes loads.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("honest.pt");
    let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_pt(&path, &tensor_pickle(6, &[2, 3]), &[("0", &values)]);
    let sd = StateDict::open(&path, WeightsChoice::Model).unwrap();
    assert_eq!(sd.shape("w"), Some(vec![2, 3]));
    let device = Default::default();
    let w = llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(&sd, &device);
    let data = w.data("w").unwrap();
    assert_eq!(
        data.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
}

#[test]
fn huge_declared_sizes_are_refused_quickly_without_allocating_them() {
    let dir = tempfile::tempdir().unwrap();
    let tiny: Vec<u8> = vec![0; 24];
    for (name, numel, shape) in [
        // A terabyte-scale tensor over 24 bytes of storage.
        ("terabyte", 1i64 << 40, vec![1i64 << 20, 1 << 20]),
        // A shape whose element count overflows 64 bits.
        ("overflow", 6, vec![i64::MAX / 2, 4]),
        // Negative sizes.
        ("negative", 6, vec![-1, 6]),
        // A storage that claims more than its file holds.
        ("short", 1 << 30, vec![1 << 30]),
    ] {
        let path = dir.path().join(format!("{name}.pt"));
        write_pt(&path, &tensor_pickle(numel, &shape), &[("0", &tiny)]);
        let (result, took) = open(&path);
        assert!(result.is_err(), "{name}: accepted");
        assert!(took < Duration::from_secs(5), "{name}: {took:?}");
    }
}
