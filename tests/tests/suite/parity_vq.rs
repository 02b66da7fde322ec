//! The image tokenizer against the official code: every VQ case of the reference manifest.

use burn::prelude::*;
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::vq::{VqModel, compute_entropy_loss};
use llamagen_tests::{Case, Manifest, Report, to_f32, to_i64};

fn check_model<B: Backend>(
    case: &Case,
    model: &VqModel<B>,
    label: &str,
    tol: f64,
    report: &mut Report,
    covered: &mut Vec<String>,
) {
    let device = model.quant_conv.weight.device();
    let images = case.float::<B, 4>("images", &device);
    let mut cover = |n: &str| covered.push(n.to_string());

    let enc_out = model.encoder.forward(images.clone());
    let pre = model.quant_conv.forward(enc_out.clone());
    let q = model.quantize.quantize(pre.clone());
    let [b, _, h, w] = q.z_q.dims();
    let indices = q.indices.clone().reshape([b, h * w]);

    let mut close = |name: &str, t: Vec<f32>, report: &mut Report| {
        if case.has(name) {
            report.check_close(case, label, name, t, tol);
            cover(name);
        }
    };
    close("enc_out", to_f32(enc_out), report);
    close("quant_conv_out", to_f32(pre.clone()), report);
    close("z_q", to_f32(q.z_q.clone()), report);
    close(
        "normalized_codebook",
        to_f32(model.quantize.codebook()),
        report,
    );
    close(
        "codebook_entries",
        to_f32(model.quantize.codebook_entry(indices.clone(), h, w)),
        report,
    );
    close("recon", to_f32(model.forward(images.clone())), report);
    close("dec_zq", to_f32(model.decode(q.z_q.clone())), report);
    close(
        "dec_code",
        to_f32(model.decode_code(indices.clone(), h, w)),
        report,
    );
    if case.has("train_entropy_loss_ratio1") {
        let loss = compute_entropy_loss(q.distances.clone().neg());
        close("train_entropy_loss_ratio1", to_f32(loss), report);
    }

    // Training mode on a copy: losses and the codebook-usage FIFO.
    if case.has("train_vq_loss") {
        let mut train = model.clone();
        let out = train.forward_train(images);
        close("train_recon", to_f32(out.reconstruction), report);
        close("train_vq_loss", to_f32(out.losses.vq_loss), report);
        close("train_commit_loss", to_f32(out.losses.commit_loss), report);
        close(
            "train_entropy_loss",
            to_f32(out.losses.entropy_loss),
            report,
        );
        close(
            "train_codebook_usage",
            vec![out.codebook_usage as f32],
            report,
        );
        if case.has("train_codebook_used_tail") {
            let used = to_f32(
                train
                    .quantize
                    .codebook_used
                    .as_ref()
                    .expect("usage buffer")
                    .val(),
            );
            let n = case.shape("train_codebook_used_tail")[0];
            close(
                "train_codebook_used_tail",
                used[used.len() - n..].to_vec(),
                report,
            );
        }
    }

    if case.has("indices") {
        report.check_exact(case, label, "indices", to_i64(indices));
        cover("indices");
    }
}

fn run_all<B: Backend>(device: &B::Device, backend: &str, tol: f64) {
    let manifest = Manifest::load();
    let cases = manifest.vq_cases();
    assert!(!cases.is_empty(), "the manifest has no VQ cases");
    let mut report = Report::default();
    for case in &cases {
        let cfg = case.vq_config();
        let mut covered = Vec::new();
        for file in case.weight_files() {
            let sd = StateDict::open(&file, WeightsChoice::PreferEma)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let model = VqModel::<B>::load(&sd, &cfg, device)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let label = format!(
                "[{backend}] {}",
                file.file_name().unwrap().to_string_lossy()
            );
            check_model(case, &model, &label, tol, &mut report, &mut covered);
        }
        report.require_covered(case, &covered);
    }
    report.finish();
}

#[test]
fn vq_matches_reference_on_cpu() {
    run_all::<llamagen::backend::Cpu>(&Default::default(), "cpu", 1.0);
}

#[cfg(feature = "wgpu")]
#[test]
fn vq_matches_reference_on_wgpu() {
    run_all::<llamagen::backend::Wgpu>(&Default::default(), "wgpu", 1.0);
}
