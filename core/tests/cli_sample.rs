//! `llamagen sample`: the .npz of a sample run, its resumption, and what it refuses.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use llamagen::eval::npz;
use llamagen::image_io::read_png_record;

fn llamagen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
}

/// `sample` on the bundled class demo, on the CPU, with `extra` arguments.
fn sample(extra: &[&str]) -> Command {
    let mut cmd = llamagen();
    cmd.args(["sample", "--backend", "cpu", "--seed", "5"])
        .args(extra);
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn pngs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".png"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sample_writes_the_array_the_evaluator_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.npz");
    let o = run(sample(&[
        "--num-per-class",
        "2",
        "--class",
        "0",
        "--class",
        "star",
        "--batch-size",
        "3",
        "--decode",
        "sjd",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success());
    let (shape, data) = npz::read_u8(&out, "arr_0").unwrap();
    assert_eq!(shape, vec![4, 64, 64, 3], "arr_0: [N, H, W, 3]");
    assert_eq!(data.len(), 4 * 64 * 64 * 3);
    // Each image of the array is the folder's PNG of that number, whose record says what it is.
    let folder = dir.path().join("demo");
    let star = read_png_record(&folder.join("000002.png")).unwrap().samples[0].clone();
    assert_eq!(star.class_name.as_deref(), Some("star"));
    assert_eq!((star.index, star.params.seed), (2, 7));
    assert_eq!(star.decoding.describe(), "sjd (window 16)");
    for i in 0..4 {
        let png = image::open(folder.join(format!("{i:06}.png")))
            .unwrap()
            .to_rgb8();
        let len = 64 * 64 * 3;
        assert_eq!(png.as_raw()[..], data[i * len..(i + 1) * len], "image {i}");
    }
    // Not all four images are the same picture.
    assert_ne!(data[..12288], data[3 * 12288..]);
}

#[test]
fn a_stopped_sample_run_goes_on_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<String> {
        ["--num-per-class", "1", "--batch-size", "1", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.display().to_string()])
            .collect()
    };
    let whole = dir.path().join("whole.npz");
    let a: Vec<String> = args(&whole);
    assert!(
        run(sample(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .status
            .success()
    );

    // The same run, killed (as hard as a power cut) once its first image is on disk.
    let cut = dir.path().join("cut.npz");
    let folder = dir.path().join("cut");
    let b: Vec<String> = args(&cut);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let mut child = sample(&b)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while pngs(&folder) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be stopped"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no image after 300 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = pngs(&folder);
    assert!((1..10).contains(&kept), "{kept} of 10 images at the stop");
    assert!(!cut.exists(), "no .npz from a stopped run");
    assert!(!npz::partial_path(&cut).exists());

    // Run again: it keeps what was made and makes the rest.
    let o = run(sample(&b));
    assert!(o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&format!(
            "{kept} of 10 images made by an earlier run are kept"
        )),
        "{said}"
    );
    let (shape_a, data_a) = npz::read_u8(&whole, "arr_0").unwrap();
    let (shape_b, data_b) = npz::read_u8(&cut, "arr_0").unwrap();
    assert_eq!(shape_a, vec![10, 64, 64, 3]);
    assert_eq!(shape_a, shape_b);
    assert!(
        data_a == data_b,
        "the resumed run's images are the uninterrupted run's"
    );
}

#[test]
fn sample_refuses_what_it_cannot_finish_and_replaces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.npz");
    let refused = |extra: &[&str], words: &str| {
        let o = run(sample(extra));
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(said.contains(words), "{extra:?}: {said}");
        assert!(!said.contains("panicked"), "{said}");
    };
    let o = out.to_str().unwrap();
    refused(&["--out", o], "--num-per-class N");
    refused(
        &["--num-per-class", "1", "--out", "s.png"],
        "ending in .npz",
    );
    refused(&["--num-per-class", "0", "--out", o], "at least 1");
    refused(
        &["--num-per-class", "1", "--class", "unicorn", "--out", o],
        "unicorn",
    );
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "a red star\n").unwrap();
    refused(
        &[
            "--prompt-file",
            prompts.to_str().unwrap(),
            "--gpt-ckpt",
            "x.pt",
            "--out",
            o,
        ],
        "--vq-ckpt",
    );
    refused(
        &["--num-per-class", "1", "--top-k", "-1", "--out", o],
        "--top-k",
    );
    assert!(!out.exists());

    // An .npz that exists is not replaced.
    std::fs::write(&out, b"earlier").unwrap();
    refused(&["--num-per-class", "1", "--out", o], "exists");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier");

    // A folder of another run (another guidance scale) is not mixed into this one.
    let other = dir.path().join("t.npz");
    let t = other.to_str().unwrap();
    let first = run(sample(&[
        "--num-per-class",
        "1",
        "--class",
        "0",
        "--cfg-scale",
        "2",
        "--out",
        t,
    ]));
    assert!(first.status.success());
    std::fs::remove_file(&other).unwrap();
    refused(
        &[
            "--num-per-class",
            "1",
            "--class",
            "0",
            "--cfg-scale",
            "3",
            "--out",
            t,
        ],
        "cfg_scale",
    );
    assert!(!other.exists());
}
