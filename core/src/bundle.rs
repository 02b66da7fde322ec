//! A model the user picks: a tokenizer and a generator that fit together, plus what the weights
//! cannot say (image size, class names). The CLI and the studio both load models through here.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{GptHints, StateDict, WeightsChoice};
use crate::classes::ClassNames;
use crate::config::{GptConfig, ModelType, VqConfig};
use crate::error::CheckpointError;
use crate::gpt::Transformer;
use crate::image_io::ModelFile;
use crate::sampling::SamplerParams;
use crate::vq::VqModel;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("generator {path}: {source}")]
    Gpt {
        path: PathBuf,
        source: CheckpointError,
    },
    #[error("tokenizer {path}: {source}")]
    Vq {
        path: PathBuf,
        source: CheckpointError,
    },
    #[error("the checkpoints do not fit together: {0}")]
    Mismatch(String),
    #[error("model card {path}: {reason}")]
    Card { path: PathBuf, reason: String },
    #[error(
        "the bundled demo model (assets/demo/model.json) was not found; give a generator and a \
         tokenizer checkpoint, or set LLAMAGEN_ASSETS to the assets folder"
    )]
    NoDemo,
    #[error(
        "the bundled text-conditional demo model (assets/demo-text/model.json) was not found; \
         give a text-conditional generator, its tokenizer and --t5, or set LLAMAGEN_ASSETS to \
         the assets folder"
    )]
    NoTextDemo,
    #[error(transparent)]
    Precision(#[from] crate::precision::PrecisionError),
}

/// The small file beside a project model's weights: what the weights cannot say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub name: String,
    pub description: String,
    /// Generator weights, relative to the card.
    pub gpt_file: String,
    pub gpt_config: GptConfig,
    /// Tokenizer weights, relative to the card.
    pub vq_file: String,
    pub vq_config: VqConfig,
    pub image_size: usize,
    pub class_names: Vec<String>,
    /// Sampler settings the model is meant to be used with.
    pub sampler: SamplerParams,
    /// How the weights were made (commands), for reproduction.
    #[serde(default)]
    pub trained_with: Vec<String>,
    /// The text encoder's model folder (text-conditional models), relative to the card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t5_dir: Option<String>,
}

impl ModelCard {
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let err = |reason: String| BundleError::Card {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if card.gpt_config.model_type == ModelType::C2i && card.t5_dir.is_some() {
            return Err(err(
                "a class-conditional generator has no use for a text encoder (t5_dir)".into(),
            ));
        }
        // Text-conditional models have no classes to name.
        if card.gpt_config.model_type == ModelType::C2i
            && card.class_names.len() != card.gpt_config.num_classes
        {
            return Err(err(format!(
                "{} class names for a generator with {} classes",
                card.class_names.len(),
                card.gpt_config.num_classes
            )));
        }
        Ok(card)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("cards serialise");
        std::fs::write(path, text + "\n")
    }
}

/// The bundled demo models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    /// Class-conditional: `assets/demo/`.
    Classes,
    /// Text-conditional, with its own small text encoder: `assets/demo-text/`.
    Text,
}

impl Demo {
    fn folder(self) -> &'static str {
        match self {
            Demo::Classes => "demo",
            Demo::Text => "demo-text",
        }
    }
}

/// Where the bundled class-conditional demo model's card is (see [`demo_card_path_of`]).
pub fn demo_card_path() -> Option<PathBuf> {
    demo_card_path_of(Demo::Classes)
}

/// Where a bundled demo model's card is: `<assets>/<demo>/model.json` (see [`asset_path`]).
pub fn demo_card_path_of(demo: Demo) -> Option<PathBuf> {
    asset_path(&Path::new(demo.folder()).join("model.json"))
}

/// The bundled classifier that `llamagen eval-classes` scores the shape models with when it is
/// given none: `<assets>/eval/classifier.mpk` (see [`asset_path`]).
pub fn eval_classifier_path() -> Option<PathBuf> {
    asset_path(Path::new("eval/classifier.mpk"))
}

/// The first existing file `rel` under the assets folders, in order: `$LLAMAGEN_ASSETS`,
/// `assets/` beside the executable or up to three folders above it (a cargo build puts the
/// binary in `target/<profile>/`), the source tree's `assets/`.
pub fn asset_path(rel: &Path) -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("LLAMAGEN_ASSETS") {
        roots.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        for _ in 0..4 {
            let Some(d) = dir else { break };
            roots.push(d.join("assets"));
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    roots.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("assets"),
    );
    roots.into_iter().map(|r| r.join(rel)).find(|p| p.is_file())
}

