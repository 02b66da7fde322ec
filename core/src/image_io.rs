//! Tensors ↔ images, grids, and PNG files that carry their generation parameters in a text
//! chunk (so an image can be inspected with `llamagen info` and reproduced with `--from`).

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::sampling::SamplerParams;

/// PNG text-chunk keyword holding the JSON record.
pub const PNG_KEYWORD: &str = "llamagen";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0} carries no llamagen generation parameters")]
    NoParameters(PathBuf),
}

/// Images `[batch, 3, H, W]` in [−1, 1] → 8-bit RGB, as the official scripts save them
/// (`(x + 1) / 2`, clamped, `× 255 + 0.5`).
pub fn tensor_to_images<B: Backend>(images: Tensor<B, 4>) -> Vec<RgbImage> {
    let [b, c, h, w] = images.dims();
    assert_eq!(c, 3, "RGB images expected");
    let values: Vec<f32> = images
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 pixels");
    (0..b)
        .map(|i| {
            let base = i * 3 * h * w;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = |ch: usize| {
                    let v = values[base + ch * h * w + y as usize * w + x as usize];
                    (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0 + 0.5) as u8
                };
                image::Rgb([at(0), at(1), at(2)])
            })
        })
        .collect()
}

/// 8-bit RGB → `[1, 3, H, W]` in [−1, 1].
pub fn image_to_tensor<B: Backend>(image: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for ch in 0..3 {
            data[ch * h * w + y as usize * w + x as usize] = p[ch] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_data(burn::tensor::TensorData::new(data, [1, 3, h, w]), device)
}

/// Images side by side in rows of `per_row`, 2-pixel gaps (torchvision's `make_grid` look).
pub fn make_grid(images: &[RgbImage], per_row: usize) -> RgbImage {
    const PAD: u32 = 2;
    let Some(first) = images.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = (first.width(), first.height());
    let cols = per_row.clamp(1, images.len()) as u32;
    let rows = images.len().div_ceil(cols as usize) as u32;
    let mut grid = RgbImage::new(cols * (w + PAD) + PAD, rows * (h + PAD) + PAD);
    for (i, img) in images.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        image::imageops::replace(
            &mut grid,
            img,
            (PAD + c * (w + PAD)) as i64,
            (PAD + r * (h + PAD)) as i64,
        );
    }
    grid
}

/// A model file as a record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The path as given, or `bundled:<folder>/<file>` for a file of the bundled demo models
    /// (found in the assets of whichever machine reads the record).
    pub path: String,
    pub bytes: u64,
    /// [`fingerprint`] of the file's contents (absent in records written before it existed,
    /// and when the file could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl ModelFile {
    pub fn describe(path: &Path) -> Self {
        Self {
            path: path.display().to_string(),
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            fingerprint: fingerprint(path).ok(),
        }
    }

    /// Whether this file is known not to be the `recorded` one: their sizes differ, or both
    /// have fingerprints and those differ. Two files of one size and no fingerprint to compare
    /// are taken as the same (a record written before fingerprints, of a model of that size).
    pub fn differs_from(&self, recorded: &ModelFile) -> bool {
        let sizes = self.bytes != 0 && recorded.bytes != 0 && self.bytes != recorded.bytes;
        let contents = match (&self.fingerprint, &recorded.fingerprint) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        sizes || contents
    }

    /// `path (N bytes, fingerprint F)` for messages.
    pub fn label(&self) -> String {
        match &self.fingerprint {
            Some(f) => format!("{} ({} bytes, fingerprint {f})", self.path, self.bytes),
            None => format!("{} ({} bytes)", self.path, self.bytes),
        }
    }
}

/// A 64-bit FNV-1a hash (16 hex digits) of a file's length and of its first and last 4 MiB:
/// any retraining changes the weights throughout a checkpoint, so this tells two models apart
/// without reading gigabytes of an official checkpoint on every run.
pub fn fingerprint(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const PART: u64 = 4 << 20;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&len.to_le_bytes());
    let mut buf = Vec::new();
    (&mut file).take(PART).read_to_end(&mut buf)?;
    eat(&buf);
    if len > 2 * PART {
        file.seek(SeekFrom::Start(len - PART))?;
        buf.clear();
        file.take(PART).read_to_end(&mut buf)?;
        eat(&buf);
    } else if len > PART {
        buf.clear();
        file.read_to_end(&mut buf)?;
        eat(&buf);
    }
    Ok(format!("{hash:016x}"))
}

