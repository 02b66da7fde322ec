//! The run in the middle: its cells, live (the latest true decode under the mosaic of newer
//! tokens) or finished (with the probability or entropy overlay), and a click on a token to
//! re-roll what follows it.

use egui::{Color32, Rect, RichText, Sense, Vec2};
use llamagen::config::ModelType;

use crate::app::{Action, Cell, StudioApp};
use crate::preview::MosaicCallback;
use crate::settings::Overlay;

/// The current run: cells in a grid (with axis labels for an X/Y grid).
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(view) = &app.view else {
        ui.centered_and_justified(|ui| {
            let text = app.info().is_some_and(|i| i.model_type == ModelType::T2i);
            ui.weak(if text {
                "Write a prompt and press Generate (Ctrl+Enter)."
            } else {
                "Pick a class and press Generate (Ctrl+Enter)."
            });
        });
        return actions;
    };
    let Some(info) = app.info().cloned() else {
        return actions;
    };
    let grid = info.grid_size;
    let n = view.cells.len();
    let cols = view.columns.max(1);
    let rows = n.div_ceil(cols);
    let label_w = if view.axes.is_some() { 90.0 } else { 0.0 };
    let label_h = 18.0;
    let avail = ui.available_size();
    let side = ((avail.x - label_w) / cols as f32)
        .min(
            (avail.y - label_h * rows as f32 - if view.axes.is_some() { 20.0 } else { 0.0 })
                / rows as f32,
        )
        .clamp(48.0, 512.0)
        - 6.0;
    let mut clicked: Option<(usize, usize)> = None;
    let mut rects = Vec::with_capacity(view.cells.len());
    let overlay = app.settings.overlay;
    let running = view.is_running();
    egui::ScrollArea::both().show(ui, |ui| {
        if let Some((x_name, xs, y_name, _)) = &view.axes {
            ui.horizontal(|ui| {
                ui.add_space(label_w);
                for x in xs {
                    ui.add_sized([side + 6.0, 18.0], egui::Label::new(RichText::new(format!("{x_name} {x}")).strong()));
                }
            });
            let _ = y_name;
        }
        for r in 0..rows {
            ui.horizontal(|ui| {
                if let Some((_, _, y_name, ys)) = &view.axes {
                    ui.add_sized(
                        [label_w, side],
                        egui::Label::new(RichText::new(format!("{y_name}\n{}", ys.get(r).cloned().unwrap_or_default())).strong()),
                    );
                }
                for c in 0..cols {
                    let i = r * cols + c;
                    let Some(cell) = view.cells.get(i) else { break };
                    ui.vertical(|ui| {
                        let (rect, response) =
                            ui.allocate_exact_size(Vec2::splat(side), Sense::click());
                        rects.push(rect);
                        let painter = ui.painter_at(rect);
                        painter.rect_filled(rect, 0.0, Color32::from_gray(24));
                        if let Some(tex) = &cell.texture {
                            painter.image(tex.id(), rect, unit_uv(), Color32::WHITE);
                            draw_overlay(&painter, rect, grid, cell, overlay);
                            // Click a token: keep everything before it, re-roll the rest.
                            if let Some(pos) = response.hover_pos() {
                                let idx = token_at(rect, pos, grid);
                                response.clone().on_hover_text(format!(
                                    "token {idx}: click to keep the {idx} tokens before it and re-roll the rest"
                                ));
                            }
                            if response.clicked()
                                && let Some(pos) = response.interact_pointer_pos()
                            {
                                clicked = Some((i, token_at(rect, pos, grid)));
                            }
                        } else {
                            // Live: the latest true decode under the mosaic of the newer tokens.
                            let start = match &cell.partial {
                                Some((tex, upto)) => {
                                    // The decode covers the complete rows generated so far.
                                    let rows = (*upto / grid.max(1)).min(grid) as f32;
                                    let band = Rect::from_min_size(
                                        rect.min,
                                        Vec2::new(rect.width(), rect.height() * rows / grid as f32),
                                    );
                                    painter.image(tex.id(), band, unit_uv(), Color32::WHITE);
                                    *upto
                                }
                                None => 0,
                            };
                            draw_mosaic(app, ui, &painter, rect, i, grid, &cell.tokens, start);
                        }
                        ui.add_sized(
                            [side, label_h],
                            egui::Label::new(RichText::new(&cell.label).small()).truncate(),
                        );
                    });
                }
            });
        }
        if running {
            ui.weak("Esc cancels.");
        }
    });
    app.cell_rects = rects;
    if let Some((cell, pos)) = clicked {
        actions.push(Action::Resample {
            cell,
            position: pos,
        });
    }
    actions
}

fn unit_uv() -> Rect {
    Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0))
}

fn token_at(rect: Rect, pos: egui::Pos2, grid: usize) -> usize {
    let u = ((pos.x - rect.min.x) / rect.width()).clamp(0.0, 0.9999);
    let v = ((pos.y - rect.min.y) / rect.height()).clamp(0.0, 0.9999);
    (v * grid as f32) as usize * grid + (u * grid as f32) as usize
}

/// The mosaic of the tokens at or after `start` (earlier positions show what is beneath).
#[allow(clippy::too_many_arguments)]
fn draw_mosaic(
    app: &StudioApp,
    _ui: &egui::Ui,
    painter: &egui::Painter,
    rect: Rect,
    slot: usize,
    grid: usize,
    tokens: &[u32],
    start: usize,
) {
    let mut shown = tokens.to_vec();
    for t in shown.iter_mut().take(start) {
        *t = crate::preview::SKIP_TOKEN;
    }
    if app.gpu_preview {
        painter.add(egui_wgpu::Callback::new_paint_callback(
            rect,
            MosaicCallback {
                atlas: app.atlas.clone(),
                tokens: shown,
                grid,
                slot,
            },
        ));
    } else if let Ok(atlas) = app.atlas.lock() {
        let img = atlas.compose(&shown, grid);
        let tex = painter.ctx().load_texture(
            format!("mosaic-{slot}"),
            img,
            egui::TextureOptions::NEAREST,
        );
        painter.image(tex.id(), rect, unit_uv(), Color32::WHITE);
    }
}

fn draw_overlay(painter: &egui::Painter, rect: Rect, grid: usize, cell: &Cell, overlay: Overlay) {
    let values = match overlay {
        Overlay::None => return,
        Overlay::Probability => &cell.probs,
        Overlay::Entropy => &cell.entropy,
    };
    let max_entropy = cell
        .entropy
        .iter()
        .copied()
        .filter(|e| e.is_finite())
        .fold(1e-6f32, f32::max);
    let step = rect.width() / grid as f32;
    for (i, &v) in values.iter().enumerate().take(grid * grid) {
        if !v.is_finite() {
            continue; // kept prefix tokens were not drawn in this run
        }
        // Dark where the model was unsure: low probability, or high entropy.
        let doubt = match overlay {
            Overlay::Probability => 1.0 - v,
            _ => v / max_entropy,
        };
        let r = Rect::from_min_size(
            rect.min + Vec2::new((i % grid) as f32 * step, (i / grid) as f32 * step),
            Vec2::splat(step),
        );
        painter.rect_filled(
            r,
            0.0,
            Color32::from_black_alpha((doubt.clamp(0.0, 1.0) * 220.0) as u8),
        );
    }
}