/// How a record names a file of the bundled assets: `bundled:demo/gpt.safetensors`.
pub const BUNDLED_PREFIX: &str = "bundled:";

/// A relative path with its `..` and `.` folded away, `/`-separated (`demo-text/../demo/x` →
/// `demo/x`).
fn normalize(rel: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Whether a record names a file of the bundled demo models: `bundled:…`, or (records written
/// before those names) a path that is not here but ends in `<demo folder>/<file>` of a bundled
/// file of the same size.
pub fn is_bundled(file: &crate::image_io::ModelFile) -> bool {
    if file.path.starts_with(BUNDLED_PREFIX) {
        return true;
    }
    let path = Path::new(&file.path);
    if path.exists() {
        return false;
    }
    let (Some(name), Some(folder)) = (path.file_name(), path.parent().and_then(Path::file_name))
    else {
        return false;
    };
    [Demo::Classes, Demo::Text]
        .iter()
        .any(|d| folder == d.folder())
        && asset_path(&Path::new(folder).join(name))
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() == file.bytes)
}

/// What the user may say about the checkpoints.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Named GPT size (`GPT-L`), for widths that do not say it.
    pub gpt_model: Option<String>,
    /// Image side in pixels; default from the file name (`…_384.pt`), else 256.
    pub image_size: Option<usize>,
    /// Attention heads, for a GPT width that is not a named size.
    pub n_head: Option<usize>,
    /// Read the `ema` weights of training checkpoints when present.
    pub ema: bool,
    /// The generator's weights' float type ([`crate::precision`]).
    pub precision: crate::precision::Precision,
    /// How the generator's linear layers are held ([`crate::quant`]).
    pub quantize: crate::quant::Quantize,
}

/// A loaded (tokenizer, generator) pair.
#[derive(Debug)]
pub struct ModelBundle<B: Backend> {
    pub gpt: Transformer<B>,
    pub vq: VqModel<B>,
    pub gpt_file: ModelFile,
    pub vq_file: ModelFile,
    pub class_names: ClassNames,
    pub image_size: usize,
    /// Default sampler settings (the model card's; the official defaults otherwise).
    pub sampler: SamplerParams,
    /// The text encoder folder the model's card names (text-conditional project models).
    pub t5_dir: Option<PathBuf>,
}

/// The newest checkpoint directory of a training run folder (`step-N/` checkpoints and a
/// `latest` file naming the newest); one checkpoint directory (`step-N/` itself, holding
/// `model.safetensors`) stands for itself. `Ok(None)` for a path that is not a directory, an
/// error for any other directory without a readable `latest`.
pub fn run_folder_checkpoint(path: &Path) -> std::io::Result<Option<PathBuf>> {
    if !path.is_dir() {
        return Ok(None);
    }
    if path.join("model.safetensors").is_file() && !path.join("latest").exists() {
        return Ok(Some(path.to_path_buf()));
    }
    let name = std::fs::read_to_string(path.join("latest"))?;
    if name.trim().is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "`latest` is empty",
        ));
    }
    Ok(Some(path.join(name.trim())))
}

/// The class names that `llamagen train-gpt` recorded beside a checkpoint it wrote
/// (`state.json`, `extra.class_names`: the data set's folders), when `weights` is such a
/// checkpoint's `model.safetensors` and the names fit the model.
fn run_class_names(weights: &Path, count: usize) -> Option<ClassNames> {
    let state = std::fs::read_to_string(weights.parent()?.join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&state).ok()?;
    let names: Vec<String> = serde_json::from_value(state["extra"]["class_names"].clone()).ok()?;
    (names.len() == count).then_some(ClassNames { names })
}

/// A training run folder stands for its newest `model.safetensors`; any other path is taken
/// as it is (and reported by the loader if it is not a checkpoint).
pub fn run_folder_weights(path: &Path) -> PathBuf {
    match run_folder_checkpoint(path) {
        Ok(Some(dir)) => dir.join("model.safetensors"),
        _ => path.to_path_buf(),
    }
}

