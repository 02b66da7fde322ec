//! The bar along the top: Generate, Cancel, the run's progress and the last message.

use egui::RichText;

use crate::app::{Action, RunStatus, StudioApp};

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    ui.horizontal(|ui| {
        let ready = app.info().is_some() && !app.is_running();
        if ui
            .add_enabled(ready, egui::Button::new(RichText::new("Generate").strong()))
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            actions.push(Action::Generate);
        }
        if ui
            .add_enabled(app.is_running(), egui::Button::new("Cancel"))
            .on_hover_text("Esc")
            .clicked()
        {
            actions.push(Action::Cancel);
        }
        if let Some(v) = &app.view {
            let frac = v.done as f32 / v.total.max(1) as f32;
            let (rate, eta) = v.speed();
            let passes: usize = v.passes.values().sum();
            let text = match &v.status {
                RunStatus::Running => format!(
                    "{}/{} tokens{} · {rate:.1} tokens/s · {}",
                    v.done,
                    v.total,
                    match v.decoding {
                        llamagen::generate::Decoding::Sequential => String::new(),
                        d => format!(" in {passes} passes ({})", d.name()),
                    },
                    if eta.is_finite() {
                        format!("{eta:.0} s left")
                    } else {
                        "…".into()
                    }
                ),
                RunStatus::Done { seconds } => format!("done in {seconds:.1} s"),
                RunStatus::Cancelled => format!("cancelled at {}/{} tokens", v.done, v.total),
                RunStatus::Failed(e) => format!("failed: {e}"),
            };
            ui.add(egui::ProgressBar::new(frac).desired_width(320.0).text(text));
        }
        ui.label(&app.message);
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            ui.weak(format!("frame {:.1} ms · {}", app.frame_ms(), app.compute));
        });
    });
    actions
}
