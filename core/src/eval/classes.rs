//! Class accuracy of the procedural-shape models: how often a shape classifier recognises what a
//! generator drew for each class (or each prompt's shape), and how often it still recognises
//! fresh images after a round trip through the tokenizer. `llamagen eval-classes` prints and
//! serialises what these functions count.

use std::collections::HashMap;
use std::time::Instant;

use burn::prelude::*;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::{PALETTE, SHAPE_CLASSES, caption, render};
use crate::generate::{GenerateError, Generator, Request, RequestCondition, decode_tokens};
use crate::image_io::tensor_to_images;
use crate::sampling::SamplerParams;
use crate::train::classifier::ShapeClassifier;
use crate::train::data::images_to_tensor;
use crate::vq::VqModel;

/// Right answers of one classifier, per class, on fresh procedural images and on their
/// reconstructions by the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundTrip {
    pub original: Vec<usize>,
    pub reconstruction: Vec<usize>,
}

/// The seed of [`reconstruction_accuracy`]'s images for a run seeded `seed`: another than the
/// data set's (0) and the classifier's held-out images.
pub fn round_trip_seed(seed: u64) -> u64 {
    5_000_003 + seed
}

/// Renders `num` fresh images of every shape class, passes them through `vq` (encode,
/// quantize, decode) `batch_size` at a time, and counts what each classifier recognises before
/// and after.
pub fn reconstruction_accuracy<B: Backend>(
    classifiers: &[ShapeClassifier<B>],
    vq: &VqModel<B>,
    image_size: usize,
    num: usize,
    batch_size: usize,
    seed: u64,
    device: &B::Device,
) -> Vec<RoundTrip> {
    let seed = round_trip_seed(seed);
    let n = SHAPE_CLASSES.len();
    let mut out = vec![
        RoundTrip {
            original: vec![0; n],
            reconstruction: vec![0; n],
        };
        classifiers.len()
    ];
    for c in 0..n {
        let items: Vec<u64> = (0..num as u64).collect();
        for chunk in items.chunks(batch_size.max(1)) {
            let images: Vec<RgbImage> = chunk
                .iter()
                .map(|&i| render(seed, c, i, image_size as u32).to_image())
                .collect();
            let rec = tensor_to_images(vq.forward(images_to_tensor::<B>(&images, device)));
            for (clf, counts) in classifiers.iter().zip(&mut out) {
                counts.original[c] += clf.classify(&images).iter().filter(|&&p| p == c).count();
                counts.reconstruction[c] += clf.classify(&rec).iter().filter(|&&p| p == c).count();
            }
        }
    }
    out
}

/// The prompt the evaluation asks a text-conditional model for, for `class` and a sample's
/// `seed`: the data set's caption with two distinct colours drawn from the seed.
pub fn eval_prompt(class: &str, seed: u64) -> String {
    let bg = eval_background(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fg = (bg + rng.random_range(1..PALETTE.len())) % PALETTE.len();
    caption(class, PALETTE[fg].0, PALETTE[bg].0)
}

/// The background colour (a [`PALETTE`] index) of [`eval_prompt`]'s prompt for `seed`.
pub fn eval_background(seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6267);
    rng.random_range(0..PALETTE.len())
}

/// The palette colour nearest to the mean of an image's outer 4-pixel frame (where the shape
/// classes show their background).
pub fn frame_colour(img: &RgbImage) -> usize {
    let (w, h) = img.dimensions();
    let mut sum = [0f64; 3];
    let mut n = 0f64;
    for (x, y, p) in img.enumerate_pixels() {
        if x < 4 || y < 4 || x + 4 >= w || y + 4 >= h {
            for k in 0..3 {
                sum[k] += p[k] as f64;
            }
            n += 1.0;
        }
    }
    let mean = sum.map(|v| v / n.max(1.0));
    let dist = |c: [u8; 3]| (0..3).map(|k| (c[k] as f64 - mean[k]).powi(2)).sum::<f64>();
    (0..PALETTE.len())
        .min_by(|&a, &b| dist(PALETTE[a].1).total_cmp(&dist(PALETTE[b].1)))
        .unwrap_or(0)
}

/// The seed of sample `index` of the model's class `class` in a run seeded `seed`.
pub fn sample_seed(seed: u64, class: usize, index: u64) -> u64 {
    seed + (class as u64) * 100_003 + index
}

