//! The fused decode-step kernels against burn's unfused operations, the device sampler against
//! the filtered distribution, and the fused decode step against the model's own. The kernels
//! run on wgpu (Mesa's lavapipe on a machine without a GPU); on other backends the same
//! functions run the reference arithmetic, which the CPU test checks too.

use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use llamagen::kernels::{self, DeviceSampler, reference};
use llamagen::sampling::{SamplerParams, logits_to_probs};
use llamagen_tests::to_f32;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn random<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Every kernel against the reference, with shapes like a decode step's (grouped-query heads,
/// rows not a multiple of anything, a masked key column).
fn kernels_match_reference<B: Backend>(device: &B::Device, dtype: burn::tensor::FloatDType) {
    // Half precision: both paths keep the statistics in f32 but round at other places.
    let tol = |e: f32| {
        if dtype == burn::tensor::FloatDType::F32 {
            e
        } else {
            3e-2
        }
    };
    let rand2 = |shape, device| random::<B, 2>(shape, device).cast(dtype);
    let rand4 = |shape, device| random::<B, 4>(shape, device).cast(dtype);
    let (rows, nh, nkv, hd, max_len) = (3, 4, 2, 16, 24);
    let (dim, kv_dim) = (nh * hd, nkv * hd);
    let eps = 1e-5;

    let x = rand2([rows, dim], device);
    let y = rand2([rows, dim], device);
    let w = random::<B, 1>([dim], device).cast(dtype);
    let got = to_f32(kernels::rms_norm(x.clone(), w.clone(), eps));
    let want = to_f32(reference::rms_norm(x.clone(), w.clone(), eps));
    assert!(
        max_diff(&got, &want) < tol(1e-4),
        "rms_norm: {}",
        max_diff(&got, &want)
    );
    let (s, n) = kernels::add_rms_norm(x.clone(), y.clone(), w.clone(), eps);
    let (rs, rn) = reference::add_rms_norm(x.clone(), y.clone(), w, eps);
    assert!(
        max_diff(&to_f32(s), &to_f32(rs)) < tol(1e-5),
        "add_rms_norm sum"
    );
    assert!(
        max_diff(&to_f32(n), &to_f32(rn)) < tol(1e-4),
        "add_rms_norm norm"
    );
    let got = to_f32(kernels::swiglu(x.clone(), y.clone()));
    let want = to_f32(reference::swiglu(x, y));
    assert!(
        max_diff(&got, &want) < tol(1e-5),
        "swiglu: {}",
        max_diff(&got, &want)
    );

    // RoPE + cache write at position 5 of caches already holding values.
    let pos = 5;
    let freqs = llamagen::gpt::rope::freqs_cis_2d::<B>(4, hd, 10000.0, 8, device);
    let qkv = rand2([rows, dim + 2 * kv_dim], device);
    let k0 = rand4([rows, nkv, max_len, hd], device);
    let v0 = rand4([rows, nkv, max_len, hd], device);
    // Distinct buffers for each path: the kernel writes in place.
    let copy = |t: &Tensor<B, 4>| Tensor::<B, 4>::from_data(t.to_data(), device).cast(dtype);
    let (mut k1, mut v1) = (copy(&k0), copy(&v0));
    let (mut k2, mut v2) = (copy(&k0), copy(&v0));
    let q1 = kernels::rope_cache(
        qkv.clone(),
        freqs.clone(),
        &mut k1,
        &mut v1,
        pos,
        dim,
        kv_dim,
        hd,
    );
    let q2 = reference::rope_cache(qkv, freqs, &mut k2, &mut v2, pos, dim, kv_dim, hd);
    assert!(
        max_diff(&to_f32(q1.clone()), &to_f32(q2)) < tol(1e-5),
        "rope queries"
    );
    assert!(
        max_diff(&to_f32(k1.clone()), &to_f32(k2)) < tol(1e-5),
        "rope keys in the cache"
    );
    assert!(
        max_diff(&to_f32(v1.clone()), &to_f32(v2)) < tol(1e-6),
        "values in the cache"
    );

    // Attention over positions [0, pos], one caption column masked in the second row.
    let mut bias = vec![0f32; rows * max_len];
    bias[max_len + 2] = -1.0e30;
    let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [rows, max_len]), device);
    let got = to_f32(kernels::decode_attention(
        q1.clone(),
        &k1,
        &v1,
        &bias,
        pos + 1,
        nh,
        hd,
    ));
    let want = to_f32(reference::decode_attention(
        q1,
        &k1,
        &v1,
        &bias,
        pos + 1,
        nh,
        hd,
    ));
    assert!(
        max_diff(&got, &want) < tol(1e-5),
        "attention: {}",
        max_diff(&got, &want)
    );
}