/// Everything needed to reproduce one generated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub gpt: ModelFile,
    pub vq: ModelFile,
    /// Named size and type of the generator, e.g. `GPT-L c2i`.
    pub model: String,
    /// Attention heads of the generator (the one thing its weights cannot say).
    #[serde(default)]
    pub n_head: Option<usize>,
    pub image_size: usize,
    pub class: Option<usize>,
    pub class_name: Option<String>,
    pub prompt: Option<String>,
    pub params: SamplerParams,
    /// Index of the sample in its run (its seed is `params.seed`).
    pub index: usize,
    /// The generated token grid.
    pub tokens: Vec<u32>,
    /// Where the tokens were drawn (records from before this field: the host).
    #[serde(default)]
    pub sampling: crate::sampling::TokenSampling,
    /// The generator's weights' float type (records from before this field: f32).
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// How the generator's linear layers were held (records from before this field: none).
    #[serde(default)]
    pub quantize: crate::quant::Quantize,
    /// How forward passes became tokens (records from before this field: sequential).
    #[serde(default)]
    pub decoding: crate::generate::Decoding,
    /// The side, in tokens, of the tiles the image was decoded in (`None`: whole; records
    /// from before this field: whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vq_tile: Option<usize>,
}

/// The record embedded in a PNG: one sample, or the cells of a grid in reading order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PngRecord {
    pub generator: String,
    pub samples: Vec<SampleRecord>,
}

impl PngRecord {
    pub fn new(samples: Vec<SampleRecord>) -> Self {
        Self {
            generator: format!("llamagen-rs {}", env!("CARGO_PKG_VERSION")),
            samples,
        }
    }

