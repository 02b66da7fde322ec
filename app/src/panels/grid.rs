//! The X/Y grid panel: two parameters and their values, run as one batch.

use egui::TextEdit;

use crate::app::{Action, StudioApp};
use crate::explore::Axis;

fn axis_combo(ui: &mut egui::Ui, id: &str, axis: &mut Axis) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(axis.name())
        .show_ui(ui, |ui| {
            for a in Axis::ALL {
                ui.selectable_value(axis, a, a.name());
            }
        });
}

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    ui.weak("Two parameters, comma-separated values (prompts: separated by |); all cells run as one batch.");
    ui.horizontal(|ui| {
        ui.label("X");
        axis_combo(ui, "x axis", &mut app.settings.xy.x);
        let l = ui.label("X values");
        ui.add(TextEdit::singleline(&mut app.settings.xy.x_values).desired_width(120.0))
            .labelled_by(l.id);
    });
    ui.horizontal(|ui| {
        ui.label("Y");
        axis_combo(ui, "y axis", &mut app.settings.xy.y);
        let l = ui.label("Y values");
        ui.add(TextEdit::singleline(&mut app.settings.xy.y_values).desired_width(120.0))
            .labelled_by(l.id);
    });
    let ready = app.info().is_some() && !app.is_running();
    if ui
        .add_enabled(ready, egui::Button::new("Run grid"))
        .clicked()
    {
        actions.push(Action::RunGrid);
    }
    actions
}
