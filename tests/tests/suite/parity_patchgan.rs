//! The PatchGAN discriminator and the GAN losses against the official code (every PatchGAN case
//! of the reference manifest), its export under the official names, and the LPIPS network's
//! loading and invariants (no reference values exist for LPIPS: that needs the real VGG weights).

use burn::backend::Autodiff;
use burn::prelude::*;
use llamagen::checkpoint::{StateDict, Weights, WeightsChoice, write_safetensors};
use llamagen::train::discriminator::{GanLoss, PatchGan, discriminator_loss, generator_loss};
use llamagen::train::lpips::{Lpips, lin_specs, vgg_specs};
use llamagen_tests::{Case, Manifest, Report, to_f32};

type Cpu = llamagen::backend::Cpu;
type Ad = Autodiff<Cpu>;

fn check_file(case: &Case, file: &std::path::Path, report: &mut Report, covered: &mut Vec<String>) {
    let cfg = case.patchgan_config();
    let device = Default::default();
    let sd = StateDict::open(file, WeightsChoice::Model)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let label = file.file_name().unwrap().to_string_lossy().to_string();
    let mut close = |name: &str, tag: &str, t: Vec<f32>, report: &mut Report| {
        report.check_close(case, &format!("{label} {tag}"), name, t, 1.0);
        covered.push(name.to_string());
    };

    // Plain backend: no autodiff, so `forward` is evaluation mode (running statistics).
    let eval = PatchGan::<Cpu>::load(&sd, &cfg, &device)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let real = case.float::<Cpu, 4>("input_real", &device);
    let fake = case.float::<Cpu, 4>("input_fake", &device);
    close(
        "logits_real_eval",
        "forward",
        to_f32(eval.forward(real.clone())),
        report,
    );
    close(
        "logits_fake_eval",
        "forward",
        to_f32(eval.forward(fake.clone())),
        report,
    );
    // Explicit training mode on the plain backend (fresh copy: it updates running stats).
    let explicit = PatchGan::<Cpu>::load(&sd, &cfg, &device).unwrap();
    close(
        "logits_real_train",
        "forward_train",
        to_f32(explicit.forward_train(real)),
        report,
    );
    close(
        "logits_fake_train",
        "forward_train",
        to_f32(explicit.forward_train(fake)),
        report,
    );

    // Autodiff backend: `forward` is training mode (batch statistics), as vq_train.py runs it.
    let train = PatchGan::<Ad>::load(&sd, &cfg, &device).unwrap();
    let real = case.float::<Ad, 4>("input_real", &device);
    let fake = case.float::<Ad, 4>("input_fake", &device);
    let lr = train.forward(real.clone());
    let lf = train.forward(fake.clone());
    close(
        "logits_real_train",
        "autodiff forward",
        to_f32(lr.clone()),
        report,
    );
    close(
        "logits_fake_train",
        "autodiff forward",
        to_f32(lf.clone()),
        report,
    );

    // The losses, on the training-mode logits (as the fixture computed them).
    let losses = [
        (
            "d_loss_hinge",
            discriminator_loss(GanLoss::Hinge, lr.clone(), lf.clone()),
        ),
        (
            "d_loss_vanilla",
            discriminator_loss(GanLoss::Vanilla, lr.clone(), lf.clone()),
        ),
        (
            "d_loss_non_saturating",
            discriminator_loss(GanLoss::NonSaturating, lr.clone(), lf.clone()),
        ),
        ("g_loss_hinge", generator_loss(GanLoss::Hinge, lf.clone())),
        (
            "g_loss_non_saturating",
            generator_loss(GanLoss::NonSaturating, lf.clone()),
        ),
    ];
    for (name, loss) in losses {
        if case.has(name) {
            close(name, "loss", to_f32(loss), report);
        }
    }

    // Evaluation mode on the autodiff backend, explicitly; the gradient reaches every parameter.
    let train_eval = PatchGan::<Ad>::load(&sd, &cfg, &device).unwrap();
    close(
        "logits_real_eval",
        "autodiff forward_eval",
        to_f32(train_eval.forward_eval(real)),
        report,
    );
    let grads = discriminator_loss(GanLoss::Hinge, lr, lf).backward();
    for (i, conv) in train.convs.iter().enumerate() {
        assert!(conv.weight.grad(&grads).is_some(), "conv {i}: no gradient");
    }
    for (i, norm) in train.norms.iter().enumerate() {
        assert!(norm.weight.grad(&grads).is_some(), "norm {i}: no gradient");
    }
}

