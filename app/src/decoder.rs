//! The preview decoder: a thread beside the worker's token loop that turns codes into pixels for
//! the live preview, so that generation never waits for it.
//!
//! Once per model, at load (before the model is reported loaded), [`colour_pass`] gives the
//! **mean colours**: a sample of the codebook decoded alone (1 × 1 token grids), and an affine
//! fit from codebook vector to mean colour for every other code, so the mosaic can draw any code
//! at once. Then the decoder does three kinds of work, with its own handle on the tokenizer:
//! - during a run, **patches** of the codes the run uses and **refreshes**: a true VQ decode of
//!   the rows generated so far of one image (the one whose last decode is oldest), with the
//!   latest tokens only (a newer request replaces one not started);
//! - between runs, the **atlas fill**: every other code's patch, in chunks.
//!
//! During a run it is held to a time budget ([`PreviewPolicy::budget`]): a decode starts only
//! when the decodes so far cost at most that share of the machine's time since the run began.
//! On the CPU its threads are rayon pools of its own (burn-flex and gemm run on the current
//! pool, so its work never queues on the generator's threads): the patches of a run's codes on
//! one thread, the refreshes and the atlas fill on a pool as wide as the machine, both at the
//! lowest priority (nice 19), so that they take what the generator leaves. (Linux's
//! `SCHED_IDLE` was tried: it starved the preview entirely whenever any other process kept the
//! cores busy; a normal-priority preview thread slowed the generator's fork-join steps far more
//! than its share of CPU time.)

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::TensorData;
use image::RgbImage;
use llamagen::image_io::tensor_to_images;
use llamagen::vq::VqModel;

pub use crate::message::Colours;
use crate::message::{Event, Patches};
use crate::timeline::{DecodeKind, DecodeSpan, Span, Timeline};

/// How much of the machine the preview may use while a run generates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviewPolicy {
    /// The share of the machine's time its decodes may take during a run (0 = none until the
    /// run ends, 1 = no limit).
    pub budget: f64,
    /// How the budget is counted.
    pub clock: BudgetClock,
    /// Threads of the decoder's pool for the big decodes (refreshes, the atlas fill).
    pub threads: usize,
    /// Run the big decodes at the lowest priority (nice 19, where the system has it).
    pub low_priority: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetClock {
    /// CPU time of the decoder's threads against `cores` × the run's wall time.
    Cpu { cores: usize },
    /// Wall time of its decodes against the run's wall time (a GPU: one device, shared).
    Wall,
}

impl PreviewPolicy {
    /// On the CPU: 15 % of the machine, a pool as wide as the machine, lowest priority.
    pub fn cpu() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            budget: 0.15,
            clock: BudgetClock::Cpu { cores },
            threads: cores,
            low_priority: true,
        }
    }

    /// On a GPU: the same device as the generator, 10 % of its time.
    pub fn gpu() -> Self {
        Self {
            budget: 0.10,
            clock: BudgetClock::Wall,
            threads: 1,
            low_priority: false,
        }
    }
}

/// A true decode of the partial grids of a batch, requested by the token loop.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub job: u64,
    /// The job's request the batch starts at.
    pub first: usize,
    pub grid: usize,
    /// Every sample's tokens so far.
    pub tokens: Vec<Vec<u32>>,
}

/// Codebook samples decoded for the mean colours (at most; all codes of a smaller codebook).
pub const COLOUR_SAMPLE: usize = 48;
/// Atlas entries decoded per background chunk.
const ATLAS_CHUNK: usize = 32;
/// Patches of a run's codes decoded at once.
const PATCH_CHUNK: usize = 16;

struct Queue {
    quit: bool,
    /// The batch generating now: its job, and when it began.
    run: Option<(u64, Instant)>,
    refresh: Option<Refresh>,
    /// Codes a run uses (patches not necessarily decoded yet).
    wanted: Vec<u32>,
}

