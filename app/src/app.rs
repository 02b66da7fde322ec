//! The studio's state and what it does with it. The UI thread only draws and sends commands to
//! the worker; everything a model computes arrives as [`Event`]s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;
use llamagen::classes::ClassNames;
use llamagen::config::ModelType;
use llamagen::generate::Request;
use llamagen::image_io::{
    PngRecord, SampleRecord, next_file_number, read_png_record, sample_file_name, save_png,
};
use llamagen::sampling::SamplerParams;

use crate::explore::{self, Axis};
use crate::preview::Atlas;
use crate::settings::{RecentModel, Settings};
use crate::worker::{Command, Compute, Event, Job, ModelInfo, ModelSpec, WorkerHandle};

pub enum ModelState {
    Loading(String),
    Ready(Box<ModelInfo>),
    Failed(String),
}

/// The prompt encoder of a text-conditional model.
#[derive(Debug, Clone, PartialEq)]
pub enum TextState {
    None,
    Loading,
    Ready {
        dir: PathBuf,
        params: usize,
        /// `bf16`, `f16` or `f32`.
        precision: String,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    Running,
    Done { seconds: f64 },
    Cancelled,
    Failed(String),
}

/// One image of a run: what it was asked for, and what has come back so far.
pub struct Cell {
    pub class: Option<usize>,
    pub prompt: Option<String>,
    pub params: SamplerParams,
    pub label: String,
    pub tokens: Vec<u32>,
    pub probs: Vec<f32>,
    pub entropy: Vec<f32>,
    /// The finished image.
    pub image: Option<RgbImage>,
    pub texture: Option<TextureHandle>,
    /// The latest true decode of the partial grid (its complete rows), and how many tokens it
    /// covers.
    pub partial: Option<(TextureHandle, usize)>,
    /// The CPU-composed mosaic (when the GPU preview is not available).
    pub mosaic: Option<TextureHandle>,
    pub mosaic_len: usize,
}

/// The run on screen: live while its job runs, then its results.
pub struct View {
    pub cells: Vec<Cell>,
    pub columns: usize,
    /// Axis titles and value labels of an X/Y grid.
    pub axes: Option<(String, Vec<String>, String, Vec<String>)>,
    pub job: Option<u64>,
    pub cancel: Arc<AtomicBool>,
    pub started: Instant,
    /// Tokens of all the cells together: to make, and made so far (kept prefixes included).
    pub total: usize,
    /// Tokens of each cell kept from an earlier image (a re-roll).
    pub prefix_len: usize,
    pub done: usize,
    pub status: RunStatus,
    /// How the run decodes, and the forward passes of each of its batches so far (by the
    /// batch's first request).
    pub decoding: llamagen::generate::Decoding,
    pub passes: std::collections::BTreeMap<usize, usize>,
}

impl View {
    pub fn is_running(&self) -> bool {
        self.status == RunStatus::Running
    }

    /// Generated tokens per second (all samples together) and the seconds left.
    pub fn speed(&self) -> (f64, f64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let kept = self.prefix_len * self.cells.len();
        let made = self.done.saturating_sub(kept) as f64;
        let rate = made / secs;
        let left = self.total.saturating_sub(self.done) as f64;
        (rate, if rate > 0.0 { left / rate } else { f64::NAN })
    }
}

/// A finished image of this session.
pub struct GalleryItem {
    pub record: SampleRecord,
    pub image: RgbImage,
    pub texture: TextureHandle,
    pub probs: Vec<f32>,
    pub entropy: Vec<f32>,
    /// The file it was saved to, when it was (the save folder, or "Save PNG…").
    pub saved: Option<PathBuf>,
}

/// What the command line asks the studio to open.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub model: Option<RecentModel>,
    pub t5: Option<PathBuf>,
}

pub struct StudioApp {
    pub settings: Settings,
    pub model: ModelState,
    pub atlas: Arc<Mutex<Atlas>>,
    /// The mosaic shader is installed (a wgpu renderer whose fragment shaders read storage
    /// buffers; otherwise the mosaic is composed on the CPU).
    pub gpu_preview: bool,
    pub view: Option<View>,
    pub gallery: Vec<GalleryItem>,
    /// The last thing worth telling the user (errors included).
    pub message: String,
    pub text: TextState,
    /// Every job sent to the worker, in order.
    pub sent_jobs: Vec<Job>,
    /// Model files being typed into the model panel.
    pub gpt_path: String,
    pub vq_path: String,
    pub image_size: String,
    pub compute: String,
    /// Recent frame times (seconds), for the status bar.
    pub frame_times: Vec<f32>,
    /// Where each cell of the run was drawn last frame (points).
    pub cell_rects: Vec<egui::Rect>,
    worker: WorkerHandle,
    ctx: egui::Context,
    next_job: u64,
    next_atlas: u64,
}

