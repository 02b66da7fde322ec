//! The procedural "shapes" data set: class-conditional 64×64 images that the project draws
//! itself (anti-aliased, with tiny-skia), deterministic from a seed. It is what the bundled demo
//! model is trained on, so everything runs on a fresh machine with no download.
//!
//! Every sample is a pure function of `(seed, class, index)`: any image can be redrawn alone.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Rect, Transform};

/// The class names, in label order.
pub const SHAPE_CLASSES: [&str; 10] = [
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "heart",
    "stripes",
    "checkerboard",
    "crescent",
];

/// Named colours (sRGB) that samples draw from, with a little jitter; the names make captions.
pub const PALETTE: [(&str, [u8; 3]); 11] = [
    ("red", [220, 40, 40]),
    ("orange", [245, 140, 30]),
    ("yellow", [240, 220, 40]),
    ("green", [40, 170, 60]),
    ("cyan", [40, 200, 220]),
    ("blue", [40, 70, 210]),
    ("purple", [140, 50, 190]),
    ("pink", [245, 130, 190]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
    ("gray", [128, 128, 128]),
];

/// The caption of a sample: "a red star on a blue background", "red stripes on blue".
pub fn caption(shape: &str, foreground: &str, background: &str) -> String {
    match shape {
        "stripes" | "checkerboard" => format!("{foreground} {shape} on {background}"),
        _ => format!("a {foreground} {shape} on a {background} background"),
    }
}

/// One drawn sample.
#[derive(Debug, Clone)]
pub struct ShapeSample {
    pub class: usize,
    /// Row-major RGB, `size × size × 3`.
    pub rgb: Vec<u8>,
    pub size: u32,
    pub foreground: &'static str,
    pub background: &'static str,
}

impl ShapeSample {
    pub fn class_name(&self) -> &'static str {
        SHAPE_CLASSES[self.class]
    }

    /// "a red star on a blue background".
    pub fn caption(&self) -> String {
        caption(self.class_name(), self.foreground, self.background)
    }

    pub fn to_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.size, self.size, self.rgb.clone())
            .expect("buffer is size × size × 3")
    }
}

fn luminance(c: [u8; 3]) -> f32 {
    (0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32) / 255.0
}

/// A per-sample random stream: a pure function of `(seed, class, index)`.
fn sample_rng(seed: u64, class: usize, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((class as u64) << 40) ^ index);
    rng
}

fn jitter(rng: &mut ChaCha8Rng, c: [u8; 3]) -> Color {
    let j =
        |v: u8, rng: &mut ChaCha8Rng| (v as i32 + rng.random_range(-18..=18)).clamp(0, 255) as u8;
    Color::from_rgba8(j(c[0], rng), j(c[1], rng), j(c[2], rng), 255)
}

/// Picks a foreground and a background colour that a person tells apart at a glance.
fn pick_colours(rng: &mut ChaCha8Rng) -> (usize, usize) {
    loop {
        let fg = rng.random_range(0..PALETTE.len());
        let bg = rng.random_range(0..PALETTE.len());
        if fg != bg && (luminance(PALETTE[fg].1) - luminance(PALETTE[bg].1)).abs() > 0.25 {
            return (fg, bg);
        }
    }
}

fn star_path(cx: f32, cy: f32, r: f32, points: usize, inner: f32) -> Option<tiny_skia::Path> {
    let mut pb = PathBuilder::new();
    for i in 0..points * 2 {
        let rad = if i % 2 == 0 { r } else { r * inner };
        let a = std::f32::consts::PI * i as f32 / points as f32 - std::f32::consts::FRAC_PI_2;
        let (x, y) = (cx + rad * a.cos(), cy + rad * a.sin());
        if i == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    pb.close();
    pb.finish()
}

fn polygon(points: &[(f32, f32)]) -> Option<tiny_skia::Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(points[0].0, points[0].1);
    for p in &points[1..] {
        pb.line_to(p.0, p.1);
    }
    pb.close();
    pb.finish()
}

fn heart_path(cx: f32, cy: f32, r: f32) -> Option<tiny_skia::Path> {
    // Two lobes and a point, drawn with cubic curves around (cx, cy).
    let mut pb = PathBuilder::new();
    let top = cy - 0.35 * r;
    pb.move_to(cx, top);
    pb.cubic_to(
        cx,
        cy - 1.05 * r,
        cx - 1.15 * r,
        cy - 1.0 * r,
        cx - 1.0 * r,
        cy - 0.2 * r,
    );
    pb.cubic_to(
        cx - 0.9 * r,
        cy + 0.35 * r,
        cx - 0.3 * r,
        cy + 0.6 * r,
        cx,
        cy + r,
    );
    pb.cubic_to(
        cx + 0.3 * r,
        cy + 0.6 * r,
        cx + 0.9 * r,
        cy + 0.35 * r,
        cx + 1.0 * r,
        cy - 0.2 * r,
    );
    pb.cubic_to(cx + 1.15 * r, cy - 1.0 * r, cx, cy - 1.05 * r, cx, top);
    pb.close();
    pb.finish()
}

