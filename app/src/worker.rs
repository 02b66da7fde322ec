//! The worker thread: it owns the model, runs generation and streams what happens back to the
//! UI. The UI thread only sends [`Command`]s and reads [`Event`]s; it never waits on a model.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::prelude::*;
use llamagen::bundle::{Demo, LoadOptions, ModelBundle};
use llamagen::config::ModelType;
use llamagen::generate::{EventDetail, Generator, Observer, TokenEvent, decode_tokens};
use llamagen::image_io::tensor_to_images;
use llamagen::sampling::TokenSampling;
use llamagen::text::{T5Folder, T5Precision, TextEncoder, TextError};

use crate::decoder::{Outlet, PreviewDecoder, PreviewPolicy, Refresh, colour_pass};
pub use crate::message::{Colours, Command, Event, Job, ModelInfo, ModelSpec, Patches};
use crate::timeline::{Span, Timeline, TokenStep};

/// Where the models run.
#[derive(Debug, Clone)]
pub enum Compute {
    Cpu,
    Wgpu {
        device: burn::backend::wgpu::WgpuDevice,
        /// The adapter's name, for the model panel.
        adapter: String,
    },
}

impl Compute {
    /// The preview's default share of the machine on this compute.
    pub fn preview_policy(&self) -> PreviewPolicy {
        match self {
            Compute::Cpu => PreviewPolicy::cpu(),
            Compute::Wgpu { .. } => PreviewPolicy::gpu(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Compute::Cpu => "cpu (burn-flex)".to_string(),
            Compute::Wgpu { adapter, .. } => format!("wgpu ({adapter})"),
        }
    }
}

/// The UI's side of the worker: a sender of commands, a receiver of events.
pub struct WorkerHandle {
    commands: Sender<Command>,
    pub events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    timeline: Arc<Mutex<Timeline>>,
}

impl WorkerHandle {
    /// Starts the worker with the preview's default policy for `compute`; `wake` is called
    /// after every event (the UI asks for a repaint).
    pub fn spawn(compute: Compute, wake: impl Fn() + Send + Sync + 'static) -> Self {
        let policy = compute.preview_policy();
        Self::spawn_with(compute, policy, wake)
    }

    /// Starts the worker with the preview held to `policy`.
    pub fn spawn_with(
        compute: Compute,
        policy: PreviewPolicy,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let shared = timeline.clone();
        let thread = std::thread::Builder::new()
            .name("llamagen-worker".into())
            .spawn(move || {
                let mut worker = Worker {
                    compute,
                    policy,
                    commands: command_rx,
                    events: event_tx,
                    wake: Arc::new(wake),
                    timeline: shared,
                };
                worker.run();
            })
            .expect("spawn the worker thread");
        Self {
            commands,
            events,
            thread: Some(thread),
            timeline,
        }
    }

