//! A run: its cells and what the worker sends back for them, from Generate to the finished
//! images.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use egui::TextureHandle;
use image::RgbImage;
use llamagen::config::ModelType;
use llamagen::generate::Request;
use llamagen::image_io::SampleRecord;
use llamagen::sampling::SamplerParams;

use super::{GalleryItem, StudioApp, TextState, now_seed};
use crate::explore::{self, Axis};
use crate::message::{Command, Job, ModelInfo};

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

impl StudioApp {
    /// Sampler settings for the next run: the seed re-rolled unless it is locked.
    pub(super) fn next_params(&mut self) -> SamplerParams {
        if !self.settings.seed_locked {
            self.settings.sampler.seed = now_seed();
        }
        self.settings.sampler
    }

    pub(super) fn check_ready(&mut self) -> Result<ModelInfo, String> {
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

    pub(super) fn new_cell(
        &self,
        class: Option<usize>,
        params: SamplerParams,
        label: String,
    ) -> Cell {
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

    pub(super) fn start(
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

    pub(super) fn finish(
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
}
