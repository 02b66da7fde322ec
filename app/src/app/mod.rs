//! The studio's state and what it does with it. It knows nothing of drawing: the panels
//! (`app/src/panels/`) read it, edit its form fields (settings, typed paths) as egui widgets do,
//! and return every other thing the user did as an [`Action`], which [`StudioApp::apply`]
//! carries out. Models run on the worker; everything they compute arrives as [`Event`]s.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;
use llamagen::classes::ClassNames;
use llamagen::config::ModelType;

use crate::preview::Atlas;

mod gallery;
mod run;

use crate::message::{Command, Event, Job, ModelInfo, ModelSpec};
use crate::settings::{RecentModel, Settings};
use crate::worker::{Compute, WorkerHandle};
pub use gallery::GalleryItem;
pub use run::{Cell, RunStatus, View};

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

/// Something the user did that the state carries out (the panels return these).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Generate the selected classes or prompts (Generate, Ctrl+Enter).
    Generate,
    /// Run the X/Y grid as one batch.
    RunGrid,
    /// Stop the run between two tokens (Cancel, Esc).
    Cancel,
    /// Open a model (the demo buttons, a recent model).
    OpenModel(ModelSpec),
    /// Open the checkpoints typed into the model panel.
    OpenTyped,
    /// Open the current model again with its weights in this precision.
    SetPrecision(llamagen::Precision),
    /// Load the T5 folder of the model panel.
    LoadText,
    /// Free the T5 encoder.
    ReleaseText,
    /// Draw a new seed.
    NewSeed,
    /// The sampler back to the model's defaults.
    ResetSampler,
    /// Keep the tokens of a cell before a position and re-roll the rest.
    Resample { cell: usize, position: usize },
    /// Show a gallery image on its own and take its parameters.
    ShowGalleryItem(usize),
    /// Save a gallery image as a PNG with its parameters.
    SaveGalleryItem { index: usize, path: PathBuf },
    /// Files dropped on the window.
    Dropped(Vec<PathBuf>),
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

    /// Sampler settings back to the model's defaults (the official ones for official models).
    pub fn reset_sampler(&mut self) {
        let seed = self.settings.sampler.seed;
        self.settings.sampler = self.info().map(|i| i.sampler).unwrap_or_default();
        self.settings.sampler.seed = seed;
    }

    /// Carries out what the user did.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::Generate => self.generate(),
            Action::RunGrid => self.generate_grid(),
            Action::Cancel => self.cancel(),
            Action::OpenModel(spec) => {
                if let ModelSpec::Files { gpt, vq, .. } = &spec {
                    self.gpt_path = gpt.display().to_string();
                    self.vq_path = vq.display().to_string();
                }
                self.open_model(spec)
            }
            Action::OpenTyped => self.open_typed_model(),
            Action::SetPrecision(p) => self.set_precision(p),
            Action::LoadText => self.load_text(),
            Action::ReleaseText => self.release_text(),
            Action::NewSeed => self.settings.sampler.seed = now_seed(),
            Action::ResetSampler => self.reset_sampler(),
            Action::Resample { cell, position } => self.resample_from(cell, position),
            Action::ShowGalleryItem(i) => self.show_gallery_item(i),
            Action::SaveGalleryItem { index, path } => {
                self.message = match self.save_item(index, &path) {
                    Ok(()) => format!("saved {}", path.display()),
                    Err(e) => format!("could not save: {e}"),
                }
            }
            Action::Dropped(paths) => self.dropped(paths),
        }
    }

    /// Records how long a frame took (the run bar shows the median).
    pub fn frame_took(&mut self, seconds: f32) {
        self.frame_times.push(seconds);
        if self.frame_times.len() > 120 {
            self.frame_times.remove(0);
        }
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
