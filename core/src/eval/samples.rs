//! A resumable sample run for FID: a folder of numbered PNGs (each with its generation record),
//! the run's settings beside them, and at the end one `.npz` of all of them in order, as the
//! official `sample_c2i_ddp.py` makes its folder and then `create_npz_from_sample_folder`.
//!
//! The folder is the run's state: stopping a run keeps every image it wrote, and the same
//! command started again makes only the missing ones. A folder made with other settings is
//! refused, naming what differs, so that one `.npz` never mixes two runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::npz::{NpzError, NpzWriter};

/// The settings file of a sample folder.
pub const MANIFEST: &str = "run.json";

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot use the sample folder {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error(
        "the sample folder {path} holds a run with other settings ({}): its images would not \
         belong to this one",
        differ.join(", ")
    )]
    OtherRun { path: PathBuf, differ: Vec<String> },
    #[error("{path}: image {index} is {found}, the run makes {expected}")]
    BadImage {
        path: PathBuf,
        index: usize,
        found: String,
        expected: String,
    },
    #[error("{missing} of {total} images are not made yet (the first: {first})")]
    Missing {
        missing: usize,
        total: usize,
        first: usize,
    },
    #[error(transparent)]
    Npz(#[from] NpzError),
}

/// What a sample run is: every setting that changes its images. Two runs with equal manifests
/// make the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleManifest {
    /// Images in the run.
    pub total: usize,
    /// Their side in pixels.
    pub image_size: usize,
    /// Everything else (models, conditions, sampler, decoding, batch, backend), as the caller
    /// states it; compared key by key when a run is resumed.
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// A sample folder opened for a run.
#[derive(Debug)]
pub struct SampleFolder {
    dir: PathBuf,
    manifest: SampleManifest,
}

