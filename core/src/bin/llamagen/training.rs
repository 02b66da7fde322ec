//! What the training subcommands share (feature `train`): progress lines, output and resume
//! checks, checkpoints to load, the replica plan, and the small shape networks' fitting loop.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::DeviceOps;
use indicatif::{ProgressBar, ProgressStyle};
use llamagen::backend::BackendKind;
use llamagen::train::{Autodiff, classifier};
use llamagen::vq::VqModel;

use crate::common::{ensure_writable_folder, folder_of};

/// A progress bar with a message (losses) on a terminal; otherwise a log line on stderr each
/// time the count passes a multiple of `every` (and at the end), so that a run writing to a
/// file still says how far it is.
pub(crate) struct Progress {
    pub(crate) bar: ProgressBar,
    tty: bool,
    every: u64,
    start: Instant,
    total: u64,
    /// What is counted: "steps", "images".
    unit: &'static str,
    /// The count at the last log line.
    logged: std::cell::Cell<u64>,
}

impl Progress {
    pub(crate) fn new(first: u64, total: u64, every: u64) -> Self {
        Self::counting(first, total, every, "steps")
    }

    pub(crate) fn counting(first: u64, total: u64, every: u64, unit: &'static str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "[{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
                ))
                .expect("valid template"),
            );
            b.set_position(first);
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            tty,
            every: every.max(1),
            start: Instant::now(),
            total,
            unit,
            logged: std::cell::Cell::new(first),
        }
    }

    pub(crate) fn step(&self, step: u64, first: u64, msg: String) {
        if self.tty {
            self.bar.set_position(step);
            self.bar.set_message(msg);
        } else if step / self.every > self.logged.get() / self.every || step == self.total {
            self.logged.set(step);
            let done = (step - first) as f64;
            let secs = self.start.elapsed().as_secs_f64();
            let rate = done / secs.max(1e-9);
            let eta = (self.total - step) as f64 / rate.max(1e-9);
            let unit = self.unit;
            let label = unit.strip_suffix('s').unwrap_or(unit);
            let msg = if msg.is_empty() {
                msg
            } else {
                format!(" {msg}")
            };
            eprintln!(
                "{label} {step}/{}{msg} ({rate:.2} {unit}/s, ETA {:.0}s)",
                self.total, eta
            );
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub(crate) fn println(&self, line: String) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

/// The error of a run stopped by Ctrl-C after saving `dir`, with the way on.
pub(crate) fn stopped(step: u64, total: u64, saved: PathBuf) -> anyhow::Error {
    anyhow::Error::new(crate::interrupt::Stopped { step, total, saved })
}

pub(crate) fn parse_mult(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| anyhow!("--ch-mult takes numbers separated by commas, e.g. 1,2,2,4"))
        })
        .collect()
}

/// Checked before any training or encoding starts, so that no finished work is lost to an
/// output that cannot be written: the folder (`folder`) or the file's folder exists or can be
/// made, and takes a file.
pub(crate) fn check_output(path: &Path, folder: bool) -> Result<()> {
    let dir = if folder {
        path.to_path_buf()
    } else {
        folder_of(path)
    };
    ensure_writable_folder(&dir)
}

/// `--resume` needs a run to go on from: a folder without a checkpoint is refused rather than
/// quietly started afresh.
pub(crate) fn check_resume(out: &Path, resume: bool) -> Result<()> {
    if resume && llamagen::train::checkpoint::latest(out)?.is_none() {
        bail!(
            "--resume: {} holds no checkpoint to go on from\nhint: leave --resume out to start a new run there (a run saves its first checkpoint after --save-every steps)",
            out.display()
        );
    }
    Ok(())
}

/// A file, or a run folder's latest `model.safetensors`.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    match llamagen::bundle::run_folder_checkpoint(path) {
        Ok(Some(dir)) => Ok(dir.join("model.safetensors")),
        Ok(None) => Ok(path.to_path_buf()),
        Err(e) => bail!("{} holds no checkpoint (`latest`: {e})", path.display()),
    }
}

pub(crate) fn load_vq<B: Backend>(path: &Path, device: &B::Device) -> Result<VqModel<B>> {
    let sd = llamagen::checkpoint::StateDict::open(
        path,
        llamagen::checkpoint::WeightsChoice::PreferEma,
    )?;
    let cfg = sd
        .infer_vq_config()
        .with_context(|| format!("tokenizer {}", path.display()))?;
    VqModel::load(&sd, &cfg, device).with_context(|| format!("tokenizer {}", path.display()))
}

/// `--replicas`: a whole number of at least 1.
pub(crate) fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("at least one replica is needed".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// The devices of the data-parallel replicas: `--replicas N`, or by default one per CPU core
/// on the CPU backend and one per GPU with cuda (1 on wgpu), never more than the batch size.
/// With cuda, replica i runs on GPU i (cycling); otherwise all run on `device`.
pub(crate) fn replica_plan<B: Backend>(
    asked: Option<usize>,
    kind: BackendKind,
    device: &B::Device,
    batch_size: usize,
) -> Vec<B::Device> {
    let gpus = match kind {
        BackendKind::Cuda => B::device_count(device.id().type_id),
        _ => 1,
    };
    let n = match asked {
        Some(n) => n,
        None if kind == BackendKind::Cpu => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        None => gpus,
    };
    let devices = llamagen::train::replica_devices(device, n.clamp(1, batch_size.max(1)), gpus);
    if devices.len() > 1 {
        let mut names: Vec<String> = Vec::new();
        for name in devices.iter().map(|d| format!("{d:?}")) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        eprintln!(
            "{} data-parallel replicas on {}",
            devices.len(),
            names.join(", ")
        );
    }
    devices
}

/// Seeds the CPU backend with `seed`, then makes the network with `init` and trains it with a
/// progress bar; returns it for inference.
pub(crate) fn fit_shape_net<M>(
    init: impl FnOnce(&burn::tensor::Device<llamagen::backend::Cpu>) -> M,
    steps: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    augment: bool,
) -> M::InnerModule
where
    M: classifier::ShapeNet<Autodiff<llamagen::backend::Cpu>>
        + AutodiffModule<Autodiff<llamagen::backend::Cpu>>,
{
    type B = llamagen::backend::Cpu;
    let device = Default::default();
    B::seed(&device, seed);
    let model = init(&device);
    let progress = Progress::new(0, steps as u64, 100);
    let model = classifier::train_net(
        model,
        steps,
        batch,
        lr,
        seed,
        augment,
        &device,
        |step, loss| progress.step(step as u64 + 1, 0, format!("loss {loss:.4}")),
    );
    progress.bar.finish_and_clear();
    model.valid()
}
