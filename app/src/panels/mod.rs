//! Drawing the studio, one file a panel: the run bar on top, the model and the condition on the
//! left, the sampler and the X/Y grid on the right, the run in the middle, the gallery at the
//! bottom. The panels read the state, edit its form fields in place as egui widgets do, and
//! return every other thing the user did as an [`Action`]; they never act on the state.
//!
//! The two side columns keep the sampler beside the image: on a 1280×800 screen both show
//! without scrolling.

mod condition;
mod gallery;
mod grid;
mod model;
mod run_bar;
mod run_view;
mod sampler;

use egui::{Key, Modifiers};

use crate::app::{Action, StudioApp};

/// Width of each side column, in points, and how far a person may drag it (long labels wrap
/// rather than widen the column past the upper bound).
const SIDE_WIDTH: f32 = 300.0;
const SIDE_RANGE: std::ops::RangeInclusive<f32> = 220.0..=420.0;

/// Draws one frame and returns what the user did, in order.
pub fn draw(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let ctx = ui.ctx().clone();
    let mut actions = Vec::new();
    // Keys: Ctrl+Enter generates, Esc cancels.
    if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::Enter)) {
        actions.push(Action::Generate);
    }
    if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Escape)) {
        actions.push(Action::Cancel);
    }
    let dropped: Vec<_> = ctx.input(|i| {
        i.raw
            .dropped_files
            .iter()
            .filter_map(|f| f.path.clone())
            .collect()
    });
    if !dropped.is_empty() {
        actions.push(Action::Dropped(dropped));
    }

    egui::Panel::top("run bar").show(ui, |ui| actions.extend(run_bar::show(app, ui)));
    egui::Panel::bottom("gallery")
        .resizable(true)
        .default_size(130.0)
        .show(ui, |ui| actions.extend(gallery::show(app, ui)));
    egui::Panel::left("model and condition")
        .resizable(true)
        .default_size(SIDE_WIDTH)
        .size_range(SIDE_RANGE)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                egui::CollapsingHeader::new("Model")
                    .default_open(true)
                    .show(ui, |ui| actions.extend(model::show(app, ui)));
                egui::CollapsingHeader::new("Condition")
                    .default_open(true)
                    .show(ui, |ui| condition::show(app, ui));
            });
        });
    egui::Panel::right("sampler and grid")
        .resizable(true)
        .default_size(SIDE_WIDTH)
        .size_range(SIDE_RANGE)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                egui::CollapsingHeader::new("Sampler")
                    .default_open(true)
                    .show(ui, |ui| actions.extend(sampler::show(app, ui)));
                egui::CollapsingHeader::new("X/Y grid")
                    .default_open(false)
                    .show(ui, |ui| actions.extend(grid::show(app, ui)));
            });
        });
    egui::CentralPanel::default().show(ui, |ui| actions.extend(run_view::show(app, ui)));
    if app.is_running() {
        // Keep drawing while tokens arrive (the worker also wakes the UI on every event).
        ctx.request_repaint_after(std::time::Duration::from_millis(30));
    }
    actions
}
