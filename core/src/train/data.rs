//! Data for training: an ImageNet-style folder (`root/<class>/<image>`), the paper's
//! augmentations (random crop of a randomly resized image, horizontal flip; ten-crop for code
//! extraction), and the compact file of extracted codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use image::imageops::{self, FilterType};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::TrainError;

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "JPEG", "PNG", "JPG"];

/// An image folder: one sub-folder per class (sorted by name = label order).
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// (file, label) for every image.
    pub items: Vec<(PathBuf, usize)>,
    cache: Option<Vec<RgbImage>>,
}

impl ImageFolder {
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        let err = |reason: String| TrainError::Data {
            path: root.to_path_buf(),
            reason,
        };
        let entries = std::fs::read_dir(root).map_err(|e| err(e.to_string()))?;
        let mut classes: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        classes.sort();
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| err(format!("{}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x))
                })
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|f| (f, label)));
        }
        if items.is_empty() {
            return Err(err(
                "no images found: expected root/<class>/<image>.png|jpg (make one with `llamagen dataset shapes`)"
                    .into(),
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            items,
            cache: None,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Decodes every image once and keeps them in memory (small data sets).
    pub fn preload(&mut self) -> Result<(), TrainError> {
        let images = (0..self.items.len())
            .map(|i| self.read(i))
            .collect::<Result<Vec<_>, _>>()?;
        self.cache = Some(images);
        Ok(())
    }

    fn read(&self, i: usize) -> Result<RgbImage, TrainError> {
        let path = &self.items[i].0;
        image::open(path)
            .map(|im| im.to_rgb8())
            .map_err(|e| TrainError::Data {
                path: path.clone(),
                reason: e.to_string(),
            })
    }

    /// Image `i` (from memory when preloaded).
    pub fn image(&self, i: usize) -> Result<RgbImage, TrainError> {
        match &self.cache {
            Some(c) => Ok(c[i].clone()),
            None => self.read(i),
        }
    }

    pub fn label(&self, i: usize) -> usize {
        self.items[i].1
    }
}

fn resize_smaller_side(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let scale = side as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(side),
        ((h as f64 * scale).round() as u32).max(side),
    );
    if (nw, nh) == (w, h) {
        img.clone()
    } else {
        imageops::resize(img, nw, nh, FilterType::CatmullRom)
    }
}

/// Official `center_crop_arr`: resize the smaller side to `size` (bicubic), crop the centre.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let r = resize_smaller_side(img, size);
    let (w, h) = r.dimensions();
    imageops::crop_imm(&r, (w - size) / 2, (h - size) / 2, size, size).to_image()
}

/// Official `random_crop_arr` (crop fraction 0.8–1.0): resize the smaller side to a random
/// length in `[size, ceil(size / 0.8)]`, then crop `size × size` at a random place.
pub fn random_crop(img: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
    let lo = size;
    let hi = (size as f64 / 0.8).ceil() as u32;
    let side = rng.random_range(lo..=hi);
    let r = resize_smaller_side(img, side);
    let (w, h) = r.dimensions();
    let x = rng.random_range(0..=w - size);
    let y = rng.random_range(0..=h - size);
    imageops::crop_imm(&r, x, y, size, size).to_image()
}

/// torchvision `TenCrop(size)` of `center_crop_arr(img, crop_size)`: the four corners and the
/// centre, then the same five of the mirrored image.
pub fn ten_crop(img: &RgbImage, size: u32, crop_range: f64) -> Vec<RgbImage> {
    let big = center_crop(img, (size as f64 * crop_range) as u32);
    let five = |im: &RgbImage| {
        let (w, h) = im.dimensions();
        let at = [
            (0, 0),
            (w - size, 0),
            (0, h - size),
            (w - size, h - size),
            (
                (w - size).div_ceil(2).min(w - size),
                (h - size).div_ceil(2).min(h - size),
            ),
        ];
        at.iter()
            .map(|&(x, y)| imageops::crop_imm(im, x, y, size, size).to_image())
            .collect::<Vec<_>>()
    };
    let mut crops = five(&big);
    crops.extend(five(&imageops::flip_horizontal(&big)));
    crops
}