#[test]
fn patchgan_matches_reference_on_cpu() {
    let manifest = Manifest::load();
    let cases = manifest.patchgan_cases();
    assert!(!cases.is_empty(), "the manifest has no PatchGAN cases");
    let mut report = Report::default();
    for case in &cases {
        let cfg = case.patchgan_config();
        // The key table is the official one, shapes included.
        let official: Vec<(String, Vec<usize>)> = case.json["state_dict"]
            .as_object()
            .expect("state_dict object")
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
            .collect();
        let mut ours: Vec<(String, Vec<usize>)> = cfg
            .state_dict_specs()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        ours.sort();
        let mut official_sorted = official.clone();
        official_sorted.sort();
        assert_eq!(ours, official_sorted, "{}: state-dict specs", case.name);

        let mut covered = Vec::new();
        let files = case.weight_files();
        assert!(files.iter().any(|f| f.extension().unwrap() == "pt"));
        assert!(
            files
                .iter()
                .any(|f| f.extension().unwrap() == "safetensors")
        );
        for file in files {
            check_file(case, &file, &mut report, &mut covered);
        }
        report.require_covered(case, &covered);
    }
    report.finish();
}

#[test]
fn patchgan_training_updates_running_stats_like_pytorch() {
    // One training-mode pass: running = 0.9·running + 0.1·batch, with the unbiased variance.
    let manifest = Manifest::load();
    for case in manifest.patchgan_cases() {
        let cfg = case.patchgan_config();
        let device = Default::default();
        let sd = case.state_dict();
        let d = PatchGan::<Cpu>::load(&sd, &cfg, &device).unwrap();
        let x = case.float::<Cpu, 4>("input_real", &device);
        // The input of the first BatchNorm: conv0 → LeakyReLU → conv1.
        let h = d.convs[1].forward(burn::tensor::activation::leaky_relu(
            d.convs[0].forward(x.clone()),
            0.2,
        ));
        let [b, c, hh, ww] = h.dims();
        let n = (b * hh * ww) as f32;
        let mean = to_f32(h.clone().mean_dims(&[0, 2, 3]).reshape([c]));
        let var_biased = to_f32(
            (h.clone() - h.mean_dims(&[0, 2, 3]))
                .square()
                .mean_dims(&[0, 2, 3])
                .reshape([c]),
        );
        let rm0 = to_f32(d.norms[0].running_mean.value_sync());
        let rv0 = to_f32(d.norms[0].running_var.value_sync());
        let _ = d.forward_train(x);
        // Exported before anything else reads the statistics: the export syncs them itself.
        let exported = d.state_dict().unwrap();
        let rm1 = to_f32(d.norms[0].running_mean.value_sync());
        let rv1 = to_f32(d.norms[0].running_var.value_sync());
        // The export carries the updated statistics.
        let (_, rm_exported) = exported
            .iter()
            .find(|(n, _)| n == "main.3.running_mean")
            .expect("main.3.running_mean exported");
        assert_eq!(rm_exported.clone().to_vec::<f32>().unwrap(), rm1);
        for i in 0..c {
            let em = 0.9 * rm0[i] + 0.1 * mean[i];
            let ev = 0.9 * rv0[i] + 0.1 * var_biased[i] * n / (n - 1.0);
            assert!(
                (rm1[i] - em).abs() < 1e-5,
                "running_mean[{i}] {} vs {em}",
                rm1[i]
            );
            assert!(
                (rv1[i] - ev).abs() < 1e-5,
                "running_var[{i}] {} vs {ev}",
                rv1[i]
            );
        }
    }
}

#[test]
fn patchgan_exports_official_names_and_loads_back() {
    let manifest = Manifest::load();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for case in manifest.patchgan_cases() {
        let cfg = case.patchgan_config();
        let sd = case.state_dict();
        let d = PatchGan::<Cpu>::load(&sd, &cfg, &device).unwrap();
        let tensors = d.state_dict().unwrap();
        let out = dir.path().join(format!("{}.safetensors", case.name));
        write_safetensors(&out, &tensors, None).unwrap();
        let back = StateDict::open(&out, WeightsChoice::Model).unwrap();
        assert!(back.check(&cfg.weight_specs()).is_ok());
        let w0 = Weights::<Cpu>::new(&sd, &device);
        let w1 = Weights::<Cpu>::new(&back, &device);
        for k in back.keys() {
            assert_eq!(w0.data(k).unwrap(), w1.data(k).unwrap(), "{k}");
        }
        PatchGan::<Cpu>::load(&back, &cfg, &device).unwrap();
    }
    // A fresh one at the official defaults exports too.
    let cfg = Default::default();
    let d = PatchGan::<Cpu>::init(&cfg, &device).unwrap();
    let tensors = d.state_dict().unwrap();
    assert_eq!(tensors.len(), cfg.weight_specs().len());
    assert_eq!(cfg.num_params(), 2_765_633);
}