fn now_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_000)
        .unwrap_or(0)
}

impl StudioApp {
    /// Starts the studio: settings from storage, the worker on `compute`, the mosaic shader on
    /// the wgpu renderer when it can run it, and the last model (or the demo) loading.
    pub fn new(cc: &eframe::CreationContext<'_>, compute: Compute) -> Self {
        Self::launch(cc, compute, Launch::default())
    }

    /// [`StudioApp::new`], opening the model and T5 folder given on the command line instead of
    /// the last ones.
    pub fn launch(cc: &eframe::CreationContext<'_>, compute: Compute, launch: Launch) -> Self {
        let mut settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, Settings::KEY))
            .unwrap_or_default();
        if let Some(model) = launch.model {
            settings.remember(model);
        }
        if let Some(dir) = launch.t5 {
            settings.t5_dir = dir.display().to_string();
        }
        let gpu_preview = cc
            .wgpu_render_state
            .as_ref()
            .is_some_and(crate::preview::install);
        Self::with_settings(cc.egui_ctx.clone(), settings, compute, gpu_preview)
    }

    pub fn with_settings(
        ctx: egui::Context,
        settings: Settings,
        compute: Compute,
        gpu_preview: bool,
    ) -> Self {
        let wake_ctx = ctx.clone();
        let describe = compute.describe();
        let worker = WorkerHandle::spawn(compute, move || wake_ctx.request_repaint());
        let (spec, gpt_path, vq_path, image_size) = match &settings.last_model {
            Some(m) => (
                ModelSpec::Files {
                    gpt: m.gpt.clone(),
                    vq: m.vq.clone(),
                    image_size: m.image_size,
                },
                m.gpt.display().to_string(),
                m.vq.display().to_string(),
                m.image_size.map(|s| s.to_string()).unwrap_or_default(),
            ),
            None => (ModelSpec::Demo, String::new(), String::new(), String::new()),
        };
        let app = Self {
            settings,
            model: ModelState::Loading("…".into()),
            atlas: Arc::new(Mutex::new(Atlas::new(0, 1, 0))),
            gpu_preview,
            view: None,
            gallery: Vec::new(),
            message: String::new(),
            text: TextState::None,
            sent_jobs: Vec::new(),
            gpt_path,
            vq_path,
            image_size,
            compute: describe,
            frame_times: Vec::new(),
            cell_rects: Vec::new(),
            worker,
            ctx,
            next_job: 1,
            next_atlas: 1,
        };
        app.worker.send(Command::Load(spec, app.settings.precision));
        app
    }

    pub fn info(&self) -> Option<&ModelInfo> {
        match &self.model {
            ModelState::Ready(i) => Some(i),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.view.as_ref().is_some_and(View::is_running)
    }

    pub fn class_name(&self, class: usize) -> String {
        self.info()
            .and_then(|i| i.class_names.get(class))
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// Class id from an id or a (unique part of a) name.
    pub fn resolve_class(&self, query: &str) -> Result<usize, String> {
        let info = self.info().ok_or("no model is loaded")?;
        ClassNames {
            names: info.class_names.clone(),
        }
        .resolve(query)
        .map_err(|e| e.to_string())
    }

    pub fn open_model(&mut self, spec: ModelSpec) {
        if let Some(v) = &self.view
            && v.is_running()
        {
            v.cancel.store(true, Ordering::Relaxed);
        }
        if let ModelSpec::Files {
            gpt,
            vq,
            image_size,
        } = &spec
        {
            self.settings.remember(RecentModel {
                gpt: gpt.clone(),
                vq: vq.clone(),
                image_size: *image_size,
            });
        } else {
            self.settings.last_model = None;
        }
        self.model = ModelState::Loading(String::new());
        self.worker
            .send(Command::Load(spec, self.settings.precision));
    }

    /// Opens the current model again with its weights in `precision`.
    pub fn set_precision(&mut self, precision: llamagen::Precision) {
        self.settings.precision = precision;
        if let Some(spec) = self.info().map(|i| i.spec.clone()) {
            self.open_model(spec);
        }
    }

    /// The prompts of the prompt box: one a line, blank lines skipped.
    pub fn prompts(&self) -> Vec<String> {
        self.settings
            .prompt
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Loads the T5 folder of the model panel for the loaded text-conditional model.
    pub fn load_text(&mut self) {
        let dir = self.settings.t5_dir.trim();
        if dir.is_empty() {
            self.message = "give the FLAN-T5 folder (config.json, weights, tokenizer.json)".into();
            return;
        }
        self.text = TextState::Loading;
        self.worker.send(Command::LoadText(PathBuf::from(dir)));
    }

    /// Frees the T5 encoder (its cached prompt features go with it).
    pub fn release_text(&mut self) {
        self.worker.send(Command::ReleaseText);
    }

    /// Opens the files typed into the model panel.
    pub fn open_typed_model(&mut self) {
        let size = self.image_size.trim();
        let image_size = if size.is_empty() {
            None
        } else {
            match size.parse::<usize>() {
                Ok(s) if s > 0 => Some(s),
                _ => {
                    self.message =
                        format!("image size '{size}' is not a positive number of pixels");
                    return;
                }
            }
        };
        let (gpt, vq) = (self.gpt_path.trim(), self.vq_path.trim());
        if gpt.is_empty() || vq.is_empty() {
            self.message = "give both a generator (GPT) and a tokenizer (VQ) checkpoint".into();
            return;
        }
        self.open_model(ModelSpec::Files {
            gpt: PathBuf::from(gpt),
            vq: PathBuf::from(vq),
            image_size,
        });
    }

    /// Sampler settings for the next run: the seed re-rolled unless it is locked.
    fn next_params(&mut self) -> SamplerParams {
        if !self.settings.seed_locked {
            self.settings.sampler.seed = now_seed();
        }
        self.settings.sampler
    }

    fn check_ready(&mut self) -> Result<ModelInfo, String> {
        if self.is_running() {
            return Err("a run is in progress: cancel it first (Esc)".into());
        }
        let info = self.info().cloned().ok_or("no model is loaded")?;
        if info.model_type == ModelType::T2i && !matches!(self.text, TextState::Ready { .. }) {
            return Err(
                "this text-conditional model needs its T5 encoder: give the FLAN-T5 folder in the Model panel and press Load T5"
                    .into(),
            );
        }
        self.settings
            .sampler
            .validate()
            .map_err(|e| e.to_string())?;
        Ok(info)
    }

    /// Generates `num_images` images of every selected class (Ctrl+Enter).
    pub fn generate(&mut self) {
        let info = match self.check_ready() {
            Ok(i) => i,
            Err(e) => {
                self.message = e;
                return;
            }
        };
        if info.model_type == ModelType::T2i {
            let prompts = self.prompts();
            if prompts.is_empty() {
                self.message = "write a prompt (one a line)".into();
                return;
            }
            let base = self.next_params();
            let mut cells = Vec::new();
            for prompt in prompts {
                for _ in 0..self.settings.num_images.max(1) {
                    let params = SamplerParams {
                        seed: base.seed.wrapping_add(cells.len() as u64),
                        ..base
                    };
                    let mut cell = self.new_cell(None, params, prompt.clone());
                    cell.prompt = Some(prompt.clone());
                    cells.push(cell);
                }
            }
            let columns = (cells.len() as f64).sqrt().ceil() as usize;
            self.start(cells, columns, None, Vec::new());
            return;
        }
        if self.settings.classes.is_empty() {
            self.message = "pick at least one class".into();
            return;
        }
        if let Some(&c) = self
            .settings
            .classes
            .iter()
            .find(|&&c| c >= info.class_names.len())
        {
            self.message = format!("class {c} is not one of this model's classes");
            return;
        }
        let base = self.next_params();
        let mut cells = Vec::new();
        for &class in &self.settings.classes.clone() {
            for _ in 0..self.settings.num_images.max(1) {
                let params = SamplerParams {
                    seed: base.seed.wrapping_add(cells.len() as u64),
                    ..base
                };
                cells.push(self.new_cell(Some(class), params, self.class_name(class)));
            }
        }
        let columns = (cells.len() as f64).sqrt().ceil() as usize;
        self.start(cells, columns, None, Vec::new());
    }

    /// Runs the X/Y grid as one batch.
    pub fn generate_grid(&mut self) {
        let info = match self.check_ready() {
            Ok(i) => i,
            Err(e) => {
                self.message = e;
                return;
            }
        };
        let t2i = info.model_type == ModelType::T2i;
        let xy = self.settings.xy.clone();
        let wrong_axis = if t2i { Axis::Class } else { Axis::Prompt };
        if xy.x == wrong_axis || xy.y == wrong_axis {
            self.message = format!(
                "this model is {}: it has no {} axis",
                if t2i {
                    "text-conditional"
                } else {
                    "class-conditional"
                },
                wrong_axis.name()
            );
            return;
        }
        let resolve = |q: &str| self.resolve_class(q);
        let parsed = explore::parse_values(xy.x, &xy.x_values, &resolve)
            .and_then(|xs| explore::parse_values(xy.y, &xy.y_values, &resolve).map(|ys| (xs, ys)));
        let (xs, ys) = match parsed {
            Ok(v) => v,
            Err(e) => {
                self.message = e;
                return;
            }
        };
        let prompt = self.prompts().into_iter().next();
        if !t2i && xy.x != Axis::Class && xy.y != Axis::Class && self.settings.classes.is_empty() {
            self.message = "pick a class for the grid (or put classes on an axis)".into();
            return;
        }
        if t2i && xy.x != Axis::Prompt && xy.y != Axis::Prompt && prompt.is_none() {
            self.message = "write a prompt for the grid (or put prompts on an axis)".into();
            return;
        }
        let class = self.settings.classes.first().copied().unwrap_or(0);
        let base = self.next_params();
        let name = |c: usize| self.class_name(c);
        let grid = explore::cells(xy.x, &xs, xy.y, &ys, base, class, prompt.as_deref(), &name);
        for (i, g) in grid.iter().enumerate() {
            if let Err(e) = g.params.validate() {
                self.message = format!("grid cell {} ({}): {e}", i + 1, g.label);
                return;
            }
        }
        let x_labels = xs.iter().map(|v| explore::label(xy.x, v, &name)).collect();
        let y_labels = ys.iter().map(|v| explore::label(xy.y, v, &name)).collect();
        let cells: Vec<Cell> = grid
            .into_iter()
            .map(|g| {
                let mut cell = self.new_cell((!t2i).then_some(g.class), g.params, g.label);
                cell.prompt = if t2i { g.prompt } else { None };
                cell
            })
            .collect();
        let axes = Some((
            xy.x.name().to_string(),
            x_labels,
            xy.y.name().to_string(),
            y_labels,
        ));
        self.start(cells, xs.len(), axes, Vec::new());
    }

    /// Keeps the tokens of `cell` before `position` and re-rolls the rest with a new seed.
    pub fn resample_from(&mut self, cell: usize, position: usize) {
        let Some(view) = &self.view else { return };
        let Some(c) = view.cells.get(cell) else {
            return;
        };
        if view.is_running() || c.tokens.len() <= position {
            return;
        }
        let prefix = c.tokens[..position].to_vec();
        let params = SamplerParams {
            seed: now_seed(),
            ..c.params
        };
        let label = format!("{} · kept {position} tokens", c.label);
        let prompt = c.prompt.clone();
        let mut cell = self.new_cell(c.class, params, label);
        cell.prompt = prompt;
        self.start(vec![cell], 1, None, prefix);
    }

    fn new_cell(&self, class: Option<usize>, params: SamplerParams, label: String) -> Cell {
        Cell {
            class,
            prompt: None,
            params,
            label,
            tokens: Vec::new(),
            probs: Vec::new(),
            entropy: Vec::new(),
            image: None,
            texture: None,
            partial: None,
            mosaic: None,
            mosaic_len: usize::MAX,
        }
    }

    fn start(
        &mut self,
        mut cells: Vec<Cell>,
        columns: usize,
        axes: Option<(String, Vec<String>, String, Vec<String>)>,
        prefix: Vec<u32>,
    ) {
        let Some(info) = self.info() else { return };
        let total = info.grid_size * info.grid_size;
        let n = cells.len();
        let requests: Vec<Request> = cells
            .iter()
            .map(|c| Request {
                prefix: prefix.clone(),
                ..Request::class(c.class.unwrap_or(0), c.params)
            })
            .collect();
        for c in &mut cells {
            c.tokens = prefix.clone();
            c.probs = vec![f32::NAN; prefix.len()];
            c.entropy = vec![f32::NAN; prefix.len()];
        }
        let id = self.next_job;
        self.next_job += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            id,
            requests,
            batch_size: self.settings.batch_size,
            decode_every: self.settings.decode_every,
            cancel: cancel.clone(),
            prompts: cells.iter().map(|c| c.prompt.clone()).collect(),
            decoding: self.settings.decoding,
        };
        self.sent_jobs.push(job.clone());
        self.worker.send(Command::Generate(job));
        self.message.clear();
        self.view = Some(View {
            cells,
            columns: columns.max(1),
            axes,
            job: Some(id),
            cancel,
            started: Instant::now(),
            total: total * n,
            prefix_len: prefix.len(),
            done: prefix.len() * n,
            status: RunStatus::Running,
            decoding: self.settings.decoding,
            passes: Default::default(),
        });
    }

    /// Stops the run between two tokens (Esc).
    pub fn cancel(&mut self) {
        if let Some(v) = &self.view
            && v.is_running()
        {
            v.cancel.store(true, Ordering::Relaxed);
            self.message = "cancelling…".into();
        }
    }

    /// Reads what the worker sent since the last frame.
    pub fn poll(&mut self) {
        while let Ok(event) = self.worker.events.try_recv() {
            self.handle(event);
        }
    }

    /// Waits (tests, scripts) until `done` holds or the time is up; false on timeout.
    pub fn poll_until(&mut self, timeout: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while !done(self) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self
                .worker
                .events
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok(e) => self.handle(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn texture(&self, name: &str, img: &RgbImage) -> TextureHandle {
        let size = [img.width() as usize, img.height() as usize];
        let color = ColorImage::from_rgb(size, img.as_raw());
        self.ctx.load_texture(name, color, TextureOptions::NEAREST)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Loading(what) => self.model = ModelState::Loading(what),
            Event::LoadFailed(e) => {
                self.message = format!("could not open the model: {e}");
                self.model = ModelState::Failed(e);
            }
            Event::Loaded(info) => {
                *self.atlas.lock().expect("atlas lock") =
                    Atlas::new(self.next_atlas, info.patch, info.vocab_size);
                self.next_atlas += 1;
                self.settings
                    .classes
                    .retain(|&c| c < info.class_names.len());
                if self.settings.classes.is_empty() && !info.class_names.is_empty() {
                    self.settings.classes.push(0);
                }
                self.message = format!("loaded {} on {}", info.description, info.compute);
                let t2i = info.model_type == ModelType::T2i;
                if t2i && let Some(dir) = &info.t5_dir {
                    // The model's own text encoder (the card names it).
                    self.settings.t5_dir = dir.display().to_string();
                }
                if info.spec == ModelSpec::TextDemo && self.settings.prompt.trim().is_empty() {
                    self.settings.prompt = "a red star on a blue background".into();
                }
                self.model = ModelState::Ready(info);
                self.text = TextState::None;
                if t2i && !self.settings.t5_dir.trim().is_empty() {
                    self.load_text();
                }
            }
            Event::TextLoaded {
                dir,
                params,
                precision,
                bytes,
            } => {
                self.message = format!(
                    "T5 encoder loaded from {} ({:.1} M parameters, {precision}, {:.1} MB)",
                    dir.display(),
                    params as f64 / 1e6,
                    bytes as f64 / 1e6
                );
                self.text = TextState::Ready {
                    dir,
                    params,
                    precision,
                };
            }
            Event::TextFailed(e) => {
                self.message = format!("could not load the T5 encoder: {e}");
                self.text = TextState::Failed(e);
            }
            Event::TextReleased => self.text = TextState::None,
            Event::Patches(p) => self.atlas.lock().expect("atlas lock").insert(&p),
            Event::Colours(c) => self.atlas.lock().expect("atlas lock").insert_colours(&c),
            Event::Token {
                job,
                first,
                index,
                new,
                probs,
                entropy,
                passes,
                ..
            } => {
                if let Some(v) = self.view.as_mut().filter(|v| v.job == Some(job)) {
                    v.passes.insert(first, passes);
                    for (i, c) in v.cells.iter_mut().skip(first).take(new.len()).enumerate() {
                        if c.tokens.len() == index {
                            c.tokens.push(new[i]);
                            c.probs.push(probs.get(i).copied().unwrap_or(f32::NAN));
                            c.entropy.push(entropy.get(i).copied().unwrap_or(f32::NAN));
                            v.done += 1;
                        }
                    }
                }
            }
            Event::Partial {
                job,
                first,
                tokens_done,
                images,
            } => {
                let textures: Vec<TextureHandle> = images
                    .iter()
                    .enumerate()
                    .map(|(i, img)| self.texture(&format!("partial-{job}-{}", first + i), img))
                    .collect();
                if let Some(v) = self.view.as_mut().filter(|v| v.job == Some(job)) {
                    for (c, t) in v.cells.iter_mut().skip(first).zip(textures) {
                        c.partial = Some((t, tokens_done));
                    }
                }
            }
            Event::Finished {
                job,
                tokens,
                images,
                cancelled,
                seconds,
                sampling,
            } => self.finish(job, tokens, images, cancelled, seconds, sampling),
            Event::Failed { job, error } => {
                if let Some(v) = self.view.as_mut().filter(|v| v.job == Some(job)) {
                    v.status = RunStatus::Failed(error.clone());
                }
                self.message = format!("generation failed: {error}");
            }
        }
    }

    fn finish(
        &mut self,
        job: u64,
        tokens: Vec<Vec<u32>>,
        images: Vec<RgbImage>,
        cancelled: bool,
        seconds: f64,
        sampling: llamagen::sampling::TokenSampling,
    ) {
        let Some(info) = self.info().cloned() else {
            return;
        };
        let textures: Vec<TextureHandle> = images
            .iter()
            .enumerate()
            .map(|(i, img)| self.texture(&format!("image-{job}-{i}"), img))
            .collect();
        let Some(v) = self.view.as_mut().filter(|v| v.job == Some(job)) else {
            return;
        };
        if cancelled {
            v.status = RunStatus::Cancelled;
            self.message = format!("cancelled after {} of {} tokens", v.done, v.total);
            return;
        }
        v.status = RunStatus::Done { seconds };
        let mut new_items = Vec::new();
        for (i, ((c, t), (img, tex))) in v
            .cells
            .iter_mut()
            .zip(tokens)
            .zip(images.into_iter().zip(textures))
            .enumerate()
        {
            c.tokens = t;
            c.image = Some(img.clone());
            c.texture = Some(tex.clone());
            new_items.push(GalleryItem {
                record: SampleRecord {
                    gpt: info.gpt_file.clone(),
                    vq: info.vq_file.clone(),
                    model: info.description.clone(),
                    n_head: Some(info.n_head),
                    image_size: info.image_size,
                    class: c.class,
                    class_name: c.class.and_then(|k| info.class_names.get(k).cloned()),
                    prompt: c.prompt.clone(),
                    params: c.params,
                    index: i,
                    tokens: c.tokens.clone(),
                    sampling,
                    precision: info.precision,
                    quantize: info.quantize,
                    decoding: v.decoding,
                    vq_tile: None,
                },
                image: img,
                texture: tex,
                probs: c.probs.clone(),
                entropy: c.entropy.clone(),
                saved: None,
            });
        }
        let n = new_items.len();
        let from = self.gallery.len();
        self.gallery.extend(new_items);
        self.message = format!("{n} image(s) in {seconds:.1} s");
        if self.settings.save_images {
            match self.save_to_folder(from) {
                Ok(()) => {
                    let dir = self.settings.save_dir.display();
                    self.message.push_str(&format!("; saved in {dir}"));
                }
                Err(e) => self.message.push_str(&format!(
                    "; NOT saved ({e}): they stay in the gallery, right-click one to save it"
                )),
            }
        }
    }

    /// Writes gallery images `from..` into the save folder, numbered on from the highest
    /// already there, each a PNG with its parameters.
    fn save_to_folder(&mut self, from: usize) -> Result<(), String> {
        let dir = self.settings.save_dir.clone();
        if dir.as_os_str().is_empty() {
            return Err("no save folder chosen".into());
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot make the folder {}: {e}", dir.display()))?;
        let first = next_file_number(&dir);
        for (n, item) in (first..).zip(&mut self.gallery[from..]) {
            let path = dir.join(sample_file_name(n, &item.record));
            save_png(
                &path,
                &item.image,
                &PngRecord::new(vec![item.record.clone()]),
            )
            .map_err(|e| e.to_string())?;
            item.saved = Some(path);
        }
        Ok(())
    }

    /// Shows a gallery image on its own (overlay and re-roll work on it) and takes its
    /// parameters.
    pub fn show_gallery_item(&mut self, index: usize) {
        if self.is_running() {
            self.message = "a run is in progress".into();
            return;
        }
        let Some(item) = self.gallery.get(index) else {
            return;
        };
        let r = &item.record;
        let mut cell = self.new_cell(
            r.class,
            r.params,
            format!("#{} seed {}", index + 1, r.params.seed),
        );
        cell.tokens = r.tokens.clone();
        cell.probs = item.probs.clone();
        cell.entropy = item.entropy.clone();
        cell.image = Some(item.image.clone());
        cell.texture = Some(item.texture.clone());
        self.settings.sampler = r.params;
        if let Some(c) = r.class {
            self.settings.classes = vec![c];
        }
        let total = r.tokens.len();
        let decoding = r.decoding;
        self.view = Some(View {
            cells: vec![cell],
            columns: 1,
            axes: None,
            job: None,
            cancel: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            total,
            prefix_len: 0,
            done: total,
            status: RunStatus::Done { seconds: 0.0 },
            decoding,
            passes: Default::default(),
        });
    }

    /// Writes a gallery image as PNG with its parameters embedded (as `llamagen generate`).
    pub fn save_item(&mut self, index: usize, path: &Path) -> Result<(), String> {
        let item = self
            .gallery
            .get_mut(index)
            .ok_or_else(|| format!("no gallery image {index}"))?;
        save_png(
            path,
            &item.image,
            &PngRecord::new(vec![item.record.clone()]),
        )
        .map_err(|e| e.to_string())?;
        item.saved = Some(path.to_path_buf());
        Ok(())
    }

    /// Restores the sampler settings, class and seed from a PNG this project wrote.
    pub fn restore_from_png(&mut self, path: &Path) {
        match read_png_record(path) {
            Err(e) => self.message = e.to_string(),
            Ok(record) => {
                let Some(s) = record.samples.first() else {
                    self.message = format!("{} holds no samples", path.display());
                    return;
                };
                self.settings.sampler = s.params;
                self.settings.seed_locked = true;
                if let Some(c) = s.class {
                    self.settings.classes = vec![c];
                }
                if let Some(p) = &s.prompt {
                    self.settings.prompt = p.clone();
                }
                let same_model = self.info().is_some_and(|i| i.gpt_file.path == s.gpt.path);
                self.message = format!(
                    "restored the parameters of {} (seed {}){}",
                    path.display(),
                    s.params.seed,
                    if same_model {
                        String::new()
                    } else {
                        format!("; it was made with {} ({})", s.model, s.gpt.path)
                    }
                );
            }
        }
    }

    /// Files dropped on the window: PNGs restore parameters, checkpoints fill the model panel.
    pub fn dropped(&mut self, paths: Vec<PathBuf>) {
        let mut checkpoint = false;
        for p in paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if name.ends_with(".png") {
                self.restore_from_png(&p);
            } else if name.ends_with(".pt")
                || name.ends_with(".safetensors")
                || name.ends_with(".pth")
            {
                checkpoint = true;
                if name.contains("vq") {
                    self.vq_path = p.display().to_string();
                } else {
                    self.gpt_path = p.display().to_string();
                }
            } else {
                self.message = format!("{}: not a PNG or a checkpoint", p.display());
            }
        }
        if checkpoint {
            if !self.gpt_path.is_empty() && !self.vq_path.is_empty() {
                self.open_typed_model();
            } else {
                self.message = "now drop (or choose) the other checkpoint".into();
            }
        }
    }

    /// Sampler settings back to the model's defaults (the official ones for official models).
    pub fn reset_sampler(&mut self) {
        let seed = self.settings.sampler.seed;
        self.settings.sampler = self.info().map(|i| i.sampler).unwrap_or_default();
        self.settings.sampler.seed = seed;
    }

    /// Median frame time of the recent frames, in milliseconds.
    pub fn frame_ms(&self) -> f32 {
        let mut t = self.frame_times.clone();
        if t.is_empty() {
            return 0.0;
        }
        t.sort_by(f32::total_cmp);
        t[t.len() / 2] * 1000.0
    }
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        self.poll();
        crate::ui::draw(self, ui);
        self.frame_times.push(t0.elapsed().as_secs_f32());
        if self.frame_times.len() > 120 {
            self.frame_times.remove(0);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, Settings::KEY, &self.settings);
    }

    fn on_exit(&mut self) {
        self.cancel();
    }
}