struct Shared {
    queue: Mutex<Queue>,
    signal: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain data; a panic elsewhere leaves it usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The worker's handle on its preview decoder thread; dropping it stops the thread.
pub struct PreviewDecoder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the decoder thread sends back with.
pub struct Outlet {
    pub events: Sender<Event>,
    pub wake: Arc<dyn Fn() + Send + Sync>,
    pub timeline: Arc<Mutex<Timeline>>,
}

impl PreviewDecoder {
    /// Starts the decoder; `decoded` are the codes whose patches the UI already has (the
    /// colour pass's sample).
    pub fn spawn<B: Backend>(
        vq: VqModel<B>,
        decoded: &[u32],
        policy: PreviewPolicy,
        outlet: Outlet,
    ) -> Self {
        let mut sent = vec![false; vq.config.codebook_size];
        for &c in decoded {
            if let Some(s) = sent.get_mut(c as usize) {
                *s = true;
            }
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                quit: false,
                run: None,
                refresh: None,
                wanted: Vec::new(),
            }),
            signal: Condvar::new(),
        });
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llamagen-preview".into())
            .spawn(move || {
                let pools = Pools {
                    quick: preview_pool(1, policy.low_priority, "quick"),
                    big: preview_pool(policy.threads, policy.low_priority, "big"),
                };
                let mut state = DecoderThread {
                    vq,
                    policy,
                    outlet,
                    shared: inner,
                    pools,
                    sent,
                    used: 0.0,
                    shown: HashMap::new(),
                    last_was_refresh: false,
                };
                state.run();
            })
            .expect("spawn the preview decoder thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// A batch starts generating: the budget starts over; older requests are dropped. The run
    /// ends when the guard is dropped.
    pub fn begin_run(&self, job: u64) -> RunGuard<'_> {
        let mut q = self.shared.lock();
        q.run = Some((job, Instant::now()));
        q.refresh = None;
        q.wanted.clear();
        drop(q);
        self.shared.signal.notify_one();
        RunGuard(self)
    }

    /// The batch has finished generating: a refresh not started is dropped (the final decode
    /// replaces it).
    fn end_run(&self) {
        let mut q = self.shared.lock();
        q.run = None;
        q.refresh = None;
        drop(q);
        self.shared.signal.notify_one();
    }

    /// Codes the run drew: their patches are decoded when the budget allows.
    pub fn want(&self, codes: &[u32]) {
        let mut q = self.shared.lock();
        q.wanted.extend_from_slice(codes);
        drop(q);
        self.shared.signal.notify_one();
    }

    /// A true decode of these grids, replacing any request not started yet.
    pub fn refresh(&self, request: Refresh) {
        let mut q = self.shared.lock();
        q.refresh = Some(request);
        drop(q);
        self.shared.signal.notify_one();
    }
}

/// A batch generating (see [`PreviewDecoder::begin_run`]); dropped when it stops, however it
/// stops.
pub struct RunGuard<'a>(&'a PreviewDecoder);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.end_run();
    }
}

impl Drop for PreviewDecoder {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.signal.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pool of the decoder: burn-flex and gemm split their work over the current rayon pool, so
/// inside it the preview uses these threads and never the global pool the generator runs on.
fn preview_pool(threads: usize, low: bool, name: &'static str) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |i| format!("llamagen-preview-{name}-{i}"))
        .start_handler(move |_| {
            if low {
                lower_priority();
            }
        })
        .build()
        .ok()
}

/// The calling thread at the lowest priority (nice 19; on Linux `setpriority` with 0 changes
/// the calling thread only).
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: a plain system call on the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// CPU seconds the calling thread has used.
#[cfg(target_os = "linux")]
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

enum Work {
    Patches(Vec<u32>, DecodeKind),
    Refresh(Refresh),
}

struct Pools {
    /// Small, urgent decodes: the colours, a run's patches.
    quick: Option<rayon::ThreadPool>,
    /// Big ones: refreshes, the atlas fill.
    big: Option<rayon::ThreadPool>,
}

struct DecoderThread<B: Backend> {
    vq: VqModel<B>,
    policy: PreviewPolicy,
    outlet: Outlet,
    shared: Arc<Shared>,
    pools: Pools,
    /// Codes whose exact patch has been sent.
    sent: Vec<bool>,
    /// Budget used by the current run's decodes (seconds of the budget's clock).
    used: f64,
    /// Rows of each image (job, request) its latest refresh showed.
    shown: HashMap<(u64, usize), usize>,
    /// Patches and refreshes take turns when both wait.
    last_was_refresh: bool,
}

impl<B: Backend> DecoderThread<B> {
    fn emit(&self, event: Event) {
        let _ = self.outlet.events.send(event);
        (self.outlet.wake)();
    }