/// Draws sample `index` of class `class` (`< SHAPE_CLASSES.len()`) at `size × size` pixels.
pub fn render(seed: u64, class: usize, index: u64, size: u32) -> ShapeSample {
    assert!(class < SHAPE_CLASSES.len(), "class {class} out of range");
    let mut rng = sample_rng(seed, class, index);
    let (fg, bg) = pick_colours(&mut rng);
    let fg_colour = jitter(&mut rng, PALETTE[fg].1);
    let bg_colour = jitter(&mut rng, PALETTE[bg].1);
    let mut pixmap = Pixmap::new(size, size).expect("size > 0");
    pixmap.fill(bg_colour);
    let mut paint = Paint::default();
    paint.set_color(fg_colour);
    paint.anti_alias = true;

    let s = size as f32;
    // Size, position and rotation of a single figure, kept inside the frame.
    let r = s * rng.random_range(0.2..0.36);
    let margin = r * 1.05;
    let cx = rng.random_range(margin..s - margin);
    let cy = rng.random_range(margin..s - margin);
    let angle: f32 = rng.random_range(0.0..360.0);
    let rot = Transform::from_rotate_at(angle, cx, cy);

    let mut fill = |path: Option<tiny_skia::Path>, rule: FillRule, t: Transform| {
        if let Some(path) = path {
            pixmap.fill_path(&path, &paint, rule, t, None);
        }
    };
    match SHAPE_CLASSES[class] {
        "circle" => fill(
            PathBuilder::from_circle(cx, cy, r),
            FillRule::Winding,
            Transform::identity(),
        ),
        "square" => {
            let h = r * 0.85;
            fill(
                Rect::from_xywh(cx - h, cy - h, 2.0 * h, 2.0 * h).map(PathBuilder::from_rect),
                FillRule::Winding,
                rot,
            )
        }
        "triangle" => {
            let pts: Vec<(f32, f32)> = (0..3)
                .map(|i| {
                    let a =
                        2.0 * std::f32::consts::PI * i as f32 / 3.0 - std::f32::consts::FRAC_PI_2;
                    (cx + r * a.cos(), cy + r * a.sin())
                })
                .collect();
            fill(polygon(&pts), FillRule::Winding, rot)
        }
        "star" => fill(star_path(cx, cy, r, 5, 0.42), FillRule::Winding, rot),
        "ring" => {
            let mut pb = PathBuilder::new();
            pb.push_circle(cx, cy, r);
            pb.push_circle(cx, cy, r * rng.random_range(0.5..0.65));
            fill(pb.finish(), FillRule::EvenOdd, Transform::identity())
        }
        "cross" => {
            let w = r * 0.32;
            let mut pb = PathBuilder::new();
            pb.push_rect(Rect::from_xywh(cx - r, cy - w, 2.0 * r, 2.0 * w).expect("finite"));
            pb.push_rect(Rect::from_xywh(cx - w, cy - r, 2.0 * w, 2.0 * r).expect("finite"));
            fill(pb.finish(), FillRule::Winding, rot)
        }
        "heart" => {
            // Hearts stay upright-ish so that they read as hearts.
            let tilt: f32 = rng.random_range(-25.0..25.0);
            fill(
                heart_path(cx, cy, r),
                FillRule::Winding,
                Transform::from_rotate_at(tilt, cx, cy),
            )
        }
        "stripes" => {
            let period = s * rng.random_range(0.12..0.22);
            let width = period * rng.random_range(0.4..0.6);
            let mut pb = PathBuilder::new();
            let mut x = -s;
            while x < 2.0 * s {
                pb.push_rect(Rect::from_xywh(x, -s, width, 3.0 * s).expect("finite"));
                x += period;
            }
            fill(
                pb.finish(),
                FillRule::Winding,
                Transform::from_rotate_at(angle, s / 2.0, s / 2.0),
            )
        }
        "checkerboard" => {
            let cell = s * rng.random_range(0.12..0.2);
            let mut pb = PathBuilder::new();
            let n = (3.0 * s / cell) as i32 + 1;
            for i in 0..n {
                for j in 0..n {
                    if (i + j) % 2 == 0 {
                        let (x, y) = (-s + i as f32 * cell, -s + j as f32 * cell);
                        pb.push_rect(Rect::from_xywh(x, y, cell, cell).expect("finite"));
                    }
                }
            }
            let t = Transform::from_rotate_at(angle % 90.0, s / 2.0, s / 2.0);
            fill(pb.finish(), FillRule::Winding, t)
        }
        "crescent" => {
            // A disc minus an offset disc: even-odd fill of two circles, clipped to the first.
            let off = r * rng.random_range(0.4..0.55);
            let mut pb = PathBuilder::new();
            pb.push_circle(cx, cy, r);
            fill(pb.finish(), FillRule::Winding, Transform::identity());
            let mut bite = Paint::default();
            bite.set_color(bg_colour);
            bite.anti_alias = true;
            if let Some(p) = PathBuilder::from_circle(cx + off, cy - off * 0.3, r * 0.85) {
                pixmap.fill_path(&p, &bite, FillRule::Winding, rot_about(angle, cx, cy), None);
            }
        }
        other => unreachable!("class {other} has no drawing"),
    }

    let rgb = pixmap
        .pixels()
        .iter()
        .flat_map(|p| [p.red(), p.green(), p.blue()])
        .collect();
    ShapeSample {
        class,
        rgb,
        size,
        foreground: PALETTE[fg].0,
        background: PALETTE[bg].0,
    }
}