/// What to generate: `num` samples of each of the model's classes (`names`, the shape of each;
/// for a text model, the shapes its prompts name), drawn with `sampler` (its seed is the run's
/// base seed).
#[derive(Debug, Clone)]
pub struct ClassEvalPlan<'a> {
    pub names: &'a [String],
    pub num: usize,
    pub batch_size: usize,
    pub sampler: SamplerParams,
    /// The encoded [`eval_prompt`] of every sample of a text-conditional model (by prompt);
    /// `None` for a class-conditional one.
    pub prompts: Option<&'a HashMap<String, RequestCondition>>,
}

impl ClassEvalPlan<'_> {
    /// Every prompt a text-conditional run asks for, in order: encode them before
    /// [`class_accuracy`].
    pub fn prompt_texts(names: &[String], num: usize, seed: u64) -> Vec<String> {
        (0..names.len())
            .flat_map(|c| (0..num as u64).map(move |i| (c, i)))
            .map(|(c, i)| eval_prompt(&names[c], sample_seed(seed, c, i)))
            .collect()
    }
}

/// What the classifiers took the generated samples for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassAccuracy {
    /// `[classifier][model class][shape]`: how many samples of the class each classifier took
    /// for each shape.
    pub taken_for: Vec<Vec<[usize; SHAPE_CLASSES.len()]>>,
    /// Samples per class.
    pub num: usize,
    /// Forward passes summed over the samples.
    pub forward_passes: usize,
    /// Seconds spent generating (not decoding or classifying).
    pub generation_seconds: f64,
    /// Text models: samples whose frame shows the prompt's background colour, of those
    /// checked (shape classes; stripes and checkerboards split the frame between both colours).
    pub background: Option<(usize, usize)>,
}

/// One classifier's verdict: right answers per class, and each class's most frequent wrong
/// answer (a shape index) with its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub right: Vec<usize>,
    pub mistaken_for: Vec<Option<(usize, usize)>>,
}

impl ClassAccuracy {
    /// Samples in all.
    pub fn samples(&self) -> usize {
        self.num * self.taken_for.first().map_or(0, Vec::len)
    }

    /// The verdict of classifier `k`, where `shape_of[c]` is the shape of the model's class `c`.
    pub fn verdict(&self, k: usize, shape_of: &[usize]) -> Verdict {
        let taken = &self.taken_for[k];
        let right = taken
            .iter()
            .enumerate()
            .map(|(c, counts)| counts[shape_of[c]])
            .collect();
        let mistaken_for = taken
            .iter()
            .enumerate()
            .map(|(c, counts)| {
                (0..SHAPE_CLASSES.len())
                    .filter(|&p| p != shape_of[c] && counts[p] > 0)
                    .max_by_key(|&p| (counts[p], std::cmp::Reverse(p)))
                    .map(|p| (p, counts[p]))
            })
            .collect();
        Verdict {
            right,
            mistaken_for,
        }
    }
}

/// Where each of the model's classes is among [`SHAPE_CLASSES`]; the name of the first that is
/// not a shape class otherwise.
pub fn shapes_of(names: &[String]) -> Result<Vec<usize>, String> {
    names
        .iter()
        .map(|n| {
            SHAPE_CLASSES
                .iter()
                .position(|s| s == n)
                .ok_or_else(|| n.clone())
        })
        .collect()
}

