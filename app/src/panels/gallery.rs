//! The gallery along the bottom: this session's images, the save folder, and a right-click to
//! save one as a PNG with its parameters.

use egui::{Sense, TextEdit, Vec2};

use crate::app::{Action, StudioApp};

pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    ui.horizontal(|ui| {
        ui.strong(format!("Gallery ({})", app.gallery.len()));
        ui.weak("click an image to show it; right-click to save it as PNG with its parameters");
        ui.separator();
        ui.checkbox(&mut app.settings.save_images, "Save every image in")
            .on_hover_text(
                "each finished image is written there as a PNG that carries its parameters \
                 (NUMBER-CLASS-seedSEED.png, numbered on from what the folder holds)",
            );
        let mut dir = app.settings.save_dir.display().to_string();
        let field = ui.add_enabled(
            app.settings.save_images,
            TextEdit::singleline(&mut dir).desired_width(220.0),
        );
        if field.changed() {
            app.settings.save_dir = dir.into();
        }
        if ui
            .add_enabled(app.settings.save_images, egui::Button::new("…"))
            .on_hover_text("choose the folder")
            .clicked()
            && let Some(p) = rfd::FileDialog::new().pick_folder()
        {
            app.settings.save_dir = p;
        }
    });
    let mut show = None;
    let mut save = None;
    egui::ScrollArea::horizontal().show(ui, |ui| {
        ui.horizontal(|ui| {
            for (i, item) in app.gallery.iter().enumerate() {
                let r = ui
                    .add(
                        egui::Image::new((item.texture.id(), Vec2::splat(96.0)))
                            .sense(Sense::click()),
                    )
                    .on_hover_text(format!(
                        "{} · seed {} · cfg {} · T {} · top-k {} · top-p {}\n{}",
                        item.record.class_name.as_deref().unwrap_or("?"),
                        item.record.params.seed,
                        item.record.params.cfg_scale,
                        item.record.params.temperature,
                        item.record.params.top_k,
                        item.record.params.top_p,
                        item.saved.as_ref().map_or_else(
                            || "not saved".to_string(),
                            |p| format!("saved as {}", p.display())
                        )
                    ));
                if r.clicked() {
                    show = Some(i);
                }
                r.context_menu(|ui| {
                    if ui.button("Save PNG…").clicked() {
                        save = Some(i);
                        ui.close();
                    }
                    if ui.button("Use these parameters").clicked() {
                        show = Some(i);
                        ui.close();
                    }
                });
            }
        });
    });
    if let Some(i) = save
        && let Some(path) = rfd::FileDialog::new()
            .set_file_name(format!(
                "llamagen-{}.png",
                app.gallery[i].record.params.seed
            ))
            .add_filter("PNG", &["png"])
            .save_file()
    {
        actions.push(Action::SaveGalleryItem { index: i, path });
    }
    if let Some(i) = show {
        actions.push(Action::ShowGalleryItem(i));
    }
    actions
}