    fn run(&mut self) {
        let mut run_seen: Option<u64> = None;
        loop {
            let shared = self.shared.clone();
            let (work, during_run) = {
                let mut q = shared.lock();
                loop {
                    if q.quit {
                        return;
                    }
                    // A new run: its budget starts from nothing.
                    let run = q.run.map(|(job, _)| job);
                    if run != run_seen {
                        run_seen = run;
                        self.used = 0.0;
                    }
                    match self.next_work(&mut q) {
                        Ok(w) => break (w, q.run.is_some()),
                        Err(None) => {
                            q = shared.signal.wait(q).unwrap_or_else(|p| p.into_inner());
                        }
                        Err(Some(until)) => {
                            let left = until.saturating_duration_since(Instant::now());
                            q = shared
                                .signal
                                .wait_timeout(q, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                }
            };
            self.execute(work, during_run);
        }
    }

    /// The next piece of work, or how long to wait for one (`None`: until told).
    fn next_work(&mut self, q: &mut Queue) -> Result<Work, Option<Instant>> {
        let sent = &self.sent;
        q.wanted
            .retain(|&c| (c as usize) < sent.len() && !sent[c as usize]);
        match q.run {
            Some((_, began)) => {
                if q.wanted.is_empty() && q.refresh.is_none() {
                    return Err(None);
                }
                // Within the budget: the decodes so far cost at most its share of the time
                // since the run began.
                let share = self.policy.budget * self.capacity();
                if share <= 0.0 {
                    return Err(None);
                }
                let ready = began + Duration::from_secs_f64(self.used / share);
                if Instant::now() < ready {
                    return Err(Some(ready));
                }
                let refresh_turn = q.wanted.is_empty() || !self.last_was_refresh;
                match q.refresh.take() {
                    Some(r) if refresh_turn => Ok(Work::Refresh(r)),
                    other => {
                        q.refresh = other;
                        Ok(Work::Patches(
                            take_codes(&mut q.wanted, PATCH_CHUNK),
                            DecodeKind::Patches,
                        ))
                    }
                }
            }
            None => {
                q.refresh = None;
                if !q.wanted.is_empty() {
                    return Ok(Work::Patches(
                        take_codes(&mut q.wanted, PATCH_CHUNK),
                        DecodeKind::Patches,
                    ));
                }
                let fill: Vec<u32> = (0..self.sent.len() as u32)
                    .filter(|&c| !self.sent[c as usize])
                    .take(ATLAS_CHUNK)
                    .collect();
                if fill.is_empty() {
                    Err(None)
                } else {
                    Ok(Work::Patches(fill, DecodeKind::Atlas))
                }
            }
        }
    }

    fn capacity(&self) -> f64 {
        match self.policy.clock {
            BudgetClock::Cpu { cores } => cores.max(1) as f64,
            BudgetClock::Wall => 1.0,
        }
    }

    /// Runs `f` on the decoder's pool with (a handle on) the tokenizer; returns its result and
    /// what it cost on the budget's clock.
    fn measured<T: Send>(&self, big: bool, f: impl FnOnce(VqModel<B>) -> T + Send) -> (T, f64) {
        let start = Instant::now();
        // Modules are Send but not Sync: the pool gets its own handle (the weights are shared).
        let vq = self.vq.clone();
        let f = move || f(vq);
        let pool = if big {
            &self.pools.big
        } else {
            &self.pools.quick
        };
        let Some(pool) = pool else {
            let out = f();
            return (out, start.elapsed().as_secs_f64());
        };
        match self.policy.clock {
            BudgetClock::Wall => {
                let out = pool.install(f);
                (out, start.elapsed().as_secs_f64())
            }
            BudgetClock::Cpu { .. } => {
                let before = pool_cpu_seconds(pool);
                let out = pool.install(f);
                let after = pool_cpu_seconds(pool);
                let cost = match (before, after) {
                    (Some(b), Some(a)) => a - b,
                    // No per-thread clock: every thread busy for the whole wall time.
                    _ => start.elapsed().as_secs_f64() * pool.current_num_threads() as f64,
                };
                (out, cost)
            }
        }
    }

    fn execute(&mut self, work: Work, during_run: bool) {
        let start = Instant::now();
        let (kind, cost) = match work {
            Work::Patches(codes, kind) => {
                let big = kind == DecodeKind::Atlas;
                let (patches, cost) = self.measured(big, |vq| decode_patches(&vq, &codes));
                for &c in &codes {
                    self.sent[c as usize] = true;
                }
                self.emit(Event::Patches(patches));
                (kind, cost)
            }
            Work::Refresh(request) => {
                self.last_was_refresh = true;
                let cost = self.refresh(request);
                (DecodeKind::Refresh, cost)
            }
        };
        if kind == DecodeKind::Patches {
            self.last_was_refresh = false;
        }
        if during_run {
            self.used += cost;
        }
        let end = Instant::now();
        if let Ok(mut t) = self.outlet.timeline.lock() {
            t.decodes.push(DecodeSpan {
                kind,
                span: Span { start, end },
                thread: std::thread::current().id(),
                cost,
                during_run,
            });
        }
    }

    /// Decodes the complete rows of the image whose last refresh shows the fewest of them.
    fn refresh(&mut self, request: Refresh) -> f64 {
        let grid = request.grid.max(1);
        let pick = request
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let rows = (t.len() / grid).min(grid);
                let shown = self
                    .shown
                    .get(&(request.job, request.first + i))
                    .copied()
                    .unwrap_or(0);
                (i, rows, shown)
            })
            .filter(|&(_, rows, shown)| rows > shown)
            .min_by_key(|&(_, _, shown)| shown);
        let Some((i, rows, _)) = pick else {
            return 0.0;
        };
        let tokens = &request.tokens[i][..rows * grid];
        let (image, cost) = self.measured(true, |vq| decode_rows(&vq, tokens, rows, grid));
        self.shown.insert((request.job, request.first + i), rows);
        self.emit(Event::Partial {
            job: request.job,
            first: request.first + i,
            tokens_done: rows * grid,
            images: vec![image],
        });
        cost
    }
}

/// The mean colours of every code (see [`mean_colours`]), with the patches of the sample it
/// decoded: run once per model, at load.
pub fn colour_pass<B: Backend>(vq: &VqModel<B>) -> (Patches, Colours) {
    let codes = vq.config.codebook_size;
    let sample: Vec<u32> = if codes <= COLOUR_SAMPLE {
        (0..codes as u32).collect()
    } else {
        (0..COLOUR_SAMPLE)
            .map(|i| (i * codes / COLOUR_SAMPLE) as u32)
            .collect()
    };
    let patches = decode_patches(vq, &sample);
    let codebook = vq
        .quantize
        .codebook()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    let colours = mean_colours(&patches, codes, &codebook);
    (patches, colours)
}

/// The sum of the pool's threads' CPU clocks (`None` where there is no per-thread clock).
fn pool_cpu_seconds(pool: &rayon::ThreadPool) -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        Some(pool.broadcast(|_| thread_cpu_seconds()).into_iter().sum())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pool;
        None
    }
}