impl<B: Backend> ModelBundle<B> {
    /// Loads both checkpoints (config inferred), and checks that they fit: the codebook is the
    /// generator's vocabulary, and the image size divides by the tokenizer's downsampling.
    pub fn load(
        gpt_path: &Path,
        vq_path: &Path,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, BundleError> {
        let choice = if opts.ema {
            WeightsChoice::PreferEma
        } else {
            WeightsChoice::Model
        };
        let vq_err = |source| BundleError::Vq {
            path: vq_path.to_path_buf(),
            source,
        };
        let gpt_err = |source| BundleError::Gpt {
            path: gpt_path.to_path_buf(),
            source,
        };
        opts.precision.check::<B>(device)?;
        let vq_sd = StateDict::open(vq_path, choice).map_err(vq_err)?;
        let vq_cfg = vq_sd.infer_vq_config().map_err(vq_err)?;
        let downsample = vq_cfg.downsample();
        if let Some(size) = opts.image_size
            && size % downsample != 0
        {
            return Err(BundleError::Mismatch(format!(
                "image size {size} does not divide by the tokenizer's downsampling factor {downsample}"
            )));
        }
        let gpt_sd = StateDict::open(gpt_path, choice).map_err(gpt_err)?;
        let hints = GptHints {
            image_size: opts.image_size,
            downsample: Some(downsample),
            gpt_model: opts.gpt_model.clone(),
            n_head: opts.n_head,
            file_name: None,
        };
        let gpt_cfg = gpt_sd.infer_gpt_config(&hints).map_err(gpt_err)?;
        if vq_cfg.codebook_size != gpt_cfg.vocab_size {
            return Err(BundleError::Mismatch(format!(
                "the tokenizer's codebook has {} entries but the generator's vocabulary has {}",
                vq_cfg.codebook_size, gpt_cfg.vocab_size
            )));
        }
        let vq = VqModel::load(&vq_sd, &vq_cfg, device)
            .map_err(vq_err)?
            .into_precision(opts.precision);
        drop(vq_sd);
        let gpt = Transformer::load_with(&gpt_sd, &gpt_cfg, opts.precision, opts.quantize, device)
            .map_err(gpt_err)?;
        let class_names = match gpt_cfg.model_type {
            ModelType::C2i => match run_class_names(gpt_path, gpt_cfg.num_classes) {
                Some(names) => names,
                None if gpt_cfg.num_classes == 1000 => ClassNames::imagenet(),
                None => ClassNames::numbered(gpt_cfg.num_classes),
            },
            _ => ClassNames::numbered(gpt_cfg.num_classes),
        };
        let image_size = gpt_cfg.grid_size() * downsample;
        Ok(Self {
            gpt,
            vq,
            gpt_file: ModelFile::describe(gpt_path),
            vq_file: ModelFile::describe(vq_path),
            class_names,
            image_size,
            sampler: SamplerParams::default(),
            t5_dir: None,
        })
    }

    /// Loads a project model from its card (configs from the card, weights checked against
    /// them).
    pub fn from_card(card_path: &Path, device: &B::Device) -> Result<Self, BundleError> {
        Self::from_card_with(card_path, &LoadOptions::default(), device)
    }

    /// [`ModelBundle::from_card`] with the user's options (the card's configs win over the
    /// size options; the precision applies).
    pub fn from_card_with(
        card_path: &Path,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, BundleError> {
        opts.precision.check::<B>(device)?;
        let card = ModelCard::read(card_path)?;
        let dir = card_path.parent().unwrap_or(Path::new("."));
        let gpt_path = dir.join(&card.gpt_file);
        let vq_path = dir.join(&card.vq_file);
        let vq_err = |source| BundleError::Vq {
            path: vq_path.clone(),
            source,
        };
        let gpt_err = |source| BundleError::Gpt {
            path: gpt_path.clone(),
            source,
        };
        if card.vq_config.codebook_size != card.gpt_config.vocab_size {
            return Err(BundleError::Mismatch(format!(
                "the tokenizer's codebook has {} entries but the generator's vocabulary has {}",
                card.vq_config.codebook_size, card.gpt_config.vocab_size
            )));
        }
        if card.gpt_config.grid_size() * card.vq_config.downsample() != card.image_size {
            return Err(BundleError::Card {
                path: card_path.to_path_buf(),
                reason: format!(
                    "image size {} is not the token grid {} × the downsampling {}",
                    card.image_size,
                    card.gpt_config.grid_size(),
                    card.vq_config.downsample()
                ),
            });
        }
        let vq_sd = StateDict::open(&vq_path, WeightsChoice::Model).map_err(vq_err)?;
        let vq = VqModel::load(&vq_sd, &card.vq_config, device)
            .map_err(vq_err)?
            .into_precision(opts.precision);
        drop(vq_sd);
        let gpt_sd = StateDict::open(&gpt_path, WeightsChoice::Model).map_err(gpt_err)?;
        let gpt = Transformer::load_with(
            &gpt_sd,
            &card.gpt_config,
            opts.precision,
            opts.quantize,
            device,
        )
        .map_err(gpt_err)?;
        Ok(Self {
            gpt,
            vq,
            gpt_file: ModelFile::describe(&gpt_path),
            vq_file: ModelFile::describe(&vq_path),
            class_names: ClassNames {
                names: card.class_names.clone(),
            },
            image_size: card.image_size,
            sampler: card.sampler,
            t5_dir: card.t5_dir.as_ref().map(|d| dir.join(d)),
        })
    }

    /// The one way to open a model: the bundled class demo model when no checkpoints are
    /// given; a project model through its card when a `model.json` naming both files sits
    /// beside the generator; otherwise an official pair, config inferred.
    pub fn open(
        gpt: Option<&Path>,
        vq: Option<&Path>,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, BundleError> {
        Self::open_or_demo(gpt, vq, Demo::Classes, opts, device)
    }

    /// [`ModelBundle::open`], with `demo` the bundled model to use when no checkpoints are
    /// given.
    pub fn open_or_demo(
        gpt: Option<&Path>,
        vq: Option<&Path>,
        demo: Demo,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, BundleError> {
        let (gpt, vq) = match (gpt, vq) {
            (Some(g), Some(v)) => (run_folder_weights(g), run_folder_weights(v)),
            _ => {
                let card = demo_card_path_of(demo).ok_or(match demo {
                    Demo::Classes => BundleError::NoDemo,
                    Demo::Text => BundleError::NoTextDemo,
                })?;
                let mut bundle = Self::from_card_with(&card, opts, device)?;
                // Records name the bundled files by their place in the assets, so that a PNG
                // made here is remade (`--from`) on a machine whose checkout lies elsewhere.
                let root = card
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("."));
                for file in [&mut bundle.gpt_file, &mut bundle.vq_file] {
                    if let Ok(rel) = Path::new(&file.path).strip_prefix(root) {
                        file.path = format!("{BUNDLED_PREFIX}{}", normalize(rel));
                    }
                }
                return Ok(bundle);
            }
        };
        let (gpt, vq) = (gpt.as_path(), vq.as_path());
        if let Some(card_path) = gpt.parent().map(|d| d.join("model.json"))
            && card_path.is_file()
        {
            // A card that does not parse is not silently skipped: its configs are what the
            // weights need, and inference would guess them differently.
            let card = ModelCard::read(&card_path)?;
            let dir = card_path.parent().unwrap_or(Path::new("."));
            let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if same(gpt, &dir.join(&card.gpt_file)) && same(vq, &dir.join(&card.vq_file)) {
                return Self::from_card_with(&card_path, opts, device);
            }
        }
        Self::load(gpt, vq, opts, device)
    }

    pub fn grid_size(&self) -> usize {
        self.gpt.config.grid_size()
    }

    /// `GPT-L c2i`, or `GPT (dim 64, 2 layers) c2i` for unnamed sizes.
    pub fn description(&self) -> String {
        let c = &self.gpt.config;
        let size = c
            .size_name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("GPT (dim {}, {} layers)", c.dim, c.n_layer));
        format!("{size} {}", c.model_type.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_stands_for_its_latest_weights() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("step-0000200")).unwrap();
        // Not a run folder (no `latest`): the path is kept, and asking for its checkpoint
        // is an error.
        assert_eq!(run_folder_weights(&run), run);
        assert!(run_folder_checkpoint(&run).is_err());
        std::fs::write(run.join("latest"), "step-0000200\n").unwrap();
        assert_eq!(
            run_folder_weights(&run),
            run.join("step-0000200").join("model.safetensors")
        );
        let file = run.join("step-0000200").join("model.safetensors");
        assert_eq!(run_folder_weights(&file), file);
        // One checkpoint directory of the run (not the newest, say) stands for itself.
        std::fs::create_dir_all(run.join("step-0000100")).unwrap();
        let older = run.join("step-0000100").join("model.safetensors");
        std::fs::write(&older, b"weights").unwrap();
        assert_eq!(run_folder_weights(&run.join("step-0000100")), older);
        assert_eq!(
            run_folder_checkpoint(&run.join("step-0000100")).unwrap(),
            Some(run.join("step-0000100"))
        );
    }
}