/// Images (all the same size) → `[batch, 3, H, W]` in [−1, 1].
pub fn images_to_tensor<B: Backend>(images: &[RgbImage], device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = images[0].dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; images.len() * 3 * h * w];
    for (i, img) in images.iter().enumerate() {
        let base = i * 3 * h * w;
        for (x, y, p) in img.enumerate_pixels() {
            for ch in 0..3 {
                data[base + ch * h * w + y as usize * w + x as usize] = p[ch] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_data(
        burn::tensor::TensorData::new(data, [images.len(), 3, h, w]),
        device,
    )
}

/// Metadata of an extracted-codes file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodesMeta {
    pub num_images: usize,
    /// Code grids per image (10 with ten-crop, 2 with the centre crop and its mirror, 1 with
    /// the centre crop alone).
    pub num_aug: usize,
    /// Tokens per grid (grid²).
    pub seq_len: usize,
    pub codebook_size: usize,
    pub image_size: usize,
    pub class_names: Vec<String>,
    /// The tokenizer the codes came from.
    pub tokenizer: String,
    /// One caption per image (from the folder's `captions.tsv`), for text-conditional
    /// training; empty when the data set has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captions: Vec<String>,
}

/// Extracted codes: `codes[(image · num_aug + aug) · seq_len ..]`, with a label per image.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeSet {
    pub meta: CodesMeta,
    pub labels: Vec<u32>,
    pub codes: Vec<u16>,
}

const CODES_MAGIC: &[u8; 8] = b"LGCODES1";

impl CodesMeta {
    /// Which of an image's grids is its centre crop: the fifth of ten crops (see
    /// [`ten_crop`]), else the first.
    pub fn centre_aug(&self) -> usize {
        if self.num_aug == 10 { 4 } else { 0 }
    }
}

impl CodeSet {
    pub fn grid(&self, image: usize, aug: usize) -> &[u16] {
        let n = self.meta.seq_len;
        let at = (image * self.meta.num_aug + aug) * n;
        &self.codes[at..at + n]
    }

    /// Writes the file atomically (beside it, then renamed).
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let tmp = path.with_extension("partial");
        let mut buf = Vec::with_capacity(16 + self.labels.len() * 4 + self.codes.len() * 2);
        let meta = serde_json::to_vec(&self.meta).expect("serialisable");
        buf.extend_from_slice(CODES_MAGIC);
        buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        buf.extend_from_slice(&meta);
        for l in &self.labels {
            buf.extend_from_slice(&l.to_le_bytes());
        }
        for c in &self.codes {
            buf.extend_from_slice(&c.to_le_bytes());
        }
        let mut f = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        f.write_all(&buf).map_err(|e| TrainError::io(&tmp, e))?;
        f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
    }

    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let err = |reason: String| TrainError::Data {
            path: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() < 12 || &bytes[..8] != CODES_MAGIC {
            return Err(err(
                "not a codes file written by `llamagen extract-codes`".into()
            ));
        }
        let mlen = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let meta_end = 12 + mlen;
        let meta: CodesMeta = bytes
            .get(12..meta_end)
            .ok_or_else(|| err("truncated header".into()))
            .and_then(|m| serde_json::from_slice(m).map_err(|e| err(e.to_string())))?;
        if meta.num_images > 0 && (meta.num_aug == 0 || meta.seq_len == 0) {
            return Err(err(format!(
                "{} images with {} grids of {} codes each: every image needs at least one grid of codes",
                meta.num_images, meta.num_aug, meta.seq_len
            )));
        }
        let n_labels = meta.num_images;
        // Sizes come from the file: checked, so that a hostile header is an error, not an
        // overflow.
        let expect = meta
            .num_images
            .checked_mul(meta.num_aug)
            .and_then(|n| n.checked_mul(meta.seq_len))
            .and_then(|n_codes| n_codes.checked_mul(2))
            .and_then(|code_bytes| n_labels.checked_mul(4)?.checked_add(code_bytes))
            .and_then(|body| body.checked_add(meta_end));
        let Some(expect) = expect else {
            return Err(err(format!(
                "its header declares {} images × {} grids × {} codes, more than any file holds",
                meta.num_images, meta.num_aug, meta.seq_len
            )));
        };
        if bytes.len() != expect {
            return Err(err(format!(
                "{} bytes, expected {expect}: the file is truncated or corrupt",
                bytes.len()
            )));
        }
        let labels: Vec<u32> = bytes[meta_end..meta_end + 4 * n_labels]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let codes: Vec<u16> = bytes[meta_end + 4 * n_labels..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes")))
            .collect();
        if !meta.captions.is_empty() && meta.captions.len() != meta.num_images {
            return Err(err(format!(
                "{} captions for {} images",
                meta.captions.len(),
                meta.num_images
            )));
        }
        if !meta.class_names.is_empty()
            && let Some(bad) = labels
                .iter()
                .find(|&&l| l as usize >= meta.class_names.len())
        {
            return Err(err(format!(
                "label {bad} is outside its {} classes",
                meta.class_names.len()
            )));
        }
        if let Some(bad) = codes.iter().find(|&&c| c as usize >= meta.codebook_size) {
            return Err(err(format!(
                "code {bad} is outside the codebook ({})",
                meta.codebook_size
            )));
        }
        Ok(Self {
            meta,
            labels,
            codes,
        })
    }
}