    /// What the worker recorded of the latest job: its token steps and the preview's decodes.
    pub fn timeline(&self) -> Timeline {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn send(&self, command: Command) {
        // A closed channel means the worker has stopped (it reports why before it stops).
        let _ = self.commands.send(command);
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        // Dropping the sender ends the worker's loop; it finishes the current token first.
        let (dead, _) = channel();
        self.commands = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f`, turning a panic inside it (a backend that runs out of memory, say) into the
/// panic's message, so that the worker reports it and goes on instead of dying silently.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| llamagen::error::panic_message(payload.as_ref()))
}

struct Worker {
    compute: Compute,
    policy: PreviewPolicy,
    commands: Receiver<Command>,
    events: Sender<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
    timeline: Arc<Mutex<Timeline>>,
}

enum Loaded {
    Cpu(Model<llamagen::backend::Cpu>),
    Wgpu(Model<llamagen::backend::Wgpu>),
}

struct Model<B: Backend> {
    bundle: ModelBundle<B>,
    /// The thread that decodes the live preview (its own handle on the tokenizer).
    preview: PreviewDecoder,
    /// The prompt encoder of a text-conditional model (with its per-prompt cache).
    text: Option<TextEncoder<B>>,
}

impl Worker {
    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
        (self.wake)();
    }

    fn run(&mut self) {
        let mut model: Option<Loaded> = None;
        // The preview decoder fills the atlas in the background; this thread waits for commands.
        while let Ok(command) = self.commands.recv() {
            match command {
                Command::Load(spec, precision) => {
                    drop(model.take()); // free the old model first
                    model = guarded(|| self.load(spec, precision)).unwrap_or_else(|why| {
                        self.emit(Event::LoadFailed(format!(
                            "the model could not load: {why}"
                        )));
                        None
                    });
                }
                Command::LoadText(dir) => match &mut model {
                    Some(Loaded::Cpu(m)) => self.load_text(m, dir),
                    Some(Loaded::Wgpu(m)) => self.load_text(m, dir),
                    None => self.emit(Event::TextFailed("no model is loaded".into())),
                },
                Command::ReleaseText => {
                    match &mut model {
                        Some(Loaded::Cpu(m)) => m.text = None,
                        Some(Loaded::Wgpu(m)) => m.text = None,
                        None => {}
                    }
                    self.emit(Event::TextReleased);
                }
                Command::Generate(job) => {
                    let id = job.id;
                    let ran = guarded(|| match &mut model {
                        Some(Loaded::Cpu(m)) => self.generate(m, job),
                        Some(Loaded::Wgpu(m)) => self.generate(m, job),
                        None => self.emit(Event::Failed {
                            job: id,
                            error: "no model is loaded".into(),
                        }),
                    });
                    if let Err(why) = ran {
                        self.emit(Event::Failed {
                            job: id,
                            error: format!(
                                "{why} (a smaller Batch size may fit; the model stays loaded)"
                            ),
                        });
                    }
                }
            }
        }
    }

    fn load(&self, spec: ModelSpec, precision: llamagen::Precision) -> Option<Loaded> {
        self.emit(Event::Loading(match &spec {
            ModelSpec::Demo => "the bundled demo model".to_string(),
            ModelSpec::TextDemo => "the bundled text demo model".to_string(),
            ModelSpec::Files { gpt, .. } => gpt.display().to_string(),
        }));
        let result = match &self.compute {
            Compute::Cpu => load_model::<llamagen::backend::Cpu>(
                &spec,
                precision,
                &Default::default(),
                |vq, d| self.preview(vq, d),
            )
            .map(|(m, i, c)| (Loaded::Cpu(m), i, c)),
            Compute::Wgpu { device, .. } => {
                load_model::<llamagen::backend::Wgpu>(&spec, precision, device, |vq, d| {
                    self.preview(vq, d)
                })
                .map(|(m, i, c)| (Loaded::Wgpu(m), i, c))
            }
        };
        match result {
            Ok((loaded, mut info, (patches, colours))) => {
                info.compute = self.compute.describe();
                self.emit(Event::Loaded(Box::new(info)));
                self.emit(Event::Colours(colours));
                self.emit(Event::Patches(patches));
                Some(loaded)
            }
            Err(e) => {
                self.emit(Event::LoadFailed(e));
                None
            }
        }
    }

    fn load_text<B: Backend>(&self, model: &mut Model<B>, dir: PathBuf) {
        model.text = None;
        let cfg = &model.bundle.gpt.config;
        if cfg.model_type != ModelType::T2i {
            self.emit(Event::TextFailed(
                "the loaded model is class-conditional: it takes no prompts".into(),
            ));
            return;
        }
        let device = model.bundle.gpt.device();
        let result = T5Folder::open(&dir).and_then(|folder| {
            if folder.config.d_model != cfg.caption_dim {
                return Err(TextError::CaptionDim {
                    t5_dim: folder.config.d_model,
                    caption_dim: cfg.caption_dim,
                });
            }
            TextEncoder::<B>::from_folder_as(&folder, cfg.cls_token_num, T5Precision::Auto, &device)
        });
        match result {
            Ok(encoder) => {
                let params = encoder.config.num_params();
                let (dtype, bytes) = encoder.weights().unwrap_or((burn::tensor::DType::F32, 0));
                let precision = format!("{dtype:?}").to_lowercase();
                model.text = Some(encoder);
                self.emit(Event::TextLoaded {
                    dir,
                    params,
                    precision,
                    bytes,
                });
            }
            Err(e) => self.emit(Event::TextFailed(format!("{}: {e}", dir.display()))),
        }
    }

    /// Starts the preview decoder of a freshly loaded tokenizer.
    fn preview<B: Backend>(&self, vq: llamagen::vq::VqModel<B>, decoded: &[u32]) -> PreviewDecoder {
        PreviewDecoder::spawn(
            vq,
            decoded,
            self.policy,
            Outlet {
                events: self.events.clone(),
                wake: self.wake.clone(),
                timeline: self.timeline.clone(),
            },
        )
    }

    fn generate<B: Backend>(&self, model: &mut Model<B>, mut job: Job) {
        let t0 = Instant::now();
        if let Ok(mut t) = self.timeline.lock() {
            *t = Timeline {
                job: Some(job.id),
                started: Some(t0),
                ..Timeline::default()
            };
        }
        let Model {
            bundle,
            preview,
            text,
        } = model;
        let preview = &*preview;
        // Prompts become caption features (each distinct prompt encoded once, then cached).
        for (request, prompt) in job.requests.iter_mut().zip(&job.prompts) {
            let Some(prompt) = prompt else { continue };
            let Some(encoder) = text.as_mut() else {
                self.emit(Event::Failed {
                    job: job.id,
                    error: "prompts need a T5 text encoder: load its folder in the Model panel"
                        .into(),
                });
                return;
            };
            match encoder.encode(prompt) {
                Ok(features) => request.condition = features.condition(),
                Err(e) => {
                    self.emit(Event::Failed {
                        job: job.id,
                        error: format!("prompt '{prompt}': {e}"),
                    });
                    return;
                }
            }
        }
        let grid = bundle.grid_size();
        // A window wider than this model's grid is the widest it takes.
        let decoding = match job.decoding {
            llamagen::generate::Decoding::Zipar { window } => llamagen::generate::Decoding::Zipar {
                window: window.clamp(1, grid),
            },
            d => d,
        };
        let generator = Generator::new(&bundle.gpt).with_decoding(decoding);
        let per_batch = match job.batch_size {
            0 => job.requests.len(),
            n => n,
        }
        .max(1);
        let mut tokens = Vec::with_capacity(job.requests.len());
        let mut sampling = TokenSampling::Host;
        let mut images = Vec::with_capacity(job.requests.len());
        for (k, batch) in job.requests.chunks(per_batch).enumerate() {
            let mut observer = JobObserver {
                worker: self,
                preview,
                job: job.id,
                first: k * per_batch,
                decode_every: job.decode_every,
                grid,
                last: Instant::now(),
                thread: std::thread::current().id(),
                steps: Vec::with_capacity(batch.len() * grid * grid),
            };
            let run = preview.begin_run(job.id);
            let generated = generator.generate(batch, &mut observer, Some(&job.cancel));
            drop(run);
            let steps = std::mem::take(&mut observer.steps);
            if let Ok(mut t) = self.timeline.lock() {
                t.steps.extend(steps);
                t.generated = Some(Instant::now());
            }
            match generated {
                Ok(out) if out.cancelled => {
                    self.emit(Event::Finished {
                        job: job.id,
                        tokens: Vec::new(),
                        images: Vec::new(),
                        cancelled: true,
                        seconds: t0.elapsed().as_secs_f64(),
                        sampling: out.sampling,
                    });
                    return;
                }
                Ok(out) => {
                    // Each batch decoded on its own: the decoder's memory stays a batch's.
                    images.extend(tensor_to_images(decode_tokens(
                        &bundle.vq,
                        &out.tokens,
                        grid,
                    )));
                    tokens.extend(out.tokens);
                    sampling = out.sampling;
                }
                Err(e) => {
                    self.emit(Event::Failed {
                        job: job.id,
                        error: e.to_string(),
                    });
                    return;
                }
            }
        }
        self.emit(Event::Finished {
            job: job.id,
            tokens,
            images,
            cancelled: false,
            seconds: t0.elapsed().as_secs_f64(),
            sampling,
        });
    }
}

fn load_model<B: Backend>(
    spec: &ModelSpec,
    precision: llamagen::Precision,
    device: &B::Device,
    preview: impl FnOnce(llamagen::vq::VqModel<B>, &[u32]) -> PreviewDecoder,
) -> Result<(Model<B>, ModelInfo, (Patches, Colours)), String> {
    let opts = LoadOptions {
        precision,
        ..Default::default()
    };
    let bundle = match spec {
        ModelSpec::Demo => ModelBundle::<B>::open(None, None, &opts, device),
        ModelSpec::TextDemo => {
            ModelBundle::<B>::open_or_demo(None, None, Demo::Text, &opts, device)
        }
        ModelSpec::Files {
            gpt,
            vq,
            image_size,
        } => ModelBundle::<B>::open(
            Some(gpt),
            Some(vq),
            &LoadOptions {
                image_size: *image_size,
                ..opts
            },
            device,
        ),
    }
    .map_err(|e| e.to_string())?;
    let cfg = &bundle.gpt.config;
    let info = ModelInfo {
        spec: spec.clone(),
        description: bundle.description(),
        params: cfg.num_params(),
        precision: bundle.gpt.precision(),
        quantize: bundle.gpt.quantization(),
        weight_bytes: bundle.gpt.weight_bytes(),
        model_type: cfg.model_type,
        image_size: bundle.image_size,
        grid_size: cfg.grid_size(),
        vocab_size: cfg.vocab_size,
        n_head: cfg.n_head,
        class_names: bundle.class_names.names.clone(),
        sampler: bundle.sampler,
        gpt_file: bundle.gpt_file.clone(),
        vq_file: bundle.vq_file.clone(),
        compute: String::new(),
        patch: bundle.vq.config.downsample(),
        t5_dir: bundle.t5_dir.clone(),
    };
    // Every code's mean colour, so that the mosaic can draw any code from the first token.
    let (patches, colours) = colour_pass(&bundle.vq);
    // The preview decoder's handle on the tokenizer shares its weights.
    let preview = preview(bundle.vq.clone(), &patches.codes);
    Ok((
        Model {
            bundle,
            preview,
            text: None,
        },
        info,
        (patches, colours),
    ))
}

struct JobObserver<'w, 'm> {
    worker: &'w Worker,
    preview: &'m PreviewDecoder,
    job: u64,
    /// The job's request this batch starts at.
    first: usize,
    decode_every: usize,
    grid: usize,
    /// When the previous token step ended.
    last: Instant,
    thread: std::thread::ThreadId,
    steps: Vec<TokenStep>,
}

impl Observer for JobObserver<'_, '_> {
    fn detail(&self) -> EventDetail {
        EventDetail {
            confidence: true,
            logits: false,
        }
    }

    fn on_token(&mut self, event: &TokenEvent<'_>) {
        // Nothing here decodes: the preview decoder is told what there is, and the token loop
        // goes on at once.
        let entered = Instant::now();
        let new: Vec<u32> = event.tokens.iter().map(|t| t[event.index]).collect();
        self.preview.want(&new);
        self.worker.emit(Event::Token {
            job: self.job,
            first: self.first,
            index: event.index,
            total: event.total,
            new,
            probs: event.probs.map(<[f32]>::to_vec).unwrap_or_default(),
            entropy: event.entropy.map(<[f32]>::to_vec).unwrap_or_default(),
            passes: event.passes,
        });
        let done = event.index + 1;
        if self.decode_every > 0 && done % self.decode_every == 0 && done < event.total {
            self.preview.refresh(Refresh {
                job: self.job,
                first: self.first,
                grid: self.grid,
                tokens: event.tokens.to_vec(),
            });
        }
        let end = Instant::now();
        self.steps.push(TokenStep {
            step: Span {
                start: self.last,
                end,
            },
            observer: Span {
                start: entered,
                end,
            },
            thread: self.thread,
        });
        self.last = end;
    }
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_in_the_worker_becomes_its_message() {
        assert_eq!(guarded(|| 3), Ok(3));
        let caught: Result<(), String> = guarded(|| panic!("out of memory: {} bytes", 5));
        assert_eq!(caught, Err("out of memory: 5 bytes".to_string()));
        let caught: Result<(), String> = guarded(|| panic!("plain"));
        assert_eq!(caught, Err("plain".to_string()));
    }
}
