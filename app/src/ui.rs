//! Drawing the studio: panels on the left, the run in the middle, the gallery at the bottom.
//! Every function here reads the state and turns clicks into calls on [`StudioApp`].

use egui::{Color32, Key, Modifiers, Rect, RichText, Sense, Slider, TextEdit, Vec2};
use llamagen::Precision;
use llamagen::config::ModelType;

use crate::app::{ModelState, RunStatus, StudioApp, TextState};
use crate::explore::Axis;
use crate::preview::MosaicCallback;
use crate::settings::Overlay;
use crate::worker::ModelSpec;

pub fn draw(app: &mut StudioApp, ui: &mut egui::Ui) {
    let ctx = ui.ctx().clone();
    // Keys: Ctrl+Enter generates, Esc cancels.
    if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::Enter)) {
        app.generate();
    }
    if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Escape)) {
        app.cancel();
    }
    let dropped: Vec<_> = ctx.input(|i| {
        i.raw
            .dropped_files
            .iter()
            .filter_map(|f| f.path.clone())
            .collect()
    });
    if !dropped.is_empty() {
        app.dropped(dropped);
    }

    egui::Panel::top("run bar").show(ui, |ui| run_bar(app, ui));
    egui::Panel::bottom("gallery")
        .resizable(true)
        .default_size(150.0)
        .show(ui, |ui| gallery(app, ui));
    egui::Panel::left("controls")
        .resizable(true)
        .default_size(320.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                egui::CollapsingHeader::new("Model")
                    .default_open(true)
                    .show(ui, |ui| model_panel(app, ui));
                egui::CollapsingHeader::new("Condition")
                    .default_open(true)
                    .show(ui, |ui| condition_panel(app, ui));
                egui::CollapsingHeader::new("Sampler")
                    .default_open(true)
                    .show(ui, |ui| sampler_panel(app, ui));
                egui::CollapsingHeader::new("X/Y grid")
                    .default_open(false)
                    .show(ui, |ui| grid_panel(app, ui));
            });
        });
    egui::CentralPanel::default().show(ui, |ui| run_view(app, ui));
    if app.is_running() {
        // Keep drawing while tokens arrive (the worker also wakes the UI on every event).
        ctx.request_repaint_after(std::time::Duration::from_millis(30));
    }
}

fn run_bar(app: &mut StudioApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let ready = app.info().is_some() && !app.is_running();
        if ui
            .add_enabled(ready, egui::Button::new(RichText::new("Generate").strong()))
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            app.generate();
        }
        if ui
            .add_enabled(app.is_running(), egui::Button::new("Cancel"))
            .on_hover_text("Esc")
            .clicked()
        {
            app.cancel();
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
}

fn model_panel(app: &mut StudioApp, ui: &mut egui::Ui) {
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
                            ", the others drawn in their mean colour"
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
        app.set_precision(p);
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
            app.open_typed_model();
        }
        if ui
            .button("Demo model")
            .on_hover_text("the bundled class-conditional model: ten procedural shapes")
            .clicked()
        {
            app.open_model(ModelSpec::Demo);
        }
        if ui
            .button("Text demo")
            .on_hover_text(
                "the bundled text-conditional model and its small text encoder: \
                 prompts such as \"a red star on a blue background\"",
            )
            .clicked()
        {
            app.open_model(ModelSpec::TextDemo);
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
                    app.gpt_path = m.gpt.display().to_string();
                    app.vq_path = m.vq.display().to_string();
                    app.open_model(ModelSpec::Files {
                        gpt: m.gpt,
                        vq: m.vq,
                        image_size: m.image_size,
                    });
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
                app.load_text();
            }
            let ready = matches!(app.text, TextState::Ready { .. });
            if ui
                .add_enabled(ready, egui::Button::new("Free T5"))
                .on_hover_text("release the encoder's memory; prompts need it loaded again")
                .clicked()
            {
                app.release_text();
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

fn condition_panel(app: &mut StudioApp, ui: &mut egui::Ui) {
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

fn sampler_panel(app: &mut StudioApp, ui: &mut egui::Ui) {
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
            app.settings.sampler.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(0);
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
            app.reset_sampler();
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

fn axis_combo(ui: &mut egui::Ui, id: &str, axis: &mut Axis) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(axis.name())
        .show_ui(ui, |ui| {
            for a in Axis::ALL {
                ui.selectable_value(axis, a, a.name());
            }
        });
}

fn grid_panel(app: &mut StudioApp, ui: &mut egui::Ui) {
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
        app.generate_grid();
    }
}

/// The current run: cells in a grid (with axis labels for an X/Y grid).
fn run_view(app: &mut StudioApp, ui: &mut egui::Ui) {
    let Some(view) = &app.view else {
        ui.centered_and_justified(|ui| {
            let text = app.info().is_some_and(|i| i.model_type == ModelType::T2i);
            ui.weak(if text {
                "Write a prompt and press Generate (Ctrl+Enter)."
            } else {
                "Pick a class and press Generate (Ctrl+Enter)."
            });
        });
        return;
    };
    let Some(info) = app.info().cloned() else {
        return;
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
        app.resample_from(cell, pos);
    }
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

fn draw_overlay(
    painter: &egui::Painter,
    rect: Rect,
    grid: usize,
    cell: &crate::app::Cell,
    overlay: Overlay,
) {
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

fn gallery(app: &mut StudioApp, ui: &mut egui::Ui) {
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
        app.message = match app.save_item(i, &path) {
            Ok(()) => format!("saved {}", path.display()),
            Err(e) => format!("could not save: {e}"),
        };
    }
    if let Some(i) = show {
        app.show_gallery_item(i);
    }
}
