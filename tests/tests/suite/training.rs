//! The trainers learn (a tiny model overfits a tiny batch), resume exactly where they stopped,
//! and data-parallel replicas give the same step as one.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use llamagen::config::{GptConfig, VqConfig};
use llamagen::train::Autodiff;
use llamagen::train::data::{CodeSet, CodesMeta};
use llamagen::train::gpt::{
    CaptionTable, CodeBatch, CodeBatcher, GptTrainOptions, GptTrainer, StartFrom, held_out_loss,
};
use llamagen::train::vq::{ReconstructionLoss, VqTrainOptions, VqTrainer};

type B = llamagen::backend::Cpu;
type AB = Autodiff<B>;

fn tiny_gpt() -> GptConfig {
    GptConfig {
        dim: 32,
        n_layer: 2,
        n_head: 4,
        vocab_size: 16,
        num_classes: 2,
        block_size: 16,
        token_dropout_p: 0.0,
        resid_dropout_p: 0.0,
        ffn_dropout_p: 0.0,
        ..GptConfig::default()
    }
}

fn fixed_batch() -> CodeBatch {
    // Two classes with their own fixed sequences.
    let labels = vec![0, 1, 0, 1];
    let codes = (0..4)
        .flat_map(|r: i64| (0..16).map(move |j| if r % 2 == 0 { j % 16 } else { (15 - j) % 16 }))
        .collect();
    CodeBatch {
        labels,
        codes,
        seq_len: 16,
        captions: None,
    }
}

fn opts(lr: f64) -> GptTrainOptions {
    GptTrainOptions {
        lr,
        batch_size: 4,
        ..GptTrainOptions::default()
    }
}

#[test]
fn gpt_overfits_a_tiny_batch() {
    gpt_overfits_on::<AB>(&Default::default());
}

/// Training runs on wgpu too (here on whatever adapter there is; Mesa's software one in CI):
/// the same tiny batch is learnt there.
#[cfg(feature = "wgpu")]
#[test]
fn gpt_overfits_a_tiny_batch_on_wgpu() {
    gpt_overfits_on::<Autodiff<llamagen::backend::Wgpu>>(&Default::default());
}

fn gpt_overfits_on<AB: AutodiffBackend>(device: &AB::Device) {
    let mut t = GptTrainer::<AB>::new(&tiny_gpt(), opts(1e-2), device).unwrap();
    let batch = fixed_batch();
    let first = t.train_step(&batch, &[]).unwrap().loss;
    // A zero head starts at the uniform loss ln(16).
    assert!((first - 16f32.ln()).abs() < 1e-3, "first loss {first}");
    let mut last = first;
    for _ in 0..40 {
        last = t.train_step(&batch, &[]).unwrap().loss;
    }
    assert!(last < first / 10.0, "loss {first} → {last}");
    // The held-out loss of the same four sequences, taken in uneven chunks of three, is the
    // loss a training step measures on them before it updates the weights.
    let set = CodeSet {
        meta: CodesMeta {
            num_images: 4,
            num_aug: 1,
            seq_len: 16,
            codebook_size: 16,
            image_size: 16,
            class_names: vec!["a".into(), "b".into()],
            tokenizer: "test".into(),
            captions: Vec::new(),
        },
        labels: batch.labels.iter().map(|&l| l as u32).collect(),
        codes: batch.codes.iter().map(|&c| c as u16).collect(),
    };
    let held_out = held_out_loss(&t.model.valid(), &set, None, 3, device);
    let measured = t.train_step(&batch, &[]).unwrap().loss;
    assert!(
        (held_out - measured).abs() < (1e-4 * measured).max(1e-5),
        "held-out {held_out}, training step {measured}"
    );
}