/// The file of captions `llamagen dataset` writes beside the class folders.
pub const CAPTIONS_FILE: &str = "captions.tsv";

/// Reads a captions file (`class/file<TAB>caption`, one image a line) and returns the captions
/// in [`ImageFolder`] order (classes sorted by name, then files sorted), checking that it names
/// exactly `labels.len()` images and that each line's class folder is the image's class.
pub fn captions_in_folder_order(
    path: &Path,
    class_names: &[String],
    labels: &[u32],
) -> Result<Vec<String>, TrainError> {
    let err = |reason: String| TrainError::Data {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (file, caption) = line
            .split_once('\t')
            .ok_or_else(|| err(format!("line {}: expected `class/file<TAB>caption`", n + 1)))?;
        let (class, name) = file
            .split_once('/')
            .ok_or_else(|| err(format!("line {}: `{file}` is not `class/file`", n + 1)))?;
        rows.push((class, name, caption.trim()));
    }
    if rows.len() != labels.len() {
        return Err(err(format!(
            "{} captions for {} images: the file does not describe this data set",
            rows.len(),
            labels.len()
        )));
    }
    rows.sort_by(|a, b| (a.0, Path::new(a.1)).cmp(&(b.0, Path::new(b.1))));
    rows.iter()
        .zip(labels)
        .enumerate()
        .map(
            |(i, (&(class, name, caption), &label))| match class_names.get(label as usize) {
                Some(c) if c == class => Ok(caption.to_string()),
                _ => Err(err(format!(
                    "image {i} is of class `{}` but its caption line is `{class}/{name}`",
                    class_names.get(label as usize).map_or("?", String::as_str)
                ))),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_have_the_right_size() {
        let img = RgbImage::from_fn(80, 64, |x, y| image::Rgb([x as u8, y as u8, 0]));
        assert_eq!(center_crop(&img, 64).dimensions(), (64, 64));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for _ in 0..20 {
            assert_eq!(random_crop(&img, 64, &mut rng).dimensions(), (64, 64));
        }
        let crops = ten_crop(&img, 64, 1.1);
        assert_eq!(crops.len(), 10);
        assert!(crops.iter().all(|c| c.dimensions() == (64, 64)));
        // The second five are the mirrors of the first five.
        assert_eq!(crops[5], imageops::flip_horizontal(&crops[1]));
        assert_eq!(crops[4], imageops::flip_horizontal(&crops[9]));
    }

    #[test]
    fn the_centre_grid_is_the_centre_crop() {
        // A bright square at the centre of the image: only the centre crop and its mirror
        // (the fifth and tenth of ten) show it at their own centre.
        let img = RgbImage::from_fn(80, 80, |x, y| {
            let inside = (38..42).contains(&x) && (38..42).contains(&y);
            image::Rgb([if inside { 255 } else { 0 }; 3])
        });
        let crops = ten_crop(&img, 64, 2.0);
        let meta = |num_aug| CodesMeta {
            num_images: 1,
            num_aug,
            seq_len: 1,
            codebook_size: 2,
            image_size: 64,
            class_names: Vec::new(),
            tokenizer: String::new(),
            captions: Vec::new(),
        };
        let centre = meta(10).centre_aug();
        for (i, crop) in crops.iter().enumerate() {
            let bright = crop.get_pixel(32, 32)[0] > 128;
            assert_eq!(bright, i == centre || i == centre + 5, "crop {i}");
        }
        assert_eq!((meta(2).centre_aug(), meta(1).centre_aug()), (0, 0));
    }

    #[test]
    fn codes_round_trip_and_reject_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let set = CodeSet {
            meta: CodesMeta {
                num_images: 2,
                num_aug: 2,
                seq_len: 3,
                codebook_size: 16,
                image_size: 12,
                class_names: vec!["a".into(), "b".into()],
                tokenizer: "t".into(),
                captions: vec!["an a".into(), "a b".into()],
            },
            labels: vec![0, 1],
            codes: (0..12).collect(),
        };
        let path = dir.path().join("c.codes");
        set.write(&path).unwrap();
        let back = CodeSet::read(&path).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.grid(1, 0), &[6, 7, 8]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(CodeSet::read(&path).is_err());
        std::fs::write(&path, b"hello").unwrap();
        assert!(CodeSet::read(&path).is_err());
    }

    /// A header is the file's word, not the truth: sizes that overflow or grids with no codes
    /// are errors naming the file, never an overflow or an empty grid.
    #[test]
    fn hostile_codes_headers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.codes");
        let write = |meta: serde_json::Value, body: &[u8]| {
            let meta = serde_json::to_vec(&meta).unwrap();
            let mut bytes = CODES_MAGIC.to_vec();
            bytes.extend((meta.len() as u32).to_le_bytes());
            bytes.extend(meta);
            bytes.extend(body);
            std::fs::write(&path, bytes).unwrap();
        };
        let meta = |num_images: u64, num_aug: u64, seq_len: u64| {
            serde_json::json!({
                "num_images": num_images, "num_aug": num_aug, "seq_len": seq_len,
                "codebook_size": 16, "image_size": 8, "class_names": ["a"], "tokenizer": "t",
            })
        };
        for (images, augs, len) in [
            (u64::MAX, 2, 2),
            (1 << 40, 1 << 40, 1),
            (2, u64::MAX / 2, 3),
            (1, 1, u64::MAX / 2),
        ] {
            write(meta(images, augs, len), &[0; 16]);
            let e = CodeSet::read(&path).unwrap_err().to_string();
            assert!(e.contains("h.codes"), "{e}");
        }
        // One image, no grid (or grids of no codes): nothing to train on, and `grid` would
        // have nothing to give.
        for (augs, len) in [(0, 4), (2, 0)] {
            write(meta(1, augs, len), &[0; 4]);
            let e = CodeSet::read(&path).unwrap_err().to_string();
            assert!(e.contains("at least one grid"), "{e}");
        }
        // The control: the same writer with honest sizes reads back.
        let mut body = 0u32.to_le_bytes().to_vec();
        body.extend([1u8, 0, 2, 0]);
        write(meta(1, 1, 2), &body);
        assert_eq!(CodeSet::read(&path).unwrap().grid(0, 0), &[1, 2]);
    }

    #[test]
    fn captions_follow_the_folder_order_and_must_match_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CAPTIONS_FILE);
        // Written in another order than the folder's (classes sorted, then files).
        std::fs::write(
            &path,
            "star/1.png\ta red star\nstar/0.png\ta blue star\nring/0.png\ta green ring\n",
        )
        .unwrap();
        let classes = vec!["ring".to_string(), "star".to_string()];
        let got = captions_in_folder_order(&path, &classes, &[0, 1, 1]).unwrap();
        assert_eq!(got, ["a green ring", "a blue star", "a red star"]);
        // Wrong count, or a class that does not match the image's label.
        let e = captions_in_folder_order(&path, &classes, &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("3 captions for 2 images"), "{e}");
        let e = captions_in_folder_order(&path, &classes, &[0, 0, 1]).unwrap_err();
        assert!(e.to_string().contains("class `ring`"), "{e}");
        std::fs::write(&path, "no tab here\n").unwrap();
        assert!(captions_in_folder_order(&path, &classes, &[0]).is_err());
    }
}