#[test]
fn kernel_fallbacks_are_the_reference_on_cpu() {
    use burn::tensor::FloatDType;
    for dtype in [FloatDType::F32, FloatDType::F16, FloatDType::BF16] {
        kernels_match_reference::<llamagen::backend::Cpu>(&Default::default(), dtype);
    }
    assert!(!DeviceSampler::<llamagen::backend::Cpu>::supported());
}

#[cfg(feature = "wgpu")]
#[test]
fn kernels_match_unfused_ops_on_wgpu() {
    assert!(kernels::fused::<llamagen::backend::Wgpu>());
    for dtype in [burn::tensor::FloatDType::F32, burn::tensor::FloatDType::F16] {
        kernels_match_reference::<llamagen::backend::Wgpu>(&Default::default(), dtype);
    }
}

/// Pearson chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[usize], probs: &[f32], n: usize) -> f64 {
    counts
        .iter()
        .zip(probs)
        .filter(|(_, p)| **p > 0.0)
        .map(|(&c, &p)| {
            let e = p as f64 * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

/// `n` draws for every (seed, step): the tokens and the probabilities the sampler reports.
#[cfg(feature = "wgpu")]
fn device_draws(
    params: SamplerParams,
    logits: &[f32],
    samples: usize,
    steps: usize,
) -> (Vec<usize>, Vec<f32>) {
    type W = llamagen::backend::Wgpu;
    let device = Default::default();
    let v = logits.len();
    let per: Vec<SamplerParams> = (0..samples)
        .map(|i| SamplerParams {
            seed: params.seed * 1_000_003 + i as u64,
            ..params
        })
        .collect();
    let sampler = DeviceSampler::<W>::new(&per, v, &device);
    let rows: Vec<f32> = (0..samples).flat_map(|_| logits.iter().copied()).collect();
    let rows = Tensor::<W, 2>::from_data(TensorData::new(rows, [samples, v]), &device);
    let (mut tokens, mut probs) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let draw = sampler
            .sample(rows.clone(), step, false)
            .expect("wgpu samples on the device");
        let info = to_f32(draw.info);
        let ids = llamagen_tests::to_i64(draw.ids);
        for i in 0..samples {
            let token = info[i * 3] as usize;
            assert_eq!(ids[i] as usize, token, "ids and info agree");
            tokens.push(token);
            probs.push(info[i * 3 + 1]);
        }
    }
    (tokens, probs)
}

#[cfg(feature = "wgpu")]
#[test]
fn device_draws_follow_the_filtered_distribution() {
    const LOGITS: [f32; 8] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0];
    let (samples, steps) = (1000, 20);
    let n = samples * steps;
    // 99.9% quantile of chi-square with ≤ 7 degrees of freedom is 24.3.
    for (seed, temperature, top_k, top_p) in [
        (1, 1.0, 0, 1.0),
        (2, 0.5, 0, 1.0),
        (3, 1.0, 3, 1.0),
        (4, 1.0, 0, 0.7),
        (5, 2.0, 5, 0.9),
    ] {
        let params = SamplerParams {
            cfg_scale: 1.0,
            temperature,
            top_k,
            top_p,
            seed,
            ..Default::default()
        };
        let probs = logits_to_probs(&LOGITS, &params);
        let (tokens, reported) = device_draws(params, &LOGITS, samples, steps);
        let mut counts = vec![0usize; LOGITS.len()];
        for (&t, &p) in tokens.iter().zip(&reported) {
            counts[t] += 1;
            assert!(
                (p - probs[t]).abs() < 1e-5,
                "{params:?}: reported probability {p} of token {t}, expected {}",
                probs[t]
            );
        }
        for (c, p) in counts.iter().zip(&probs) {
            if *p == 0.0 {
                assert_eq!(*c, 0, "{params:?}: a filtered-out token was drawn");
            }
        }
        let stat = chi_square(&counts, &probs, n);
        assert!(stat < 24.3, "{params:?}: chi-square {stat} ({counts:?})");
        // Power: against the unfiltered distribution the same draws fail.
        let plain = llamagen::sampling::softmax(&LOGITS);
        if probs.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 0.02) {
            let wrong = chi_square(&counts, &plain, n);
            assert!(
                wrong > 100.0 || counts.iter().zip(&plain).any(|(&c, &p)| c == 0 && p > 0.01),
                "{params:?}: {wrong}"
            );
        }
    }

    // Greedy takes the first maximum; seeds reproduce and differ.
    let tied = [0.5, 3.0, 1.0, 3.0];
    let (tokens, _) = device_draws(SamplerParams::greedy(1.0), &tied, 4, 3);
    assert!(tokens.iter().all(|&t| t == 1), "{tokens:?}");
    let p = SamplerParams {
        cfg_scale: 1.0,
        seed: 42,
        ..Default::default()
    };
    let again = device_draws(p, &LOGITS, 8, 10).0;
    assert_eq!(device_draws(p, &LOGITS, 8, 10).0, again);
    assert_ne!(
        device_draws(SamplerParams { seed: 43, ..p }, &LOGITS, 8, 10).0,
        again
    );
}

