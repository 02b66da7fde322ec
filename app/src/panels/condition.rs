//! The condition panel: the classes of a class-conditional model, or the prompts of a
//! text-conditional one.

use egui::TextEdit;
use llamagen::config::ModelType;

use crate::app::{StudioApp, TextState};

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    let Some(info) = app.info().cloned() else {
        ui.weak("no model");
        return;
    };
    let t2i = info.model_type == ModelType::T2i;
    ui.add_enabled_ui(!t2i, |ui| {
        ui.horizontal(|ui| {
            let l = ui.label("Class search");
            ui.add(
                TextEdit::singleline(&mut app.settings.class_search)
                    .hint_text("name or id")
                    .desired_width(160.0),
            )
            .labelled_by(l.id);
        });
        // The chosen classes, each with a remove button.
        ui.horizontal_wrapped(|ui| {
            let mut remove = None;
            for (i, &c) in app.settings.classes.iter().enumerate() {
                if ui
                    .small_button(format!("× {}", app.class_name(c)))
                    .on_hover_text("remove")
                    .clicked()
                {
                    remove = Some(i);
                }
            }
            if let Some(i) = remove {
                app.settings.classes.remove(i);
            }
        });
        let query = app.settings.class_search.trim().to_lowercase();
        egui::ScrollArea::vertical()
            .id_salt("class list")
            .max_height(160.0)
            .show(ui, |ui| {
                for (id, name) in info.class_names.iter().enumerate() {
                    if !query.is_empty()
                        && !name.to_lowercase().contains(&query)
                        && query != id.to_string()
                    {
                        continue;
                    }
                    let selected = app.settings.classes.contains(&id);
                    if ui.selectable_label(selected, name.as_str()).clicked() {
                        if selected {
                            app.settings.classes.retain(|&c| c != id);
                        } else {
                            app.settings.classes.push(id);
                        }
                    }
                }
            });
    });
    ui.add_space(4.0);
    let text_ready = matches!(app.text, TextState::Ready { .. });
    let prompt_reason = if !t2i {
        Some("this model is class-conditional: open a text-to-image model to write a prompt")
    } else if !text_ready {
        Some("load the model's T5 encoder (Model panel) to write a prompt")
    } else {
        None
    };
    ui.add_enabled_ui(prompt_reason.is_none(), |ui| {
        let l = ui.label("Prompt");
        let r = ui
            .add(
                TextEdit::multiline(&mut app.settings.prompt)
                    .hint_text("a red star on a blue background (one prompt a line)")
                    .desired_rows(2),
            )
            .labelled_by(l.id);
        if let Some(reason) = prompt_reason {
            r.on_disabled_hover_text(reason);
        }
    });
    if let Some(reason) = prompt_reason {
        ui.weak(reason);
    }
}