/// Random VGG16 / LPIPS-head weights under the official key names, as two safetensors files.
fn random_lpips_files(
    dir: &std::path::Path,
    lin_positive: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use burn::tensor::Distribution;
    let device = Default::default();
    let make = |specs: Vec<llamagen::config::TensorSpec>, extra: bool| {
        let mut v: Vec<(String, burn::tensor::TensorData)> = specs
            .iter()
            .map(|s| {
                // He-style scale keeps the random activations alive through 13 layers.
                let fan_in: usize = s.shape.iter().skip(1).product::<usize>().max(1);
                let std = (2.0 / fan_in as f64).sqrt();
                let t =
                    Tensor::<Cpu, 1>::random([s.numel()], Distribution::Normal(0.0, std), &device);
                let t = if lin_positive && s.name.starts_with("lin") {
                    t.abs()
                } else {
                    t
                };
                let values: Vec<f32> = t.into_data().to_vec().unwrap();
                (
                    s.name.clone(),
                    burn::tensor::TensorData::new(values, s.shape.clone()),
                )
            })
            .collect();
        if extra {
            // torchvision's file also holds the classifier, which LPIPS ignores.
            v.push((
                "classifier.6.bias".into(),
                Tensor::<Cpu, 1>::zeros([10], &device).into_data(),
            ));
        }
        v
    };
    let vgg = dir.join("vgg16-397923af.safetensors");
    let lin = dir.join("vgg.safetensors");
    write_safetensors(&vgg, &make(vgg_specs(), true), None).unwrap();
    write_safetensors(&lin, &make(lin_specs(), false), None).unwrap();
    (vgg, lin)
}

#[test]
fn lpips_loads_official_names_and_is_a_distance() {
    let dir = tempfile::tempdir().unwrap();
    let (vgg, lin) = random_lpips_files(dir.path(), true);
    let device = Default::default();
    let lpips = Lpips::<Cpu>::load(&vgg, &lin, &device).unwrap();
    assert_eq!(lpips.features.len(), 13);
    assert_eq!(lpips.lins.len(), 5);

    // The taps have the VGG16 widths and resolutions.
    let x = Tensor::<Cpu, 4>::random(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let y = Tensor::<Cpu, 4>::random(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let dims: Vec<[usize; 4]> = lpips.taps(x.clone()).iter().map(|t| t.dims()).collect();
    assert_eq!(
        dims,
        vec![
            [2, 64, 32, 32],
            [2, 128, 16, 16],
            [2, 256, 8, 8],
            [2, 512, 4, 4],
            [2, 512, 2, 2]
        ]
    );

    let d_xy = to_f32(lpips.forward(x.clone(), y.clone()));
    let d_yx = to_f32(lpips.forward(y.clone(), x.clone()));
    let d_xx = to_f32(lpips.forward(x.clone(), x.clone()));
    assert_eq!(d_xy.len(), 2);
    for i in 0..2 {
        assert_eq!(d_xx[i], 0.0, "d(x, x) = 0");
        assert!(
            d_xy[i] > 0.0,
            "distinct images at positive distance: {}",
            d_xy[i]
        );
        assert!(
            (d_xy[i] - d_yx[i]).abs() <= 1e-6 * d_xy[i].abs().max(1.0),
            "symmetric"
        );
    }
    // Batch items are independent: the distance of one pair alone is the same.
    let x0 = x.clone().slice([0..1, 0..3, 0..32, 0..32]);
    let y0 = y.clone().slice([0..1, 0..3, 0..32, 0..32]);
    let d0 = to_f32(lpips.forward(x0, y0));
    assert!((d0[0] - d_xy[0]).abs() <= 1e-5 * d_xy[0].abs().max(1.0));

    // Missing or misshapen official entries are refused.
    let missing = dir.path().join("lin_missing.safetensors");
    let sd = StateDict::open(&lin, WeightsChoice::Model).unwrap();
    let w = Weights::<Cpu>::new(&sd, &device);
    let partial: Vec<_> = sd
        .keys()
        .filter(|k| *k != "lin4.model.1.weight")
        .map(|k| (k.to_string(), w.data(k).unwrap()))
        .collect();
    write_safetensors(&missing, &partial, None).unwrap();
    let err = Lpips::<Cpu>::load(&vgg, &missing, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lin4.model.1.weight"), "{err}");
    let err = Lpips::<Cpu>::load(&lin, &lin, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("features.0.weight"), "{err}");
}

#[test]
fn lpips_is_frozen_but_passes_gradients_to_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let (vgg, lin) = random_lpips_files(dir.path(), true);
    let device = Default::default();
    let lpips = Lpips::<Ad>::load(&vgg, &lin, &device).unwrap();
    let x = Tensor::<Ad, 4>::random(
        [1, 3, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    )
    .require_grad();
    let y = Tensor::<Ad, 4>::random(
        [1, 3, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let grads = lpips.forward(x.clone(), y).mean().backward();
    let gx = x.grad(&grads).expect("gradient to the input");
    assert!(gx.abs().sum().into_scalar() > 0.0);
    for (i, conv) in lpips.features.iter().enumerate() {
        assert!(!conv.weight.is_require_grad(), "features {i} trainable");
        assert!(
            conv.weight.grad(&grads).is_none(),
            "features {i} got a gradient"
        );
    }
    for (i, conv) in lpips.lins.iter().enumerate() {
        assert!(conv.weight.grad(&grads).is_none(), "lin {i} got a gradient");
    }
}