fn rot_about(angle: f32, cx: f32, cy: f32) -> Transform {
    Transform::from_rotate_at(angle, cx, cy)
}

/// Errors of writing the data set.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
}

/// Writes `per_class` samples of every class as an image folder `out/<class>/<index>.png`, plus
/// `out/captions.tsv` (`class/index.png<TAB>caption`). Calls `progress` after each image.
pub fn write_image_folder(
    out: &Path,
    per_class: u64,
    seed: u64,
    size: u32,
    mut progress: impl FnMut(),
) -> Result<(), DatasetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatasetError::Io { path, source }
    };
    let mut captions = String::new();
    for (class, name) in SHAPE_CLASSES.iter().enumerate() {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for index in 0..per_class {
            let sample = render(seed, class, index, size);
            let file = format!("{index:05}.png");
            let path = dir.join(&file);
            sample
                .to_image()
                .save(&path)
                .map_err(|source| DatasetError::Image {
                    path: path.clone(),
                    source,
                })?;
            captions.push_str(&format!("{name}/{file}\t{}\n", sample.caption()));
            progress();
        }
    }
    let path = out.join("captions.tsv");
    std::fs::write(&path, captions).map_err(io(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        for class in 0..SHAPE_CLASSES.len() {
            let a = render(7, class, 3, 64);
            let b = render(7, class, 3, 64);
            assert_eq!(a.rgb, b.rgb, "class {class} is not deterministic");
            let c = render(7, class, 4, 64);
            assert_ne!(
                a.rgb, c.rgb,
                "class {class}: two indices drew the same image"
            );
            assert_eq!(a.rgb.len(), 64 * 64 * 3);
        }
    }

    #[test]
    fn figures_cover_a_real_part_of_the_image() {
        // The most common colour is the background (or one stripe colour); every class paints a
        // visible share of other pixels, never the whole frame.
        for class in 0..SHAPE_CLASSES.len() {
            for index in 0..20 {
                let s = render(1, class, index, 64);
                let mut counts = std::collections::HashMap::new();
                for p in s.rgb.chunks(3) {
                    *counts.entry([p[0], p[1], p[2]]).or_insert(0usize) += 1;
                }
                let mode = counts
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(c, _)| *c)
                    .unwrap();
                let other = s
                    .rgb
                    .chunks(3)
                    .filter(|p| {
                        p.iter()
                            .zip(mode)
                            .map(|(&a, b)| (a as i32 - b as i32).abs())
                            .sum::<i32>()
                            > 30
                    })
                    .count();
                let share = other as f64 / (64.0 * 64.0);
                assert!(
                    (0.03..0.97).contains(&share),
                    "{} #{index}: foreground share {share}",
                    SHAPE_CLASSES[class]
                );
            }
        }
    }

    #[test]
    fn captions_name_colour_and_shape() {
        let s = render(3, 3, 0, 64);
        let c = s.caption();
        assert!(
            c.contains("star") && c.contains(s.foreground) && c.contains(s.background),
            "{c}"
        );
    }
}