    /// A one-line, human-readable summary per sample (the `parameters` text chunk).
    pub fn summary(&self) -> String {
        self.samples
            .iter()
            .map(|s| {
                let cond = match (&s.class, &s.class_name, &s.prompt) {
                    (_, _, Some(p)) => format!("prompt: {p}"),
                    (Some(c), Some(n), _) => format!("class: {c} ({n})"),
                    (Some(c), None, _) => format!("class: {c}"),
                    _ => String::new(),
                };
                format!(
                    "#{} {cond}, cfg scale: {}, cfg interval: {}, temperature: {}, top-k: {}, top-p: {}, seed: {}, model: {} ({}), tokenizer: {}, size: {}",
                    s.index,
                    s.params.cfg_scale,
                    s.params.cfg_interval,
                    s.params.temperature,
                    s.params.top_k,
                    s.params.top_p,
                    s.params.seed,
                    s.model,
                    s.gpt.path,
                    s.vq.path,
                    s.image_size
                ) + &match s.decoding {
                    crate::generate::Decoding::Sequential => String::new(),
                    d => format!(", decoding: {}", d.describe()),
                } + &s
                    .vq_tile
                    .map(|t| format!(", decoded in tiles of {t}×{t} tokens"))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Writes a PNG with the record in an iTXt chunk, atomically (temporary file, then rename).
pub fn save_png(path: &Path, image: &RgbImage, record: &PngRecord) -> Result<(), ImageError> {
    let err = |reason: String| ImageError::Write {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("png.partial");
    {
        let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let json = serde_json::to_string(record).map_err(|e| err(e.to_string()))?;
        encoder
            .add_itxt_chunk(PNG_KEYWORD.to_string(), json)
            .map_err(|e| err(e.to_string()))?;
        encoder
            .add_itxt_chunk("parameters".to_string(), record.summary())
            .map_err(|e| err(e.to_string()))?;
        let mut writer = encoder.write_header().map_err(|e| err(e.to_string()))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| err(e.to_string()))?;
        writer.finish().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Reads the record of a PNG written by [`save_png`].
pub fn read_png_record(path: &Path) -> Result<PngRecord, ImageError> {
    let err = |reason: String| ImageError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder.read_info().map_err(|e| err(e.to_string()))?;
    let info = reader.info();
    for chunk in &info.utf8_text {
        if chunk.keyword == PNG_KEYWORD {
            let text = chunk.get_text().map_err(|e| err(e.to_string()))?;
            return serde_json::from_str(&text)
                .map_err(|e| err(format!("bad llamagen record: {e}")));
        }
    }
    for chunk in &info.uncompressed_latin1_text {
        if chunk.keyword == PNG_KEYWORD {
            return serde_json::from_str(&chunk.text)
                .map_err(|e| err(format!("bad llamagen record: {e}")));
        }
    }
    Err(ImageError::NoParameters(path.to_path_buf()))
}

/// A file-name fragment from a prompt: its first words, lower-case letters and digits.
pub fn prompt_slug(prompt: &str) -> String {
    let mut slug = String::new();
    for word in prompt
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + word.len() > 40 {
            break;
        }
        if !slug.is_empty() {
            slug.push('_');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    if slug.is_empty() {
        slug.push_str("prompt");
    }
    slug
}

/// The file name of one sample in an output folder (`llamagen generate --out-dir`, the
/// studio's saved images): `NUMBER-CLASS-seedSEED.png`, or the prompt's first words for a
/// text-conditional sample.
pub fn sample_file_name(number: usize, record: &SampleRecord) -> String {
    let what = match (&record.prompt, record.class) {
        (Some(p), _) => prompt_slug(p),
        (None, c) => c.unwrap_or(0).to_string(),
    };
    format!("{number:04}-{what}-seed{}.png", record.params.seed)
}

/// The number the next sample file of an output folder takes: one more than the highest
/// `NUMBER-….png` already there (0 in a new or unreadable folder), so that no earlier file is
/// replaced.
pub fn next_file_number(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".png")?;
            name.split('-').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_folder_numbers_go_on_from_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::next_file_number(dir.path()), 0);
        for name in [
            "0003-7-seed1.png",
            "0011-a_cat-seed2.png",
            "0099-notes.txt",
            "x.png",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(super::next_file_number(dir.path()), 12);
        assert_eq!(super::next_file_number(&dir.path().join("absent")), 0);
        assert_eq!(
            super::prompt_slug("A red cat, on the mat!"),
            "a_red_cat_on_the_mat"
        );
        assert_eq!(super::prompt_slug("!!"), "prompt");
    }

    use super::*;

    #[test]
    fn a_model_file_differs_by_size_or_fingerprint() {
        let dir = std::env::temp_dir().join(format!("llamagen-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        std::fs::write(&a, vec![1u8; 1000]).unwrap();
        std::fs::write(&b, vec![2u8; 1000]).unwrap();
        std::fs::write(&c, vec![1u8; 1001]).unwrap();
        let (fa, fb, fc) = (
            ModelFile::describe(&a),
            ModelFile::describe(&b),
            ModelFile::describe(&c),
        );
        assert!(!fa.differs_from(&fa.clone()));
        // Same size, other contents.
        assert!(fa.differs_from(&fb));
        // Another size.
        assert!(fa.differs_from(&fc));
        // A record without a fingerprint: only the size can tell.
        let old = ModelFile {
            fingerprint: None,
            ..fb.clone()
        };
        assert!(!fa.differs_from(&old));
        assert!(fc.differs_from(&old));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn png_record_round_trips() {
        let dir = std::env::temp_dir().join(format!("llamagen-png-{}", std::process::id()));
        let path = dir.join("x.png");
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let record = PngRecord::new(vec![SampleRecord {
            gpt: ModelFile {
                fingerprint: Some("0123456789abcdef".into()),
                path: "c2i_B_256.pt".into(),
                bytes: 10,
            },
            vq: ModelFile {
                fingerprint: None,
                path: "vq_ds16_c2i.pt".into(),
                bytes: 20,
            },
            model: "GPT-B c2i".into(),
            n_head: Some(12),
            image_size: 256,
            class: Some(207),
            class_name: Some("golden retriever".into()),
            prompt: None,
            params: SamplerParams {
                seed: 9,
                ..Default::default()
            },
            index: 3,
            tokens: vec![1, 2, 3],
            sampling: Default::default(),
            precision: crate::precision::Precision::Bf16,
            quantize: crate::quant::Quantize::Q8,
            decoding: crate::generate::Decoding::Sjd { window: 8 },
            vq_tile: Some(16),
        }]);
        save_png(&path, &img, &record).unwrap();
        assert_eq!(read_png_record(&path).unwrap(), record);
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, img);
        assert!(record.summary().contains("class: 207 (golden retriever)"));
        assert!(record.summary().contains("decoding: sjd (window 8)"));
        assert!(record.summary().contains("tiles of 16×16 tokens"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn grid_places_images_with_gaps() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0]));
        let g = make_grid(&[a.clone(), a.clone(), a], 2);
        assert_eq!((g.width(), g.height()), (2 * 6 + 2, 2 * 6 + 2));
        assert_eq!(g.get_pixel(2, 2), &image::Rgb([255, 0, 0]));
        assert_eq!(g.get_pixel(0, 0), &image::Rgb([0, 0, 0]));
    }
}
