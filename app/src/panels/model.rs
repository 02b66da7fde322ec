//! The model panel: what is loaded, its precision, the checkpoints to open and the T5 folder
//! of a text-conditional model.

use egui::{Color32, TextEdit};
use llamagen::Precision;
use llamagen::config::ModelType;

use crate::app::{Action, ModelState, StudioApp, TextState};
use crate::message::ModelSpec;

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut precision_change = None;
    match &app.model {
        ModelState::Loading(what) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("loading {what}"));
            });
        }
        ModelState::Failed(e) => {
            ui.colored_label(
                Color32::from_rgb(230, 90, 80),
                format!("could not open: {e}"),
            );
        }
        ModelState::Ready(info) => {
            egui::Grid::new("model info").num_columns(2).show(ui, |ui| {
                ui.label("model");
                ui.label(&info.description);
                ui.end_row();
                ui.label("parameters");
                ui.label(format!("{:.1} M", info.params as f64 / 1e6));
                ui.end_row();
                ui.label("image");
                ui.label(format!(
                    "{0} px, {1}×{1} tokens, codebook {2}",
                    info.image_size, info.grid_size, info.vocab_size
                ));
                ui.end_row();
                ui.label("precision");
                ui.horizontal(|ui| {
                    let mut chosen = info.precision;
                    egui::ComboBox::from_id_salt("precision")
                        .selected_text(chosen.name())
                        .show_ui(ui, |ui| {
                            for p in [Precision::F32, Precision::F16, Precision::Bf16] {
                                ui.selectable_value(&mut chosen, p, p.name());
                            }
                        })
                        .response
                        .on_hover_text(
                            "the generator's weights: f16 and bf16 take half the memory; \
                             wgpu has f16 (with SHADER_F16), the CPU both",
                        );
                    ui.label(format!(
                        "{:.0} MB of weights",
                        info.weight_bytes as f64 / 1e6
                    ));
                    if chosen != info.precision {
                        precision_change = Some(chosen);
                    }
                });
                ui.end_row();
                ui.label("device");
                ui.label(&info.compute);
                ui.end_row();
                let (atlas, coloured) = app
                    .atlas
                    .lock()
                    .map(|a| (a.filled(), a.have.iter().any(|&h| h)))
                    .unwrap_or((0, false));
                if atlas < info.vocab_size {
                    ui.label("preview");
                    ui.label(format!(
                        "{atlas}/{} patches decoded{}",
                        info.vocab_size,
                        if coloured {
                            ", the rest in mean colours"
                        } else {
                            ""
                        }
                    ));
                    ui.end_row();
                }
            });
        }
    }
    if let Some(p) = precision_change {
        actions.push(Action::SetPrecision(p));
    }
    ui.separator();
    checkpoint_row(
        ui,
        "GPT",
        "c2i_L_384.pt",
        "Generator (GPT) checkpoint",
        &mut app.gpt_path,
    );
    checkpoint_row(
        ui,
        "VQ ",
        "vq_ds16_c2i.pt",
        "Tokenizer (VQ) checkpoint",
        &mut app.vq_path,
    );
    ui.horizontal(|ui| {
        let l = ui.label("Image size");
        ui.add(
            TextEdit::singleline(&mut app.image_size)
                .hint_text("from the file")
                .desired_width(80.0),
        )
        .labelled_by(l.id)
        .on_hover_text("pixels; only needed when the file name does not say it (e.g. …_384.pt)");
    });
    ui.horizontal(|ui| {
        if ui.button("Open").clicked() {
            actions.push(Action::OpenTyped);
        }
        if ui
            .button("Demo model")
            .on_hover_text("the bundled class-conditional model: ten procedural shapes")
            .clicked()
        {
            actions.push(Action::OpenModel(ModelSpec::Demo));
        }
        if ui
            .button("Text demo")
            .on_hover_text(
                "the bundled text-conditional model and its small text encoder: \
                 prompts such as \"a red star on a blue background\"",
            )
            .clicked()
        {
            actions.push(Action::OpenModel(ModelSpec::TextDemo));
        }
    });
    if !app.settings.recent.is_empty() {
        ui.menu_button("Recent", |ui| {
            for m in app.settings.recent.clone() {
                let name = m
                    .gpt
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                if ui
                    .button(name)
                    .on_hover_text(m.gpt.display().to_string())
                    .clicked()
                {
                    actions.push(Action::OpenModel(ModelSpec::Files {
                        gpt: m.gpt,
                        vq: m.vq,
                        image_size: m.image_size,
                    }));
                    ui.close();
                }
            }
        });
    }
    if app.info().is_some_and(|i| i.model_type == ModelType::T2i) {
        ui.separator();
        ui.horizontal(|ui| {
            let l = ui.label("T5 folder");
            ui.add(
                TextEdit::singleline(&mut app.settings.t5_dir)
                    .hint_text("flan-t5-xl/")
                    .desired_width(160.0),
            )
            .labelled_by(l.id)
            .on_hover_text("Hugging Face folder: config.json, model.safetensors (or shards, or pytorch_model*.bin), tokenizer.json");
            if ui.button("…").on_hover_text("choose the FLAN-T5 folder").clicked()
                && let Some(p) = rfd::FileDialog::new().pick_folder()
            {
                app.settings.t5_dir = p.display().to_string();
            }
        });
        ui.horizontal(|ui| {
            let loading = app.text == TextState::Loading;
            if ui
                .add_enabled(!loading, egui::Button::new("Load T5"))
                .clicked()
            {
                actions.push(Action::LoadText);
            }
            let ready = matches!(app.text, TextState::Ready { .. });
            if ui
                .add_enabled(ready, egui::Button::new("Free T5"))
                .on_hover_text("release the encoder's memory; prompts need it loaded again")
                .clicked()
            {
                actions.push(Action::ReleaseText);
            }
            match &app.text {
                TextState::None => ui.weak("not loaded"),
                TextState::Loading => ui.spinner(),
                TextState::Ready {
                    params, precision, ..
                } => ui.label(format!(
                    "ready, {:.1} M parameters in {precision}",
                    *params as f64 / 1e6
                )),
                TextState::Failed(e) => ui.colored_label(Color32::from_rgb(230, 90, 80), e),
            };
        });
    }
    ui.weak("Drop checkpoints here to open them, or a PNG to restore its parameters.");
    actions
}

/// A labelled path field with a "…" button that opens a file dialog.
fn checkpoint_row(ui: &mut egui::Ui, label: &str, hint: &str, title: &str, path: &mut String) {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(
            TextEdit::singleline(path)
                .hint_text(hint)
                .desired_width(180.0),
        )
        .labelled_by(l.id);
        if ui
            .button("…")
            .on_hover_text(format!("choose the {title}"))
            .clicked()
            && let Some(p) = pick_checkpoint(title)
        {
            *path = p.display().to_string();
        }
    });
}

fn pick_checkpoint(title: &str) -> Option<std::path::PathBuf> {
    rfd::FileDialog::new()
        .set_title(title)
        .add_filter("checkpoints", &["pt", "pth", "safetensors"])
        .pick_file()
}