fn take_codes(wanted: &mut Vec<u32>, n: usize) -> Vec<u32> {
    let mut set = BTreeSet::new();
    let mut rest = Vec::new();
    for c in wanted.drain(..) {
        if set.len() < n || set.contains(&c) {
            set.insert(c);
        } else {
            rest.push(c);
        }
    }
    *wanted = rest;
    set.into_iter().collect()
}

/// A true decode of the first `rows` rows of a grid (what has been generated of it).
fn decode_rows<B: Backend>(vq: &VqModel<B>, tokens: &[u32], rows: usize, grid: usize) -> RgbImage {
    let device = vq.quant_conv.weight.device();
    let ids: Vec<i64> = tokens.iter().map(|&c| c as i64).collect();
    let indices = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, rows * grid]), &device);
    tensor_to_images(vq.decode_code(indices, rows, grid))
        .pop()
        .unwrap_or_default()
}

/// Decodes each code alone (a 1 × 1 token grid) into its patch.
pub fn decode_patches<B: Backend>(vq: &VqModel<B>, codes: &[u32]) -> Patches {
    let patch = vq.config.downsample();
    if codes.is_empty() {
        return Patches {
            patch,
            codes: Vec::new(),
            rgb: Vec::new(),
        };
    }
    let device = vq.quant_conv.weight.device();
    let ids: Vec<i64> = codes.iter().map(|&c| c as i64).collect();
    let indices = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [codes.len(), 1]), &device);
    let images = tensor_to_images(vq.decode_code(indices, 1, 1));
    let patch = images.first().map_or(patch, |i| i.width() as usize);
    let mut rgb = Vec::with_capacity(codes.len() * patch * patch * 3);
    for img in &images {
        rgb.extend_from_slice(img.as_raw());
    }
    Patches {
        patch,
        codes: codes.to_vec(),
        rgb,
    }
}

