//! The gallery of this session's images, saving them as PNGs with their parameters, and the
//! files a user drops on the window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use egui::TextureHandle;
use image::RgbImage;
use llamagen::image_io::{
    PngRecord, SampleRecord, next_file_number, read_png_record, sample_file_name, save_png,
};

use super::{RunStatus, StudioApp, View};

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

impl StudioApp {
    /// Writes gallery images `from..` into the save folder, numbered on from the highest
    /// already there, each a PNG with its parameters.
    pub(super) fn save_to_folder(&mut self, from: usize) -> Result<(), String> {
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
}