/// Generates the plan's samples batch after batch, decodes them and lets every classifier say
/// what each shows. `progress` hears how many samples each batch finished.
pub fn class_accuracy<B: Backend>(
    generator: &Generator<'_, B>,
    vq: &VqModel<B>,
    classifiers: &[ShapeClassifier<B>],
    plan: &ClassEvalPlan<'_>,
    progress: &mut dyn FnMut(usize),
) -> Result<ClassAccuracy, GenerateError> {
    let names = plan.names;
    let grid = generator.gpt.config.grid_size();
    let mut acc = ClassAccuracy {
        taken_for: vec![vec![[0usize; SHAPE_CLASSES.len()]; names.len()]; classifiers.len()],
        num: plan.num,
        forward_passes: 0,
        generation_seconds: 0.0,
        background: None,
    };
    let (mut bg_ok, mut bg_n) = (0usize, 0usize);
    let samples: Vec<(usize, u64)> = (0..names.len())
        .flat_map(|c| (0..plan.num as u64).map(move |i| (c, i)))
        .collect();
    for chunk in samples.chunks(plan.batch_size.max(1)) {
        let mut requests = Vec::with_capacity(chunk.len());
        for (index, &(c, i)) in chunk.iter().enumerate() {
            let seed = sample_seed(plan.sampler.seed, c, i);
            let condition = match plan.prompts {
                Some(prompts) => {
                    let prompt = eval_prompt(&names[c], seed);
                    prompts
                        .get(&prompt)
                        .cloned()
                        .ok_or_else(|| GenerateError::Condition {
                            index,
                            reason: format!("the prompt '{prompt}' was not encoded"),
                        })?
                }
                None => RequestCondition::Class(c),
            };
            requests.push(Request {
                condition,
                params: SamplerParams {
                    seed,
                    ..plan.sampler
                },
                prefix: Vec::new(),
            });
        }
        let started = Instant::now();
        let g = generator.generate(&requests, &mut (), None)?;
        acc.generation_seconds += started.elapsed().as_secs_f64();
        acc.forward_passes += g.forward_passes * chunk.len();
        let images = tensor_to_images(decode_tokens(vq, &g.tokens, grid));
        for (clf, taken) in classifiers.iter().zip(&mut acc.taken_for) {
            for (&(c, _), p) in chunk.iter().zip(clf.classify(&images)) {
                taken[c][p] += 1;
            }
        }
        if plan.prompts.is_some() {
            for (&(c, i), img) in chunk.iter().zip(&images) {
                if !matches!(names[c].as_str(), "stripes" | "checkerboard") {
                    bg_n += 1;
                    let seed = sample_seed(plan.sampler.seed, c, i);
                    bg_ok += usize::from(frame_colour(img) == eval_background(seed));
                }
            }
        }
        progress(chunk.len());
    }
    acc.background = (bg_n > 0).then_some((bg_ok, bg_n));
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_of_a_rendered_shape_is_its_background() {
        // Every procedural image of a shape class shows its background colour in the frame.
        for class in 0..SHAPE_CLASSES.len() {
            if matches!(SHAPE_CLASSES[class], "stripes" | "checkerboard") {
                continue;
            }
            for i in 0..4 {
                let s = render(11, class, i, 64);
                let bg = PALETTE
                    .iter()
                    .position(|(name, _)| s.caption().ends_with(&format!("{name} background")))
                    .expect("the caption names a palette background");
                assert_eq!(frame_colour(&s.to_image()), bg, "{}", s.caption());
            }
        }
    }

    #[test]
    fn an_eval_prompt_asks_for_its_background_and_another_foreground() {
        for seed in 0..200 {
            let p = eval_prompt("star", seed);
            let bg = PALETTE[eval_background(seed)].0;
            assert!(p.ends_with(&format!("{bg} background")), "{p}");
            assert!(!p.contains(&format!("{bg} star")), "{p}");
        }
    }

    #[test]
    fn a_verdict_counts_right_answers_and_the_commonest_mistake() {
        let mut taken = vec![[0usize; SHAPE_CLASSES.len()]; 2];
        taken[0][3] = 5; // class 0 is shape 3: five right
        taken[0][1] = 2;
        taken[0][4] = 2; // a tie: the lower shape index wins
        taken[1][7] = 7; // class 1 is shape 2: all wrong
        let acc = ClassAccuracy {
            taken_for: vec![taken],
            num: 9,
            forward_passes: 0,
            generation_seconds: 0.0,
            background: None,
        };
        let v = acc.verdict(0, &[3, 2]);
        assert_eq!(v.right, vec![5, 0]);
        assert_eq!(v.mistaken_for, vec![Some((1, 2)), Some((7, 7))]);
        assert_eq!(acc.samples(), 18);
    }

    #[test]
    fn only_shape_names_map_to_shapes() {
        let names: Vec<String> = ["star", "circle"].map(String::from).to_vec();
        let star = SHAPE_CLASSES.iter().position(|&s| s == "star").unwrap();
        assert_eq!(shapes_of(&names).unwrap()[0], star);
        assert_eq!(shapes_of(&["tench".to_string()]), Err("tench".to_string()));
    }
}