/// Mean colours of every code: measured for the decoded `patches`, predicted for the others by
/// an affine least-squares fit from the codebook vector (`codebook`: `codes × dim`, row-major)
/// to the measured means.
pub fn mean_colours(patches: &Patches, codes: usize, codebook: &[f32]) -> Colours {
    let area = (patches.patch * patches.patch).max(1);
    let measured: Vec<(u32, [f64; 3])> = patches
        .codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let px = &patches.rgb[i * area * 3..(i + 1) * area * 3];
            let mut sum = [0f64; 3];
            for p in px.chunks_exact(3) {
                for k in 0..3 {
                    sum[k] += p[k] as f64;
                }
            }
            (c, sum.map(|s| s / area as f64))
        })
        .collect();
    let dim = if codes > 0 { codebook.len() / codes } else { 0 };
    let fit = (dim > 0 && codebook.len() == codes * dim)
        .then(|| {
            let xs: Vec<&[f32]> = measured
                .iter()
                .map(|(c, _)| &codebook[*c as usize * dim..(*c as usize + 1) * dim])
                .collect();
            let ys: Vec<[f64; 3]> = measured.iter().map(|(_, m)| *m).collect();
            fit_affine(&xs, &ys)
        })
        .flatten();
    let overall = {
        let n = measured.len().max(1) as f64;
        let mut m = [0f64; 3];
        for (_, c) in &measured {
            for k in 0..3 {
                m[k] += c[k] / n;
            }
        }
        m
    };
    let mut rgb: Vec<[u8; 3]> = (0..codes)
        .map(|c| {
            let predicted = match &fit {
                Some(w) => predict(w, &codebook[c * dim..(c + 1) * dim]),
                None => overall,
            };
            predicted.map(|v| v.round().clamp(0.0, 255.0) as u8)
        })
        .collect();
    for (c, m) in &measured {
        if let Some(slot) = rgb.get_mut(*c as usize) {
            *slot = m.map(|v| v.round().clamp(0.0, 255.0) as u8);
        }
    }
    Colours {
        rgb,
        measured: measured.iter().map(|(c, _)| *c).collect(),
    }
}

/// Weights `(dim + 1) × 3` (the last row the bias) of a ridge-regularised affine fit.
fn fit_affine(xs: &[&[f32]], ys: &[[f64; 3]]) -> Option<Vec<[f64; 3]>> {
    let dim = xs.first()?.len();
    let n = dim + 1;
    let mut a = vec![vec![0f64; n]; n];
    let mut b = vec![[0f64; 3]; n];
    for (x, y) in xs.iter().zip(ys) {
        let row: Vec<f64> = x
            .iter()
            .map(|&v| v as f64)
            .chain(std::iter::once(1.0))
            .collect();
        for i in 0..n {
            for j in 0..n {
                a[i][j] += row[i] * row[j];
            }
            for k in 0..3 {
                b[i][k] += row[i] * y[k];
            }
        }
    }
    // A little ridge on the weights (not the bias) keeps a small sample well posed.
    for (i, r) in a.iter_mut().enumerate().take(dim) {
        r[i] += 1e-3 * xs.len() as f64;
    }
    solve(a, b)
}

fn predict(w: &[[f64; 3]], x: &[f32]) -> [f64; 3] {
    let mut out = w[x.len()];
    for (xi, wi) in x.iter().zip(w) {
        for k in 0..3 {
            out[k] += *xi as f64 * wi[k];
        }
    }
    out
}

/// Solves `a · w = b` (Gaussian elimination with partial pivoting); `None` when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<[f64; 3]>) -> Option<Vec<[f64; 3]>> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            for k in 0..3 {
                b[row][k] -= f * b[col][k];
            }
        }
    }
    let mut w = vec![[0f64; 3]; n];
    for row in (0..n).rev() {
        for k in 0..3 {
            let mut s = b[row][k];
            for j in row + 1..n {
                s -= a[row][j] * w[j][k];
            }
            w[row][k] = s / a[row][row];
        }
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_affine_fit_recovers_a_linear_colour_map() {
        // Colour = 100 + 50·x0 − 30·x1 (red), 20·x1 (green), 200 (blue).
        let xs: Vec<Vec<f32>> = (0..20)
            .map(|i| vec![(i as f32 * 0.37).sin(), (i as f32 * 0.91).cos()])
            .collect();
        let ys: Vec<[f64; 3]> = xs
            .iter()
            .map(|x| {
                [
                    100.0 + 50.0 * x[0] as f64 - 30.0 * x[1] as f64,
                    20.0 * x[1] as f64,
                    200.0,
                ]
            })
            .collect();
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let w = fit_affine(&refs, &ys).unwrap();
        let p = predict(&w, &[0.5, -0.25]);
        assert!((p[0] - (100.0 + 25.0 + 7.5)).abs() < 1.0, "{p:?}");
        assert!((p[1] + 5.0).abs() < 1.0, "{p:?}");
        assert!((p[2] - 200.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn wanted_codes_come_out_once_and_in_chunks() {
        let mut wanted = vec![5, 3, 5, 9, 1, 3, 7];
        assert_eq!(take_codes(&mut wanted, 3), vec![3, 5, 9]);
        assert_eq!(wanted, vec![1, 7]);
        assert_eq!(take_codes(&mut wanted, 3), vec![1, 7]);
        assert!(wanted.is_empty());
    }
}
