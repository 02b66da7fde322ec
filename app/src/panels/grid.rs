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

/// One axis: its parameter and its values ("X values", "Y values").
fn axis_row(ui: &mut egui::Ui, name: &str, axis: &mut Axis, values: &mut String) {
    ui.horizontal(|ui| {
        ui.label(name);
        axis_combo(ui, &format!("{} axis", name.to_lowercase()), axis);
        let l = ui.label(format!("{name} values"));
        ui.add(TextEdit::singleline(values).desired_width(120.0))
            .labelled_by(l.id);
    });
}

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    ui.weak("Two parameters, comma-separated values (prompts: separated by |); all cells run as one batch.");
    let xy = &mut app.settings.xy;
    axis_row(ui, "X", &mut xy.x, &mut xy.x_values);
    axis_row(ui, "Y", &mut xy.y, &mut xy.y_values);
    let ready = app.info().is_some() && !app.is_running();
    if ui
        .add_enabled(ready, egui::Button::new("Run grid"))
        .clicked()
    {
        actions.push(Action::RunGrid);
    }
    actions
}