/// A small random generator (grouped-query heads, a random output head).
fn small_model<B: Backend>(device: &B::Device) -> llamagen::gpt::Transformer<B> {
    let cfg = llamagen::config::GptConfig {
        dim: 64,
        n_layer: 2,
        n_head: 4,
        n_kv_head: Some(2),
        vocab_size: 40,
        num_classes: 3,
        block_size: 16,
        token_dropout_p: 0.0,
        resid_dropout_p: 0.0,
        ffn_dropout_p: 0.0,
        ..Default::default()
    };
    let mut model = llamagen::gpt::Transformer::<B>::init(&cfg, device).unwrap();
    model.output.weight = burn::module::Param::from_tensor(random([64, 40], device) * 0.3);
    model
}

/// Prefill then six decode steps: the fused step on a fixed cache against the model's own step
/// on the growing cache, logits compared at every step (the largest difference must stay below
/// `tol` times the logits' scale).
fn fused_step_matches_the_model<B: Backend>(
    device: &B::Device,
    precision: llamagen::Precision,
    tol: f32,
) {
    use llamagen::gpt::{CacheLayout, Condition};
    let model = small_model::<B>(device).into_precision(precision);
    assert_eq!(model.precision(), precision);
    let rows = 3;
    let cond = Condition::Class(Tensor::<B, 1, Int>::from_data(
        TensorData::new(vec![0i64, 1, 2], [rows]),
        device,
    ));
    let mut growing = model.new_cache_with(rows, CacheLayout::Growing);
    let mut fixed = model.new_cache_with(rows, CacheLayout::Fixed);
    let _ = model.prefill(&cond, &mut growing);
    let _ = model.prefill(&cond, &mut fixed);
    let bias = kernels::key_bias(&fixed.allowed);
    let t = model.config.cls_token_num;
    for step in 0..6 {
        let ids: Vec<i64> = (0..rows)
            .map(|r| ((step * 7 + r * 5) % 40) as i64)
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, 1]), device);
        let want = to_f32(model.decode(ids.clone(), t + step, &mut growing));
        let got = to_f32(model.decode_fused(ids, t + step, &mut fixed, &bias));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let d = max_diff(&got, &want);
        println!("{precision} step {step}: fused logits differ by {d:.2e} (scale {scale:.2})");
        assert!(
            d < tol * scale,
            "{precision} step {step}: fused logits differ by {d}"
        );
    }
}

#[test]
fn fused_step_matches_the_model_on_cpu() {
    use llamagen::Precision;
    let device = Default::default();
    fused_step_matches_the_model::<llamagen::backend::Cpu>(&device, Precision::F32, 1e-4);
    // The CPU's half precision: half weights, f32 arithmetic in both paths.
    fused_step_matches_the_model::<llamagen::backend::Cpu>(&device, Precision::F16, 1e-4);
    fused_step_matches_the_model::<llamagen::backend::Cpu>(&device, Precision::Bf16, 1e-4);
}

#[cfg(feature = "wgpu")]
#[test]
fn fused_step_matches_the_model_on_wgpu() {
    use llamagen::Precision;
    let device = Default::default();
    fused_step_matches_the_model::<llamagen::backend::Wgpu>(&device, Precision::F32, 1e-4);
    // f16 activations: the kernels and burn's operations round at different places.
    fused_step_matches_the_model::<llamagen::backend::Wgpu>(&device, Precision::F16, 1e-2);
}
