//! Decoding several tokens a pass: the multi-token forward against single steps, the cache's
//! rollback, speculative Jacobi decoding exact with greedy sampling (reference fixtures, the
//! demo) and exact in distribution (per-position marginals against sequential sampling).

use burn::prelude::*;
use burn::tensor::TensorData;
use llamagen::bundle::ModelBundle;
use llamagen::config::{GptConfig, ModelType};
use llamagen::generate::{Decoding, Generator, Request};
use llamagen::gpt::{CacheLayout, Condition, Transformer};
use llamagen::sampling::SamplerParams;
use llamagen_tests::{Case, Manifest, Report, to_f32};

type B = llamagen::backend::Cpu;

/// Deterministic pseudo-random weights (the same on every run, whatever else runs beside).
struct Fill {
    state: u64,
}

impl Fill {
    /// Roughly N(0, 1): a sum of uniforms from a 64-bit LCG.
    fn next(&mut self) -> f32 {
        let mut sum = 0.0;
        for _ in 0..4 {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sum += (self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        sum * 1.732
    }
}

impl burn::module::ModuleMapper<B> for Fill {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        // Norm weights stay 1; matrices get N(0, std) with std shrinking with the fan-in.
        let values: Vec<f32> = if D == 1 {
            vec![1.0; n]
        } else {
            let fan_in = shape.dims::<D>()[D - 1].max(1) as f32;
            let std = 1.2 / fan_in.sqrt();
            (0..n).map(|_| self.next() * std).collect()
        };
        let t = Tensor::from_data(TensorData::new(values, shape), &tensor.device());
        burn::module::Param::from_mapped_value(id, t, mapper)
    }
}

fn tiny_model(vocab: usize, block_size: usize, seed: u64) -> Transformer<B> {
    use burn::module::Module;
    let cfg = GptConfig {
        dim: 64,
        n_layer: 2,
        n_head: 4,
        vocab_size: vocab,
        num_classes: 5,
        block_size,
        ..GptConfig::default()
    };
    Transformer::<B>::init(&cfg, &Default::default())
        .unwrap()
        .map(&mut Fill { state: seed })
}

fn ids(tokens: &[i64], rows: usize) -> Tensor<B, 2, Int> {
    let n = tokens.len() / rows;
    Tensor::from_data(
        TensorData::new(tokens.to_vec(), [rows, n]),
        &Default::default(),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits of `tokens` (`[rows, n]`) fed one position a pass after the prefill.
fn single_steps(
    model: &Transformer<B>,
    cond: &Condition<B>,
    tokens: &[Vec<i64>],
    layout: CacheLayout,
) -> Vec<Vec<f32>> {
    let t = model.config.cls_token_num;
    let mut cache = model.new_cache_with(tokens.len(), layout);
    model.prefill(cond, &mut cache);
    (0..tokens[0].len())
        .map(|j| {
            let col: Vec<i64> = tokens.iter().map(|r| r[j]).collect();
            to_f32(model.decode(ids(&col, tokens.len()), t + j, &mut cache))
        })
        .collect()
}

/// The multi-token forward over `k` tokens equals `k` one-token steps on every reference
/// generator (c2i, GQA, t2i), in both cache layouts.
#[test]
fn a_pass_over_k_tokens_equals_k_single_steps_on_the_reference_generators() {
    let manifest = Manifest::load();
    let mut worst = 0f32;
    let mut checked = 0;
    for case in manifest.gpt_cases() {
        let cfg = case.gpt_config();
        let model = Transformer::<B>::load(&case.state_dict(), &cfg, &Default::default()).unwrap();
        let cond = condition(&case, cfg.model_type);
        let rows = match &cond {
            Condition::Class(c) => c.dims()[0],
            Condition::Caption(c) => c.dims()[0],
        };
        let k = 5.min(cfg.block_size);
        let tokens: Vec<Vec<i64>> = (0..rows)
            .map(|r| {
                (0..k)
                    .map(|j| ((r * 31 + j * 17) % cfg.vocab_size) as i64)
                    .collect()
            })
            .collect();
        let t = cfg.cls_token_num;
        for layout in [CacheLayout::Growing, CacheLayout::Fixed] {
            let steps = single_steps(&model, &cond, &tokens, layout);
            let mut cache = model.new_cache_with(rows, layout);
            model.prefill(&cond, &mut cache);
            let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
            let all = to_f32(model.decode(ids(&flat, rows), t, &mut cache));
            let v = cfg.vocab_size;
            for (j, step) in steps.iter().enumerate() {
                let mut col = Vec::with_capacity(rows * v);
                for r in 0..rows {
                    let at = (r * k + j) * v;
                    col.extend_from_slice(&all[at..at + v]);
                }
                let d = max_abs_diff(&col, step);
                worst = worst.max(d);
                assert!(
                    d < 1e-4,
                    "{}: {layout:?} position {j}: max |Δ| {d}",
                    case.name
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "expected the reference generators");
    println!("multi-token forward vs single steps: max |Δ logits| = {worst:e}");
}

fn condition(case: &Case, model_type: ModelType) -> Condition<B> {
    let device = Default::default();
    match model_type {
        ModelType::C2i => {
            let labels = case.values_i64("labels");
            let n = labels.len();
            Condition::Class(Tensor::from_data(TensorData::new(labels, [n]), &device))
        }
        ModelType::T2i => Condition::Caption(case.float::<B, 3>("caption", &device)),
    }
}

/// A rollback leaves the cache equal to one that never saw the rejected positions: the logits
/// of what follows are the same, in both layouts, across the growing cache's folds.
#[test]
fn a_rollback_leaves_the_cache_as_if_the_rejected_tokens_never_came() {
    let model = tiny_model(32, 36, 3);
    let device = Default::default();
    let cond = Condition::Class(Tensor::<B, 1, Int>::from_data(
        TensorData::new(vec![1i64, 4], [2]),
        &device,
    ));
    let t = model.config.cls_token_num;
    let kept: Vec<i64> = (0..2 * 12).map(|i| (i * 7 % 32) as i64).collect();
    let rejected: Vec<i64> = (0..2 * 9).map(|i| (i * 5 % 32) as i64).collect();
    let after: Vec<i64> = (0..2 * 6).map(|i| (i * 3 % 32) as i64).collect();
    for layout in [CacheLayout::Growing, CacheLayout::Fixed] {
        // Positions kept, then 9 drafts (the growing cache folds at 16 in between), rolled
        // back, then other tokens.
        let mut cache = model.new_cache_with(2, layout);
        model.prefill(&cond, &mut cache);
        model.decode(ids(&kept, 2), t, &mut cache);
        model.decode(ids(&rejected, 2), t + 12, &mut cache);
        assert_eq!(cache.len(), t + 21);
        cache.truncate(t + 12);
        assert_eq!(cache.len(), t + 12);
        let mut clean = model.new_cache_with(2, layout);
        model.prefill(&cond, &mut clean);
        model.decode(ids(&kept, 2), t, &mut clean);
        // The same keys and values, bit for bit.
        same_kv(&held(&cache), &held(&clean), 0.0, &format!("{layout:?}"));
        // And the same logits after (the growing cache may be split into other parts, so
        // attention sums in another order: equal to rounding).
        let rolled = to_f32(model.decode(ids(&after, 2), t + 12, &mut cache));
        let fresh = to_f32(model.decode(ids(&after, 2), t + 12, &mut clean));
        let d = max_abs_diff(&rolled, &fresh);
        assert!(d < 1e-5, "{layout:?}: max |Δ| {d}");

        // A rollback into the folded part of a growing cache, then one token at a time.
        cache.truncate(t + 3);
        let mut reference = model.new_cache_with(2, layout);
        model.prefill(&cond, &mut reference);
        let head: Vec<i64> = kept.chunks(12).flat_map(|r| r[..3].to_vec()).collect();
        model.decode(ids(&head, 2), t, &mut reference);
        for j in 0..4 {
            let step = [after[j], after[6 + j]];
            let a = to_f32(model.decode(ids(&step, 2), t + 3 + j, &mut cache));
            let b = to_f32(model.decode(ids(&step, 2), t + 3 + j, &mut reference));
            let d = max_abs_diff(&a, &b);
            assert!(d < 1e-5, "{layout:?} step {j}: max |Δ| {d}");
        }
        // Positions written after the rollback went through attention over differently split
        // parts: equal to rounding.
        same_kv(
            &held(&cache),
            &held(&reference),
            1e-5,
            &format!("{layout:?}, second rollback"),
        );
    }
}

fn same_kv(a: &[Vec<f32>], b: &[Vec<f32>], tolerance: f32, label: &str) {
    assert_eq!(a.len(), b.len(), "{label}: layers");
    for (l, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{label}: layer {l} sizes");
        if let Some(i) = (0..x.len()).find(|&i| (x[i] - y[i]).abs() > tolerance) {
            panic!(
                "{label}: layer {l} differs first at {i} of {}: {} vs {}",
                x.len(),
                x[i],
                y[i]
            );
        }
    }
}

/// Every layer's keys and values of the positions held, in position order.
fn held(cache: &llamagen::gpt::KvCache<B>) -> Vec<Vec<f32>> {
    let len = cache.len();
    cache
        .layers
        .iter()
        .map(|layer| {
            let parts = layer.parts();
            let k = Tensor::cat(parts.iter().map(|p| p.k.clone()).collect(), 2);
            let v = Tensor::cat(parts.iter().map(|p| p.v.clone()).collect(), 2);
            let mut out = to_f32(k.narrow(2, 0, len));
            out.extend(to_f32(v.narrow(2, 0, len)));
            out
        })
        .collect()
}

/// With greedy sampling SJD makes exactly the official tokens on every reference generator,
/// at several windows, with CFG on, off and stopped by an interval.
#[test]
fn sjd_with_greedy_sampling_gives_the_official_tokens() {
    sjd_greedy_on_the_references::<B>(&Default::default(), "cpu", &[1, 4, 16]);
}

#[cfg(feature = "wgpu")]
#[test]
fn sjd_with_greedy_sampling_gives_the_official_tokens_on_wgpu() {
    // One window: the multi-token pass and the rollback on the GPU path. Every window is a
    // new set of shapes, which Mesa's software Vulkan compiles (and autotunes) anew; the CPU
    // test covers the windows.
    sjd_greedy_on_the_references::<llamagen::backend::Wgpu>(&Default::default(), "wgpu", &[4]);
}

fn sjd_greedy_on_the_references<B: Backend>(device: &B::Device, backend: &str, windows: &[usize]) {
    let manifest = Manifest::load();
    let mut report = Report::default();
    let mut checked = 0;
    for case in manifest.gpt_cases() {
        let cfg = case.gpt_config();
        let model = Transformer::<B>::load(&case.state_dict(), &cfg, device).unwrap();
        let scale = if case.has("cfg_scale") {
            case.values_f32("cfg_scale")[0]
        } else {
            4.0
        };
        let interval = if case.has("cfg_interval") {
            case.values_i64("cfg_interval")[0] as i32
        } else {
            -1
        };
        for (prefix, scale, cfg_interval) in [
            ("gen_cfg4", scale, -1),
            ("gen_cfg1", 1.0, -1),
            ("gen_cfg4_interval", scale, interval),
        ] {
            let name = format!("{prefix}_tokens");
            if !case.has(&name) {
                continue;
            }
            let params = SamplerParams {
                cfg_interval,
                ..SamplerParams::greedy(scale)
            };
            let reqs = llamagen_tests::requests(&case, cfg.model_type, params);
            for &window in windows {
                let generator = Generator::new(&model).with_decoding(Decoding::Sjd { window });
                let out = generator.generate(&reqs, &mut (), None).unwrap();
                assert!(out.is_complete(cfg.block_size));
                assert!(out.forward_passes <= cfg.block_size);
                let flat: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
                report.check_exact(
                    &case,
                    &format!("[{backend}, sjd window {window}]"),
                    &name,
                    flat,
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "expected the six generation cases, checked {checked}"
    );
    report.finish();
}

/// The bundled demo, greedy, two classes in one batch: SJD's tokens are the sequential ones, in
/// fewer passes.
#[test]
fn sjd_with_greedy_sampling_gives_the_sequential_tokens_on_the_demo() {
    let Some(card) = llamagen::bundle::demo_card_path() else {
        panic!("the bundled demo model is missing");
    };
    let bundle = ModelBundle::<B>::from_card(&card, &Default::default()).unwrap();
    let params = SamplerParams {
        top_k: 1,
        ..bundle.sampler
    };
    let reqs = [Request::class(0, params), Request::class(7, params)];
    let sequential = Generator::new(&bundle.gpt)
        .generate(&reqs, &mut (), None)
        .unwrap();
    let sjd = Generator::new(&bundle.gpt)
        .with_decoding(Decoding::Sjd { window: 16 })
        .generate(&reqs, &mut (), None)
        .unwrap();
    assert_eq!(sjd.tokens, sequential.tokens);
    assert_eq!(sequential.forward_passes, bundle.gpt.config.block_size);
    assert!(
        sjd.forward_passes < sequential.forward_passes,
        "sjd {} passes, sequential {}",
        sjd.forward_passes,
        sequential.forward_passes
    );
}

/// Pearson's two-sample homogeneity statistic over categories with any count, and its degrees
/// of freedom.
fn two_sample_chi_square(a: &[usize], b: &[usize]) -> (f64, usize) {
    let (na, nb) = (
        a.iter().sum::<usize>() as f64,
        b.iter().sum::<usize>() as f64,
    );
    let mut stat = 0.0;
    let mut cats = 0usize;
    for (&x, &y) in a.iter().zip(b) {
        let total = (x + y) as f64;
        if total == 0.0 {
            continue;
        }
        cats += 1;
        let ea = total * na / (na + nb);
        let eb = total * nb / (na + nb);
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
    }
    (stat, cats.saturating_sub(1))
}

/// The upper 0.1 % point of the chi-square distribution (Wilson–Hilferty).
fn chi_square_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.090_232; // the standard normal's upper 0.1 % point
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Per-position token counts of `n` samples of class `class` (seeds from `seed0`).
fn marginals(
    model: &Transformer<B>,
    decoding: Decoding,
    params: SamplerParams,
    n: usize,
    seed0: u64,
) -> Vec<Vec<usize>> {
    let cfg = &model.config;
    let mut counts = vec![vec![0usize; cfg.vocab_size]; cfg.block_size];
    let generator = Generator::new(model).with_decoding(decoding);
    let per_batch = 250;
    for chunk in 0..n.div_ceil(per_batch) {
        let reqs: Vec<Request> = (0..per_batch.min(n - chunk * per_batch))
            .map(|i| {
                Request::class(
                    2,
                    SamplerParams {
                        seed: seed0 + (chunk * per_batch + i) as u64,
                        ..params
                    },
                )
            })
            .collect();
        let out = generator.generate(&reqs, &mut (), None).unwrap();
        for tokens in &out.tokens {
            assert_eq!(tokens.len(), cfg.block_size);
            for (pos, &tok) in tokens.iter().enumerate() {
                counts[pos][tok as usize] += 1;
            }
        }
    }
    counts
}

/// SJD's committed tokens follow sequential sampling's distribution: per-position marginals of
/// 3000 draws each, compared by Pearson's two-sample test at the 0.1 % level, at top-k 0 and
/// with top-k and top-p filters, with CFG. (Breaking the acceptance rule, for example accepting
/// every draft, makes this test fail.)
#[test]
fn sjd_tokens_follow_the_sequential_distribution() {
    let model = tiny_model(6, 9, 11);
    let n = 3000;
    let mut worst: f64 = 0.0;
    for params in [
        SamplerParams {
            cfg_scale: 2.0,
            top_k: 0,
            ..SamplerParams::default()
        },
        SamplerParams {
            cfg_scale: 3.0,
            top_k: 4,
            top_p: 0.9,
            temperature: 1.3,
            ..SamplerParams::default()
        },
    ] {
        let sequential = marginals(&model, Decoding::Sequential, params, n, 0);
        let sjd = marginals(&model, Decoding::Sjd { window: 4 }, params, n, 100_000);
        for (pos, (a, b)) in sequential.iter().zip(&sjd).enumerate() {
            let (stat, df) = two_sample_chi_square(a, b);
            let critical = chi_square_critical(df.max(1));
            worst = worst.max(stat / critical);
            assert!(
                stat < critical,
                "{params:?} position {pos}: χ² {stat:.1} ≥ {critical:.1} (df {df}); sequential {a:?}, sjd {b:?}"
            );
        }
    }
    println!("largest χ² / critical value: {worst:.2}");
}

/// ZipAR with the window at the grid's width is sequential decoding (same tokens for the same
/// seeds, greedy or sampled); narrower windows take exactly 2W + (H − 2)·w passes and keep a
/// prefix.
#[test]
fn zipar_passes_and_its_full_window_is_sequential() {
    let model = tiny_model(32, 36, 5);
    let g = 6;
    let reqs: Vec<Request> = (0..3)
        .map(|i| {
            Request::class(
                i,
                SamplerParams {
                    cfg_scale: 3.0,
                    top_k: 0,
                    seed: 40 + i as u64,
                    ..SamplerParams::default()
                },
            )
        })
        .collect();
    let sequential = Generator::new(&model)
        .generate(&reqs, &mut (), None)
        .unwrap();
    assert_eq!(sequential.forward_passes, 36);
    let full = Generator::new(&model)
        .with_decoding(Decoding::Zipar { window: g })
        .generate(&reqs, &mut (), None)
        .unwrap();
    assert_eq!(full.tokens, sequential.tokens);
    assert_eq!(full.forward_passes, 36);
    for w in 1..g {
        let out = Generator::new(&model)
            .with_decoding(Decoding::Zipar { window: w })
            .generate(&reqs, &mut (), None)
            .unwrap();
        assert!(out.is_complete(36), "window {w}");
        assert_eq!(out.forward_passes, 2 * g + (g - 2) * w, "window {w}");
        // The first row is decoded one token a pass: the same as sequential.
        for (a, b) in out.tokens.iter().zip(&sequential.tokens) {
            assert_eq!(a[..g], b[..g], "window {w}");
        }
    }
    // A kept prefix, ending mid-row and at a row's end.
    for keep in [4, 12] {
        let with_prefix: Vec<Request> = reqs
            .iter()
            .zip(&sequential.tokens)
            .map(|(r, t)| Request {
                prefix: t[..keep].to_vec(),
                ..r.clone()
            })
            .collect();
        let seq = Generator::new(&model)
            .generate(&with_prefix, &mut (), None)
            .unwrap();
        let zip = Generator::new(&model)
            .with_decoding(Decoding::Zipar { window: g })
            .generate(&with_prefix, &mut (), None)
            .unwrap();
        assert_eq!(zip.tokens, seq.tokens, "prefix {keep}");
        let narrow = Generator::new(&model)
            .with_decoding(Decoding::Zipar { window: 2 })
            .generate(&with_prefix, &mut (), None)
            .unwrap();
        assert!(narrow.is_complete(36));
        for (a, b) in narrow.tokens.iter().zip(&sequential.tokens) {
            assert_eq!(a[..keep], b[..keep], "prefix {keep}");
        }
    }
}

/// ZipAR with the full window on the reference generators (greedy): the official tokens.
#[test]
fn zipar_with_the_full_window_gives_the_official_tokens() {
    zipar_on_the_references::<B>(&Default::default(), "cpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn zipar_with_the_full_window_gives_the_official_tokens_on_wgpu() {
    zipar_on_the_references::<llamagen::backend::Wgpu>(&Default::default(), "wgpu");
}

fn zipar_on_the_references<B: Backend>(device: &B::Device, backend: &str) {
    let manifest = Manifest::load();
    let mut report = Report::default();
    for case in manifest.gpt_cases() {
        let cfg = case.gpt_config();
        let name = "gen_cfg4_tokens";
        if !case.has(name) {
            continue;
        }
        let model = Transformer::<B>::load(&case.state_dict(), &cfg, device).unwrap();
        let scale = if case.has("cfg_scale") {
            case.values_f32("cfg_scale")[0]
        } else {
            4.0
        };
        let reqs = llamagen_tests::requests(&case, cfg.model_type, SamplerParams::greedy(scale));
        let g = cfg.grid_size();
        let out = Generator::new(&model)
            .with_decoding(Decoding::Zipar { window: g })
            .generate(&reqs, &mut (), None)
            .unwrap();
        assert_eq!(out.forward_passes, cfg.block_size);
        let flat: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
        report.check_exact(
            &case,
            &format!("[{backend}, zipar full window]"),
            name,
            flat,
        );
        if g > 2 {
            let out = Generator::new(&model)
                .with_decoding(Decoding::Zipar { window: 1 })
                .generate(&reqs, &mut (), None)
                .unwrap();
            assert!(out.is_complete(cfg.block_size));
            assert_eq!(out.forward_passes, 2 * g + (g - 2));
        }
    }
    report.finish();
}