impl SampleFolder {
    /// Opens `dir` for the run `manifest`: a new (or empty) folder is made and its settings
    /// written; a folder of the same run is taken as it is (its images kept); a folder of
    /// another run is refused.
    pub fn open(dir: &Path, manifest: SampleManifest) -> Result<Self, SampleError> {
        let err = |reason: String| SampleError::Folder {
            path: dir.to_path_buf(),
            reason,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(err("it is a file, not a folder".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let path = dir.join(MANIFEST);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
            let saved: SampleManifest = serde_json::from_str(&text)
                .map_err(|e| err(format!("{MANIFEST} is not a sample run's settings: {e}")))?;
            let differ = differences(&saved, &manifest);
            if !differ.is_empty() {
                return Err(SampleError::OtherRun {
                    path: dir.to_path_buf(),
                    differ,
                });
            }
        } else {
            let stray = std::fs::read_dir(dir)
                .map_err(|e| err(e.to_string()))?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".png"));
            if stray {
                return Err(err(format!(
                    "it holds PNGs but no {MANIFEST}: not a folder this command made"
                )));
            }
            let text = serde_json::to_string_pretty(&manifest).map_err(|e| err(e.to_string()))?;
            let tmp = dir.join(format!("{MANIFEST}.partial"));
            std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &SampleManifest {
        &self.manifest
    }

    /// Where image `index` goes: `000123.png`, as the official sampler names them.
    pub fn image_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{index:06}.png"))
    }

    /// Indices of the images not written yet, in order. A file is there only once complete
    /// (PNGs are written under another name and renamed).
    pub fn missing(&self) -> Vec<usize> {
        (0..self.manifest.total)
            .filter(|&i| !self.image_path(i).is_file())
            .collect()
    }

    /// Every image of the run, in order, into one `[N, H, W, 3]` `uint8` array `arr_0` of the
    /// `.npz` `out` (written whole, then named). Each image is checked to be the run's size.
    /// `progress` is told of each image packed.
    pub fn pack(
        &self,
        out: &Path,
        mut progress: impl FnMut(usize),
    ) -> Result<PathBuf, SampleError> {
        let missing = self.missing();
        if let Some(&first) = missing.first() {
            return Err(SampleError::Missing {
                missing: missing.len(),
                total: self.manifest.total,
                first,
            });
        }
        let side = self.manifest.image_size;
        let mut npz = NpzWriter::create(out, "arr_0", &[self.manifest.total, side, side, 3])?;
        for index in 0..self.manifest.total {
            let path = self.image_path(index);
            let image = image::open(&path)
                .map_err(|e| SampleError::BadImage {
                    path: path.clone(),
                    index,
                    found: format!("unreadable ({e})"),
                    expected: format!("a {side}×{side} PNG"),
                })?
                .to_rgb8();
            if (image.width() as usize, image.height() as usize) != (side, side) {
                return Err(SampleError::BadImage {
                    path,
                    index,
                    found: format!("{}×{}", image.width(), image.height()),
                    expected: format!("{side}×{side}"),
                });
            }
            npz.write(image.as_raw())?;
            progress(index);
        }
        Ok(npz.finish()?)
    }
}

/// The settings in which two manifests differ, by name.
fn differences(a: &SampleManifest, b: &SampleManifest) -> Vec<String> {
    let mut out = Vec::new();
    if a.total != b.total {
        out.push(format!("images: {} there, {} now", a.total, b.total));
    }
    if a.image_size != b.image_size {
        out.push(format!(
            "image size: {} there, {} now",
            a.image_size, b.image_size
        ));
    }
    let mut keys: Vec<&String> = a.settings.keys().chain(b.settings.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (x, y) = (a.settings.get(key), b.settings.get(key));
        if x != y {
            let show = |v: Option<&serde_json::Value>| {
                v.map_or_else(|| "none".to_string(), |v| v.to_string())
            };
            out.push(format!("{key}: {} there, {} now", show(x), show(y)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(total: usize, cfg: f64) -> SampleManifest {
        SampleManifest {
            total,
            image_size: 4,
            settings: json!({"cfg_scale": cfg, "batch": 2})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    fn write_image(folder: &SampleFolder, index: usize, side: u32) {
        let img = image::RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([index as u8, x as u8, y as u8])
        });
        img.save(folder.image_path(index)).unwrap();
    }

    #[test]
    fn a_folder_resumes_its_own_run_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("run");
        let folder = SampleFolder::open(&at, manifest(3, 4.0)).unwrap();
        assert_eq!(folder.missing(), vec![0, 1, 2]);
        write_image(&folder, 1, 4);
        drop(folder);

        let again = SampleFolder::open(&at, manifest(3, 4.0)).unwrap();
        assert_eq!(again.missing(), vec![0, 2], "the image made before is kept");
        assert!(matches!(
            again.pack(&dir.path().join("x.npz"), |_| {}),
            Err(SampleError::Missing {
                missing: 2,
                total: 3,
                first: 0
            })
        ));

        match SampleFolder::open(&at, manifest(3, 2.0)) {
            Err(SampleError::OtherRun { differ, .. }) => {
                assert_eq!(differ, vec!["cfg_scale: 4.0 there, 2.0 now".to_string()])
            }
            other => panic!("{other:?}"),
        }
        let loose = dir.path().join("loose");
        std::fs::create_dir_all(&loose).unwrap();
        std::fs::write(loose.join("a.png"), b"").unwrap();
        assert!(matches!(
            SampleFolder::open(&loose, manifest(3, 4.0)),
            Err(SampleError::Folder { .. })
        ));
    }

    #[test]
    fn a_complete_folder_packs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SampleFolder::open(&dir.path().join("run"), manifest(3, 4.0)).unwrap();
        for i in [2, 0, 1] {
            write_image(&folder, i, 4);
        }
        let out = dir.path().join("s.npz");
        let mut seen = Vec::new();
        folder.pack(&out, |i| seen.push(i)).unwrap();
        assert_eq!(seen, vec![0, 1, 2]);
        let (shape, data) = crate::eval::npz::read_u8(&out, "arr_0").unwrap();
        assert_eq!(shape, vec![3, 4, 4, 3]);
        // Image i, pixel (x=1, y=2): [i, 1, 2].
        for i in 0..3 {
            let at = ((i * 4 + 2) * 4 + 1) * 3;
            assert_eq!(&data[at..at + 3], &[i as u8, 1, 2]);
        }

        write_image(&folder, 1, 5);
        let bad = dir.path().join("bad.npz");
        assert!(matches!(
            folder.pack(&bad, |_| {}),
            Err(SampleError::BadImage { index: 1, .. })
        ));
        assert!(!bad.exists() && !crate::eval::npz::partial_path(&bad).exists());
    }
}
