//! The sampler panel: guidance, temperature, top-k/top-p, the seed, the decoding and the
//! batch, and the overlay of the finished images.

use egui::Slider;

use crate::app::{Action, StudioApp};
use crate::settings::Overlay;

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    let vocab = app.info().map(|i| i.vocab_size).unwrap_or(16384);
    let s = &mut app.settings.sampler;
    ui.add(
        Slider::new(&mut s.cfg_scale, 0.0..=10.0)
            .step_by(0.25)
            .text("CFG scale"),
    )
    .on_hover_text("classifier-free guidance: 1 = off");
    ui.add(Slider::new(&mut s.cfg_interval, -1..=1024).text("CFG interval"))
        .on_hover_text("guidance stops after this token; −1 = always on");
    ui.add(
        Slider::new(&mut s.temperature, 0.05..=2.0)
            .step_by(0.05)
            .text("Temperature"),
    );
    ui.add(
        Slider::new(&mut s.top_k, 0..=vocab)
            .logarithmic(true)
            .text("Top-k"),
    )
    .on_hover_text("keep the k most likely tokens; 0 = off");
    ui.add(
        Slider::new(&mut s.top_p, 0.01..=1.0)
            .step_by(0.01)
            .text("Top-p"),
    )
    .on_hover_text("nucleus: keep the most likely tokens up to this mass; 1 = off");
    ui.horizontal(|ui| {
        let l = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut app.settings.sampler.seed))
            .labelled_by(l.id);
        ui.checkbox(&mut app.settings.seed_locked, "Lock seed")
            .on_hover_text("keep this seed; otherwise every run draws a new one");
        if ui.button("New seed").clicked() {
            actions.push(Action::NewSeed);
        }
    });
    decoding_choice(app, ui);
    ui.add(Slider::new(&mut app.settings.num_images, 1..=16).text("Images per class"));
    ui.add(Slider::new(&mut app.settings.batch_size, 1..=64).text("Batch size"))
        .on_hover_text(
            "images generated together; a run of more goes batch after batch (a bigger batch \
             is faster per image and needs more memory)",
        );
    ui.add(Slider::new(&mut app.settings.decode_every, 0..=256).text("Decode every"))
        .on_hover_text(
            "a true VQ decode of the rows generated so far at most every N tokens (0 = only at \
             the end); it runs beside generation within a share of the machine's time, so it \
             may come less often",
        );
    ui.horizontal(|ui| {
        if ui.button("Reset sampler").clicked() {
            actions.push(Action::ResetSampler);
        }
        ui.label("Overlay");
        egui::ComboBox::from_id_salt("overlay")
            .selected_text(match app.settings.overlay {
                Overlay::None => "none",
                Overlay::Probability => "probability",
                Overlay::Entropy => "entropy",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut app.settings.overlay, Overlay::None, "none");
                ui.selectable_value(
                    &mut app.settings.overlay,
                    Overlay::Probability,
                    "probability",
                );
                ui.selectable_value(&mut app.settings.overlay, Overlay::Entropy, "entropy");
            });
    });
    actions
}

/// Sequential, SJD or ZipAR, with the window of the last two.
fn decoding_choice(app: &mut StudioApp, ui: &mut egui::Ui) {
    use llamagen::generate::Decoding;
    let grid = app.info().map(|i| i.grid_size).unwrap_or(16).max(1);
    let d = &mut app.settings.decoding;
    ui.horizontal(|ui| {
        let l = ui.label("Decoding");
        egui::ComboBox::from_id_salt("decoding")
            .selected_text(d.name())
            .show_ui(ui, |ui| {
                let sjd = Decoding::Sjd {
                    window: Decoding::DEFAULT_SJD_WINDOW,
                };
                let zipar = Decoding::Zipar {
                    window: (2 * grid).div_ceil(3),
                };
                for (choice, hint) in [
                    (Decoding::Sequential, "one token a forward pass"),
                    (
                        sjd,
                        "speculative Jacobi decoding: several tokens a pass, the same distribution",
                    ),
                    (
                        zipar,
                        "rows in parallel: fewer passes, but it changes the distribution",
                    ),
                ] {
                    let selected = d.name() == choice.name();
                    if ui
                        .selectable_label(selected, choice.name())
                        .on_hover_text(hint)
                        .clicked()
                        && !selected
                    {
                        *d = choice;
                    }
                }
            })
            .response
            .labelled_by(l.id);
        match d {
            Decoding::Sequential => {}
            Decoding::Sjd { window } => {
                ui.add(Slider::new(window, 1..=32).text("window"))
                    .on_hover_text("draft tokens verified each forward pass");
            }
            Decoding::Zipar { window } => {
                *window = (*window).clamp(1, grid);
                ui.add(Slider::new(window, 1..=grid).text("window"))
                    .on_hover_text(
                        "tokens a row needs before the row below starts; the grid's width is \
                         sequential decoding",
                    );
            }
        }
    });
}