/// A text-conditional generator learns which caption asks for which token sequence: two
/// captions (features left-padded, of different lengths) stand for two fixed sequences.
#[test]
fn gpt_learns_to_follow_captions() {
    let device = Default::default();
    let (tokens, dim) = (4, 8);
    let mut cfg = tiny_gpt();
    cfg.model_type = llamagen::config::ModelType::T2i;
    cfg.cls_token_num = tokens;
    cfg.caption_dim = dim;
    let mut set = codes_set();
    set.meta.captions = set
        .labels
        .iter()
        .map(|&l| if l == 0 { "ascending" } else { "descending" }.to_string())
        .collect();
    for image in 0..set.meta.num_images {
        for aug in 0..2 {
            let at = (image * 2 + aug) * 16;
            for j in 0..16 {
                set.codes[at + j] = if set.labels[image] == 0 { j } else { 15 - j } as u16;
            }
        }
    }
    let table = CaptionTable::build(&set.meta.captions, tokens, dim, |chunk| {
        Ok::<_, ()>(
            chunk
                .iter()
                .map(|c| {
                    let n = c.len() % 3 + 1; // valid tokens, at the end (left padding)
                    let mask: Vec<bool> = (0..tokens).map(|t| t >= tokens - n).collect();
                    let features = (0..tokens * dim)
                        .map(|i| {
                            if mask[i / dim] {
                                ((i * c.len()) as f32 * 0.37).sin()
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    (features, mask)
                })
                .collect(),
        )
    })
    .unwrap();
    assert_eq!(table.distinct(), 2);
    let batcher = CodeBatcher {
        set: &set,
        batch_size: 4,
        seed: 1,
        class_dropout: 0.0,
        num_classes: 2,
        captions: Some(&table),
    };
    let mut t = GptTrainer::<AB>::new(&cfg, opts(1e-2), &device).unwrap();
    let first = t.train_step(&batcher.batch(0), &[]).unwrap().loss;
    let mut last = first;
    for s in 1..60 {
        last = t.train_step(&batcher.batch(s), &[]).unwrap().loss;
    }
    assert!(last < first / 10.0, "loss {first} → {last}");
    // Caption dropout marks rows for the null caption; the caption's mask stays.
    let dropping = CodeBatcher {
        class_dropout: 1.0,
        ..batcher
    };
    let b = dropping.batch(0);
    let c = b.captions.as_ref().unwrap();
    assert!(c.dropped.iter().all(|&d| d));
    assert_eq!(c.masks.len(), 4 * tokens);
    assert!(t.train_step(&b, &[]).unwrap().loss.is_finite());
}

fn tiny_vq() -> VqConfig {
    VqConfig {
        ch: 32,
        encoder_ch_mult: vec![1, 2],
        decoder_ch_mult: vec![1, 2],
        z_channels: 32,
        num_res_blocks: 1,
        codebook_size: 32,
        ..VqConfig::default()
    }
}

/// A trainer for `cfg` on batches of two 16×16 images, and one random batch.
fn tiny_vq_trainer(cfg: VqConfig, lr: f64) -> (VqTrainer<AB>, Tensor<AB, 4>) {
    tiny_vq_trainer_with(cfg, lr, ReconstructionLoss::L2, &Default::default())
}

fn tiny_vq_trainer_with<AB: AutodiffBackend>(
    cfg: VqConfig,
    lr: f64,
    reconstruction_loss: ReconstructionLoss,
    device: &AB::Device,
) -> (VqTrainer<AB>, Tensor<AB, 4>) {
    let o = VqTrainOptions {
        lr,
        reconstruction_loss,
        batch_size: 2,
        image_size: 16,
        ..VqTrainOptions::default()
    };
    let t = VqTrainer::<AB>::new(&cfg, o, None, device).unwrap();
    let x = Tensor::<AB, 4>::random(
        [2, 3, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        device,
    );
    (t, x)
}

#[test]
fn vq_overfits_a_tiny_batch() {
    for loss in [ReconstructionLoss::L2, ReconstructionLoss::L1] {
        vq_overfits_on::<AB>(&Default::default(), loss, 40, 4.0);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn vq_overfits_a_tiny_batch_on_wgpu() {
    // Fewer steps than on the CPU: a step runs in Mesa's software Vulkan (about 2 s each
    // here); learning, not its extent, is what this checks on the GPU path.
    vq_overfits_on::<Autodiff<llamagen::backend::Wgpu>>(
        &Default::default(),
        ReconstructionLoss::L2,
        15,
        2.0,
    );
}

/// `steps` steps on one batch must divide the reconstruction loss by `factor`.
fn vq_overfits_on<AB: AutodiffBackend>(
    device: &AB::Device,
    loss: ReconstructionLoss,
    steps: u64,
    factor: f32,
) {
    let (mut t, x) = tiny_vq_trainer_with::<AB>(tiny_vq(), 2e-3, loss, device);
    // Smooth images (a 4×4 pattern blown up) so that 2× downsampling can hold them.
    let x = burn::tensor::module::interpolate(
        x.slice([0..2, 0..3, 0..4, 0..4]),
        [16, 16],
        burn::tensor::ops::InterpolateOptions::new(burn::tensor::ops::InterpolateMode::Nearest),
    );
    let first = t.train_step(x.clone()).unwrap();
    let mut last = first;
    for _ in 0..steps {
        last = t.train_step(x.clone()).unwrap();
    }
    assert!(
        last.reconstruction < first.reconstruction / factor,
        "{loss:?}: reconstruction {} → {}",
        first.reconstruction,
        last.reconstruction
    );
    assert_eq!(t.step, steps + 1);
}

#[test]
fn decoder_only_training_keeps_the_codes_and_learns() {
    // A tokenizer trained briefly, then its decoder alone trained on another batch.
    let (mut t, x) = tiny_vq_trainer(tiny_vq(), 2e-3);
    for _ in 0..5 {
        t.train_step(x.clone()).unwrap();
    }
    let start = t.export_model();
    let o = VqTrainOptions {
        decoder_only: true,
        ..t.opts.clone()
    };
    let device = Default::default();
    let mut d =
        VqTrainer::<AB>::from_model(AutodiffModule::from_inner(start.clone()), o, None, &device)
            .unwrap();
    let y = Tensor::<AB, 4>::random(
        [2, 3, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let first = d.train_step(y.clone()).unwrap();
    assert_eq!((first.vq, first.commit, first.entropy), (0.0, 0.0, 0.0));
    let mut last = first;
    for _ in 0..30 {
        last = d.train_step(y.clone()).unwrap();
    }
    assert!(
        last.reconstruction < first.reconstruction * 0.8,
        "reconstruction {} → {} (gradient norm {} → {})",
        first.reconstruction,
        last.reconstruction,
        first.grad_norm,
        last.grad_norm
    );
    let end = d.export_model();
    let inputs = Tensor::cat(vec![x.inner(), y.inner()], 0);
    // Same latents bit for bit, hence the same codes; the codebook unchanged.
    start
        .encode_latent(inputs.clone())
        .into_data()
        .assert_eq(&end.encode_latent(inputs.clone()).into_data(), true);
    start
        .quantize
        .codebook()
        .into_data()
        .assert_eq(&end.quantize.codebook().into_data(), true);
    // The decoder moved.
    let (z_q, _) = start.encode(inputs);
    let moved = (start.decode(z_q.clone()) - end.decode(z_q))
        .abs()
        .max()
        .into_scalar();
    assert!(moved > 1e-3, "the decoder did not change ({moved})");
}

#[test]
fn reconstruction_losses_are_the_mean_absolute_and_squared_errors() {
    let device = Default::default();
    let images = Tensor::<B, 4>::zeros([1, 1, 2, 2], &device);
    let rec = Tensor::<B, 1>::from_floats([2.0, -1.0, 0.0, 1.0], &device).reshape([1, 1, 2, 2]);
    let l1: f32 = ReconstructionLoss::L1
        .mean(images.clone(), rec.clone())
        .into_scalar();
    let l2: f32 = ReconstructionLoss::L2.mean(images, rec).into_scalar();
    assert!((l1 - 1.0).abs() < 1e-6, "L1 {l1}");
    assert!((l2 - 1.5).abs() < 1e-6, "L2 {l2}");
    // A run's saved options from before the choice existed read as L2, the loss it trained with.
    let mut json = serde_json::to_value(VqTrainOptions::default()).unwrap();
    assert_eq!(json["reconstruction_loss"], "l2");
    json.as_object_mut().unwrap().remove("reconstruction_loss");
    let old: VqTrainOptions = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.reconstruction_loss, ReconstructionLoss::L2);
    json["reconstruction_loss"] = "l1".into();
    let l1_run: VqTrainOptions = serde_json::from_value(json).unwrap();
    assert_eq!(l1_run.reconstruction_loss, ReconstructionLoss::L1);
}

#[test]
fn vq_checkpoint_carries_the_configuration_shapes_cannot_tell() {
    // The checkpoint's model.safetensors stores the GroupNorm groups (not in any tensor
    // shape): it loads as it is and reconstructs exactly as the trainer's model.
    let device = Default::default();
    let cfg = VqConfig {
        norm_groups: 8,
        ..tiny_vq()
    };
    let (mut t, x) = tiny_vq_trainer(cfg.clone(), 1e-4);
    t.train_step(x.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path(), serde_json::json!({})).unwrap();
    let latest = llamagen::train::checkpoint::latest(dir.path())
        .unwrap()
        .unwrap();
    let sd = llamagen::checkpoint::StateDict::open(
        latest.join("model.safetensors"),
        llamagen::checkpoint::WeightsChoice::PreferEma,
    )
    .unwrap();
    assert_eq!(sd.infer_vq_config().unwrap(), cfg);
    let loaded = llamagen::vq::VqModel::<B>::load(&sd, &cfg, &device).unwrap();
    let x = x.inner();
    loaded
        .forward(x.clone())
        .into_data()
        .assert_approx_eq::<f32>(
            &t.export_model().forward(x.clone()).into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    // Read with the official groups instead, the same weights give another image.
    let official = VqConfig {
        norm_groups: 32,
        ..cfg
    };
    let wrong = llamagen::vq::VqModel::<B>::load(&sd, &official, &device).unwrap();
    let diff = (wrong.forward(x.clone()) - loaded.forward(x))
        .abs()
        .max()
        .into_scalar();
    assert!(diff > 1e-3, "GroupNorm groups made no difference ({diff})");
}

fn codes_set() -> CodeSet {
    let n = 12;
    CodeSet {
        meta: CodesMeta {
            num_images: n,
            num_aug: 2,
            seq_len: 16,
            codebook_size: 16,
            image_size: 64,
            class_names: vec!["a".into(), "b".into()],
            tokenizer: "test".into(),
            captions: Vec::new(),
        },
        labels: (0..n as u32).map(|i| i % 2).collect(),
        codes: (0..n * 2 * 16).map(|i| ((i * 7) % 16) as u16).collect(),
    }
}

fn weights(t: &GptTrainer<AB>) -> Vec<f32> {
    let inner = t.model.valid();
    let sd = llamagen::checkpoint::state_dict(&inner, &inner.config.state_dict_specs()).unwrap();
    sd.into_iter()
        .flat_map(|(_, d)| d.convert::<f32>().to_vec::<f32>().unwrap())
        .collect()
}

/// A generator grown deeper from a trained one computes exactly what that one did: its layers
/// come first and the new one is the identity, which still learns from the first step. One
/// that does not fit is refused and left as it was.
#[test]
fn a_deeper_generator_starts_out_as_the_one_it_grew_from() {
    let device = Default::default();
    let set = codes_set();
    let small = tiny_gpt();
    let mut source = GptTrainer::<AB>::new(&small, opts(1e-2), &device).unwrap();
    for _ in 0..5 {
        source.train_step(&fixed_batch(), &[]).unwrap();
    }
    let deep_cfg = GptConfig {
        n_layer: 3,
        ..small.clone()
    };
    let mut deep = GptTrainer::<AB>::new(&deep_cfg, opts(1e-2), &device).unwrap();
    let fresh = held_out_loss(&deep.model.valid(), &set, None, 4, &device);
    let done = deep.start_from(source.model.clone()).unwrap();
    assert_eq!(
        done,
        StartFrom {
            copied_layers: 2,
            new_layers: 1
        }
    );
    let before = held_out_loss(&source.model.valid(), &set, None, 4, &device);
    let grown = held_out_loss(&deep.model.valid(), &set, None, 4, &device);
    assert!(
        (before - grown).abs() < 1e-5 * before,
        "source {before}, grown {grown}"
    );
    assert!(
        (fresh - before).abs() > 0.1,
        "fresh {fresh}, trained {before}"
    );
    // The new layer's output projections start at zero and move with the first step.
    let abs_sum = |t: &GptTrainer<AB>| {
        let block = &t.model.layers[2];
        [&block.attention.wo, &block.feed_forward.w2]
            .map(|l| l.weight.val().abs().sum().into_scalar().elem::<f32>())
    };
    assert_eq!(abs_sum(&deep), [0.0, 0.0]);
    deep.train_step(&fixed_batch(), &[]).unwrap();
    let moved = abs_sum(&deep);
    assert!(moved.iter().all(|&s| s > 0.0), "{moved:?}");

    let refuse = |cfg: GptConfig, what: &str| {
        let mut t = GptTrainer::<AB>::new(&cfg, opts(1e-2), &device).unwrap();
        let kept = weights(&t);
        let e = t.start_from(source.model.clone()).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
        assert_eq!(weights(&t), kept, "a refused start changed the model");
    };
    refuse(
        GptConfig {
            dim: 64,
            ..small.clone()
        },
        "width is 32",
    );
    refuse(
        GptConfig {
            n_layer: 1,
            ..small.clone()
        },
        "2 layers, more than the 1",
    );
    refuse(
        GptConfig {
            vocab_size: 32,
            ..small.clone()
        },
        "codebook",
    );
}

#[test]
fn gpt_resume_continues_exactly() {
    let device = Default::default();
    let set = codes_set();
    let cfg = tiny_gpt();
    let batcher = CodeBatcher {
        set: &set,
        batch_size: 4,
        seed: 3,
        class_dropout: 0.1,
        num_classes: 2,
        captions: None,
    };
    let dir = tempfile::tempdir().unwrap();
    // Straight through: 6 steps.
    let mut straight = GptTrainer::<AB>::new(&cfg, opts(1e-3), &device).unwrap();
    let start = straight.model.clone();
    for s in 0..6 {
        straight.train_step(&batcher.batch(s), &[]).unwrap();
    }
    // Same start, 3 steps, save, resume from disk, 3 more.
    let mut first = GptTrainer::<AB>::new(&cfg, opts(1e-3), &device).unwrap();
    first.model = start;
    for s in 0..3 {
        first.train_step(&batcher.batch(s), &[]).unwrap();
    }
    first.save(dir.path(), serde_json::json!({})).unwrap();
    drop(first);
    let mut resumed = GptTrainer::<AB>::resume(dir.path(), &device)
        .unwrap()
        .unwrap();
    assert_eq!(resumed.step, 3);
    while resumed.step < 6 {
        let b = batcher.batch(resumed.step);
        resumed.train_step(&b, &[]).unwrap();
    }
    let (a, b) = (weights(&straight), weights(&resumed));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-6, "resumed run differs by {max}");
    // The checkpoint's model.safetensors loads as an ordinary generator checkpoint.
    let latest = llamagen::train::checkpoint::latest(dir.path())
        .unwrap()
        .unwrap();
    let sd = llamagen::checkpoint::StateDict::open(
        latest.join("model.safetensors"),
        llamagen::checkpoint::WeightsChoice::Model,
    )
    .unwrap();
    // … with its own configuration (heads and grid are not in the shapes).
    let hints = llamagen::checkpoint::GptHints::default();
    assert_eq!(sd.infer_gpt_config(&hints).unwrap(), cfg);
    llamagen::gpt::Transformer::<B>::load(&sd, &cfg, &device).unwrap();
}

#[test]
fn two_replicas_take_the_same_step_as_one() {
    let device = Default::default();
    same_step_split_or_not::<AB>(&device, &[device, device]);
}

/// Replicas go one per device where the backend has several of the home device's kind (cycling
/// on from the home device), and all on the home device where it has one.
#[cfg(feature = "wgpu")]
#[test]
fn replicas_spread_over_the_devices_of_their_kind() {
    use burn::backend::wgpu::WgpuDevice::{self, DefaultDevice, DiscreteGpu};
    use llamagen::train::replica_devices;
    assert_eq!(
        replica_devices(&DiscreteGpu(1), 3, 2),
        vec![DiscreteGpu(1), DiscreteGpu(0), DiscreteGpu(1)]
    );
    assert_eq!(
        replica_devices(&DiscreteGpu(0), 2, 4),
        vec![DiscreteGpu(0), DiscreteGpu(1)]
    );
    assert_eq!(
        replica_devices(&DefaultDevice, 3, 1),
        vec![WgpuDevice::DefaultDevice; 3]
    );
}

/// A trainer stepping on `home` alone and one splitting each step over `devices` take the same
/// steps: losses and gradient norms agree.
fn same_step_split_or_not<B: AutodiffBackend>(home: &B::Device, devices: &[B::Device]) {
    let cfg = tiny_gpt();
    let batch = fixed_batch();
    let mut one = GptTrainer::<B>::new(&cfg, opts(1e-3), home).unwrap();
    let mut two = GptTrainer::<B>::new(&cfg, opts(1e-3), home).unwrap();
    two.model = one.model.clone();
    // A first step so the head is no longer zero and every gradient is non-trivial.
    let a1 = one.train_step(&batch, &[]).unwrap();
    let a2 = two.train_step(&batch, devices).unwrap();
    assert!(
        (a1.loss - a2.loss).abs() < 1e-5,
        "{} vs {}",
        a1.loss,
        a2.loss
    );
    assert!(
        (a1.grad_norm - a2.grad_norm).abs() < 1e-5 * a1.grad_norm.max(1.0),
        "{} vs {}",
        a1.grad_norm,
        a2.grad_norm
    );
    // Adam's first steps are ±lr wherever a gradient is non-zero, which amplifies rounding in
    // near-zero gradients: compare the following losses and gradient norms, not weights.
    for _ in 0..3 {
        let b1 = one.train_step(&batch, &[]).unwrap();
        let b2 = two.train_step(&batch, devices).unwrap();
        assert!(
            (b1.loss - b2.loss).abs() < 1e-3,
            "{} vs {}",
            b1.loss,
            b2.loss
        );
        assert!(
            (b1.grad_norm - b2.grad_norm).abs() < 1e-2 * b1.grad_norm,
            "{} vs {}",
            b1.grad_norm,
            b2.grad_norm
        );
    }
}

/// The tokenizer's step split across two replicas is the one-replica step: the same losses and
/// gradient norm (no entropy term here, the one part that is per shard).
#[test]
fn two_vq_replicas_take_the_same_step_as_one() {
    let device = Default::default();
    let cfg = tiny_vq();
    assert_eq!(cfg.entropy_loss_ratio, 0.0);
    let (mut one, x) = tiny_vq_trainer(cfg.clone(), 1e-3);
    let (mut two, _) = tiny_vq_trainer(cfg, 1e-3);
    two.vq = one.vq.clone();
    two.disc = one.disc.clone();
    for step in 0..3 {
        let a = one.train_step(x.clone()).unwrap();
        let b = two.train_step_on(x.clone(), &[device, device]).unwrap();
        for (name, p, q) in [
            ("reconstruction", a.reconstruction, b.reconstruction),
            ("vq", a.vq, b.vq),
            ("commit", a.commit, b.commit),
        ] {
            assert!(
                (p - q).abs() <= 1e-4 * p.abs().max(1e-3),
                "step {step} {name}: {p} vs {q}"
            );
        }
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-3 * a.grad_norm,
            "step {step}: |g| {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
        assert_eq!(a.codebook_usage, b.codebook_usage);
    }
}
