//! The studio driven through its widgets (egui_kittest, by label), on the bundled demo model
//! and the CPU backend.

use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use llamagen_studio::StudioApp;
use llamagen_studio::app::RunStatus;
use llamagen_studio::explore::Axis;
use llamagen_studio::settings::Settings;
use llamagen_studio::worker::Compute;

const WAIT: Duration = Duration::from_secs(60);

/// A save folder of the test's own under the target folder, emptied (never the person's
/// pictures folder).
fn save_dir() -> std::path::PathBuf {
    let name = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("studio-saved")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn studio(mut settings: Settings) -> Harness<'static, StudioApp> {
    settings.save_dir = save_dir();
    let mut h = Harness::builder()
        .with_size([1280.0, 820.0])
        .with_max_steps(10_000)
        .build_eframe(move |cc| {
            StudioApp::with_settings(cc.egui_ctx.clone(), settings, Compute::Cpu, false)
        });
    assert!(
        h.state_mut().poll_until(WAIT, |a| a.info().is_some()),
        "the demo model did not load: {}",
        h.state().message
    );
    h.step();
    h
}

/// Runs frames until `done` holds (the worker's events arrive between frames).
fn step_until(h: &mut Harness<'_, StudioApp>, done: impl Fn(&StudioApp) -> bool) {
    let end = Instant::now() + WAIT;
    while !done(h.state()) {
        assert!(
            Instant::now() < end,
            "timed out; message: {}",
            h.state().message
        );
        h.state_mut()
            .poll_until(Duration::from_millis(20), |a| done(a));
        h.step();
    }
}

fn finished(a: &StudioApp) -> bool {
    a.view
        .as_ref()
        .is_some_and(|v| matches!(v.status, RunStatus::Done { .. }))
}

/// Focuses a text field (by its label) and types into it.
fn type_into(h: &mut Harness<'_, StudioApp>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label(label).type_text(text);
    h.step();
}

/// Generates one image with the current settings; the gallery then holds one more.
fn generate_one(h: &mut Harness<'_, StudioApp>) {
    let before = h.state().gallery.len();
    h.state_mut().settings.num_images = 1;
    h.get_by_label("Generate").click();
    h.step();
    step_until(h, finished);
    assert_eq!(h.state().gallery.len(), before + 1);
}

fn class_id(h: &Harness<'_, StudioApp>, name: &str) -> usize {
    h.state()
        .info()
        .unwrap()
        .class_names
        .iter()
        .position(|n| n == name)
        .unwrap()
}

#[test]
fn pick_a_class_move_a_slider_generate_and_see_the_gallery_grow() {
    let mut h = studio(Settings {
        num_images: 2,
        ..Settings::default()
    });
    let star = class_id(&h, "star");
    // The first class is picked when a model loads; remove it with its chip.
    let first = h.state().class_name(h.state().settings.classes[0]);
    h.get_by_label(&format!("× {first}")).click();
    h.step();
    assert!(h.state().settings.classes.is_empty());

    type_into(&mut h, "Class search", "sta");
    // Only matching classes are listed.
    assert!(h.query_by_label("circle").is_none());
    h.get_by_label("star").click();
    h.step();
    assert_eq!(h.state().settings.classes, vec![star]);

    let before = h.state().settings.sampler.cfg_scale;
    h.get_by_role_and_label(Role::Slider, "CFG scale").focus();
    h.step();
    h.key_press(egui::Key::ArrowRight);
    h.step();
    let after = h.state().settings.sampler.cfg_scale;
    assert!(
        after > before,
        "the CFG slider did not move: {before} → {after}"
    );

    // Ctrl+Enter generates.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    h.step();
    assert!(h.state().is_running() || finished(h.state()));
    step_until(&mut h, finished);
    h.step();

    let jobs = &h.state().sent_jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].requests.len(), 2);
    for r in &jobs[0].requests {
        assert_eq!(
            r.condition,
            llamagen::generate::RequestCondition::Class(star)
        );
        assert_eq!(r.params.cfg_scale, after);
    }
    let gallery = &h.state().gallery;
    assert_eq!(gallery.len(), 2);
    assert!(gallery.iter().all(|g| g.record.class == Some(star)));
    // The two images have different seeds, so they differ.
    assert_ne!(gallery[0].record.params.seed, gallery[1].record.params.seed);
    assert!(h.query_by_label_contains("done in").is_some());

    // Both were written to the save folder, each a PNG with its own parameters.
    let dir = h.state().settings.save_dir.clone();
    assert!(
        h.state().message.contains("saved in"),
        "{}",
        h.state().message
    );
    for (i, g) in gallery.iter().enumerate() {
        let path = g.saved.clone().expect("saved");
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            path.starts_with(&dir)
                && name == format!("{i:04}-{star}-seed{}.png", g.record.params.seed),
            "{}",
            path.display()
        );
        let record = llamagen::image_io::read_png_record(&path).unwrap();
        assert_eq!(record.samples[0].tokens, g.record.tokens);
    }
}

/// A save folder that cannot be made: the images stay in the gallery and the message says
/// they were not saved; with saving switched off nothing is written.
#[test]
fn an_unwritable_save_folder_loses_nothing_and_saving_can_be_switched_off() {
    let mut h = studio(Settings {
        num_images: 1,
        ..Settings::default()
    });
    let dir = h.state().settings.save_dir.clone();
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::write(&dir, b"a file where the folder should be").unwrap();
    generate_one(&mut h);
    let message = h.state().message.clone();
    assert!(message.contains("NOT saved"), "{message}");
    assert_eq!(h.state().gallery.len(), 1);
    assert!(h.state().gallery[0].saved.is_none());
    std::fs::remove_file(&dir).unwrap();

    // The gallery's panel grew with its first image: let the layout settle before clicking.
    h.run();
    h.get_by_label("Save every image in").click();
    h.step();
    assert!(!h.state().settings.save_images);
    generate_one(&mut h);
    assert_eq!(h.state().gallery.len(), 2);
    assert!(!dir.exists());
    assert!(
        !h.state().message.contains("saved"),
        "{}",
        h.state().message
    );
}

#[test]
fn cancel_stops_a_run_the_ui_keeps_answering_and_the_worker_is_reusable() {
    let mut h = studio(Settings {
        num_images: 16,
        decode_every: 8,
        ..Settings::default()
    });
    // Every class, 16 images each: a batch of 160 that takes a while on the CPU.
    let n = h.state().info().unwrap().class_names.len();
    h.state_mut().settings.classes = (0..n).collect();
    h.get_by_label("Generate").click();
    h.step();

    // Frames keep coming while the worker generates: the progress moves between frames.
    let mut seen = Vec::new();
    let end = Instant::now() + WAIT;
    while seen.len() < 4 {
        assert!(Instant::now() < end, "no progress: {}", h.state().message);
        h.state_mut()
            .poll_until(Duration::from_millis(10), |_| false);
        h.step();
        let v = h.state().view.as_ref().unwrap();
        assert!(v.is_running(), "the run ended before it could be cancelled");
        if seen.last() != Some(&v.done) {
            seen.push(v.done);
        }
    }
    assert!(
        h.query_by_label_contains("tokens/s").is_some(),
        "no progress text"
    );

    h.key_press(egui::Key::Escape);
    h.step();
    step_until(&mut h, |a| {
        a.view
            .as_ref()
            .is_some_and(|v| v.status == RunStatus::Cancelled)
    });
    let v = h.state().view.as_ref().unwrap();
    assert!(v.done < v.total, "cancelled at {}/{}", v.done, v.total);
    assert!(h.state().gallery.is_empty(), "a cancelled run adds nothing");

    // The same worker runs the next job to the end.
    h.state_mut().settings.classes = vec![0];
    generate_one(&mut h);
}

/// A run of more images than the batch size goes batch after batch in the one job: every
/// cell fills in, the progress counts all of them, and the images are the ones a single batch
/// makes (every sample draws from its own seed).
#[test]
fn a_run_larger_than_the_batch_goes_batch_after_batch_with_the_same_images() {
    let mut h = studio(Settings {
        num_images: 5,
        batch_size: 2,
        seed_locked: true,
        ..Settings::default()
    });
    h.state_mut().settings.sampler.seed = 77;
    h.get_by_label("Generate").click();
    h.step();
    step_until(&mut h, finished);
    let v = h.state().view.as_ref().unwrap();
    assert_eq!(v.cells.len(), 5);
    assert_eq!((v.done, v.total), (v.total, 5 * 64));
    let batched: Vec<Vec<u32>> = h
        .state()
        .gallery
        .iter()
        .map(|g| g.record.tokens.clone())
        .collect();
    assert_eq!(batched.len(), 5);
    assert!(batched.iter().all(|t| t.len() == 64));

    h.state_mut().settings.batch_size = 16;
    h.get_by_label("Generate").click();
    h.step();
    step_until(&mut h, finished);
    let together: Vec<Vec<u32>> = h.state().gallery[5..]
        .iter()
        .map(|g| g.record.tokens.clone())
        .collect();
    assert_eq!(batched, together);
    assert_eq!(h.state().sent_jobs.len(), 2);
}

#[test]
fn a_saved_png_restores_its_parameters_when_dropped() {
    let mut h = studio(Settings {
        num_images: 1,
        seed_locked: true,
        ..Settings::default()
    });
    let heart = class_id(&h, "heart");
    h.state_mut().settings.classes = vec![heart];
    h.state_mut().settings.sampler.seed = 4242;
    h.state_mut().settings.sampler.temperature = 0.85;
    h.get_by_label("Generate").click();
    h.step();
    step_until(&mut h, finished);

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("heart.png");
    h.state_mut().save_item(0, &png).unwrap();
    let saved = h.state().gallery[0].record.clone();

    // Different settings, then the PNG dropped on the window brings them back.
    h.state_mut().settings.classes = vec![0];
    h.state_mut().settings.sampler.temperature = 1.0;
    h.state_mut().settings.sampler.seed = 1;
    h.input_mut().dropped_files.push(egui::DroppedFile {
        path: Some(png.clone()),
        ..Default::default()
    });
    h.step();
    let s = &h.state().settings;
    assert_eq!(s.sampler, saved.params);
    assert_eq!(s.sampler.seed, 4242);
    assert_eq!(s.classes, vec![heart]);
    assert!(
        h.state().message.contains("restored"),
        "{}",
        h.state().message
    );

    // Generating again with the restored parameters gives the same tokens.
    h.get_by_label("Generate").click();
    h.step();
    step_until(&mut h, finished);
    assert_eq!(h.state().gallery[1].record.tokens, saved.tokens);
}

#[test]
fn a_two_by_two_grid_is_one_batch_of_four_with_the_right_parameters() {
    let mut h = studio(Settings::default());
    // The section sits below the fold of the controls panel: scroll to it, then open it.
    h.get_by_label("X/Y grid").scroll_to_me();
    h.run();
    h.get_by_label("X/Y grid").click();
    h.run();
    {
        let xy = &mut h.state_mut().settings.xy;
        xy.x = Axis::CfgScale;
        xy.y = Axis::Temperature;
    }
    type_into(&mut h, "X values", "1.5, 3");
    type_into(&mut h, "Y values", "0.5, 1.0");
    assert_eq!(h.state().settings.xy.x_values, "1.5, 3");
    assert_eq!(h.state().settings.xy.y_values, "0.5, 1.0");

    h.get_by_role_and_label(Role::Button, "Run grid")
        .scroll_to_me();
    h.run();
    h.get_by_role_and_label(Role::Button, "Run grid").click();
    h.step();
    step_until(&mut h, finished);

    let jobs = &h.state().sent_jobs;
    assert_eq!(jobs.len(), 1, "the grid must be one batch");
    let got: Vec<(f32, f32)> = jobs[0]
        .requests
        .iter()
        .map(|r| (r.params.cfg_scale, r.params.temperature))
        .collect();
    assert_eq!(got, vec![(1.5, 0.5), (3.0, 0.5), (1.5, 1.0), (3.0, 1.0)]);
    let seeds: Vec<u64> = jobs[0].requests.iter().map(|r| r.params.seed).collect();
    assert!(
        seeds.iter().all(|&s| s == seeds[0]),
        "one seed across the grid"
    );
    let v = h.state().view.as_ref().unwrap();
    assert_eq!(v.cells.len(), 4);
    assert!(v.cells.iter().all(|c| c.image.is_some()));
    assert!(
        h.query_all_by_label_contains("CFG scale 3")
            .next()
            .is_some(),
        "axis labels"
    );
}

#[test]
fn a_model_that_fails_to_load_shows_an_error_and_the_studio_goes_on() {
    let mut h = studio(Settings::default());
    type_into(&mut h, "GPT", "/no/such/gpt.pt");
    type_into(&mut h, "VQ ", "/no/such/vq.pt");
    h.get_by_label("Open").click();
    h.step();
    step_until(&mut h, |a| {
        matches!(a.model, llamagen_studio::app::ModelState::Failed(_))
    });
    h.step();
    assert!(
        h.state().message.contains("could not open"),
        "{}",
        h.state().message
    );
    assert!(
        h.query_all_by_label_contains("could not open")
            .next()
            .is_some()
    );

    h.get_by_label("Demo model").click();
    h.step();
    step_until(&mut h, |a| a.info().is_some());
    generate_one(&mut h);
}

#[test]
fn clicking_a_token_keeps_the_prefix_and_rerolls_the_rest() {
    let mut h = studio(Settings {
        num_images: 1,
        ..Settings::default()
    });
    h.get_by_label("Generate").click();
    h.step();
    step_until(&mut h, finished);
    h.step();
    let first = h.state().gallery[0].record.tokens.clone();
    let grid = h.state().info().unwrap().grid_size;
    // Click the first token of the middle row of the finished image.
    let rect = h.state().cell_rects[0];
    let at = rect.min + egui::vec2(0.5, 0.5 + (grid / 2) as f32) * (rect.width() / grid as f32);
    h.hover_at(at);
    h.step();
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos: at,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
    }
    h.step();
    assert_eq!(h.state().sent_jobs.len(), 2, "the click started a re-roll");
    step_until(&mut h, finished);
    let job = h.state().sent_jobs.last().unwrap();
    assert_eq!(job.requests[0].prefix, first[..grid * grid / 2].to_vec());
    let second = &h.state().gallery[1].record.tokens;
    assert_eq!(second[..grid * grid / 2], first[..grid * grid / 2]);
    assert_eq!(second.len(), first.len());
}

mod text_to_image {
    use super::*;
    use llamagen::bundle::ModelCard;
    use llamagen::checkpoint::{GptHints, StateDict, WeightsChoice, state_dict, write_safetensors};
    use llamagen::config::VqConfig;
    use llamagen::vq::VqModel;
    use llamagen_studio::app::TextState;
    use std::path::{Path, PathBuf};

    fn reference_dir() -> PathBuf {
        std::env::var_os("LLAMAGEN_REFERENCE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/reference")
            })
    }

    /// A text-conditional project model in `dir` (the reference tiny t2i generator, a random
    /// tokenizer with its vocabulary as codebook, a card) and a T5 folder (the reference tiny
    /// encoder with a small tokenizer.json). Returns (generator file, tokenizer file, T5 folder).
    fn t2i_model(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let reference = reference_dir();
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(reference.join("manifest.json")).unwrap(),
        )
        .unwrap();
        let cfg = &manifest["cases"]["gpt_t2i_tiny"]["config"];
        let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let grid = (get("block_size") as f64).sqrt() as usize;
        let gpt = dir.join("gpt.safetensors");
        std::fs::copy(reference.join("gpt_t2i_tiny.safetensors"), &gpt).unwrap();
        let gpt_config = StateDict::open(&gpt, WeightsChoice::Model)
            .unwrap()
            .infer_gpt_config(&GptHints {
                image_size: Some(grid * 4),
                downsample: Some(4),
                gpt_model: None,
                n_head: Some(get("n_head")),
                file_name: None,
            })
            .unwrap();
        let vq_config = VqConfig {
            ch: 32,
            z_channels: 32,
            codebook_size: get("vocab_size"),
            encoder_ch_mult: vec![1, 1, 2],
            decoder_ch_mult: vec![1, 1, 2],
            ..VqConfig::default()
        };
        let device = Default::default();
        let vq_model = VqModel::<llamagen::backend::Cpu>::init(&vq_config, &device).unwrap();
        let vq = dir.join("vq.safetensors");
        write_safetensors(
            &vq,
            &state_dict(&vq_model, &vq_config.state_dict_specs()).unwrap(),
            None,
        )
        .unwrap();
        ModelCard {
            name: "tiny t2i".into(),
            description: "reference tiny t2i generator, random tokenizer".into(),
            gpt_file: "gpt.safetensors".into(),
            gpt_config,
            vq_file: "vq.safetensors".into(),
            vq_config,
            image_size: grid * 4,
            class_names: Vec::new(),
            sampler: Default::default(),
            trained_with: Vec::new(),
            t5_dir: None,
        }
        .write(&dir.join("model.json"))
        .unwrap();
        ModelCard::read(&dir.join("model.json")).expect("the card reads back");
        let t5 = dir.join("flan-t5-tiny");
        std::fs::create_dir_all(&t5).unwrap();
        for entry in std::fs::read_dir(reference.join("t5_tiny_hf")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), t5.join(entry.file_name())).unwrap();
        }
        llamagen::text::write_word_tokenizer(
            &t5.join("tokenizer.json"),
            &[
                "a",
                "red",
                "blue",
                "star",
                "ring",
                "on",
                "the",
                "background",
            ],
        )
        .unwrap();
        (gpt, vq, t5)
    }

    #[test]
    fn the_prompt_box_comes_alive_with_a_t2i_model_and_its_t5_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (gpt, vq, t5) = t2i_model(dir.path());
        let mut h = studio(Settings {
            num_images: 1,
            ..Settings::default()
        });
        // The demo model is class-conditional: the prompt box is greyed out, with the reason.
        assert!(
            h.query_by_label_contains("open a text-to-image model")
                .is_some()
        );

        type_into(&mut h, "GPT", &gpt.display().to_string());
        type_into(&mut h, "VQ ", &vq.display().to_string());
        h.get_by_label("Open").click();
        h.step();
        step_until(&mut h, |a| {
            a.info()
                .is_some_and(|i| i.model_type == llamagen::config::ModelType::T2i)
        });
        h.step();
        // Without T5 the prompt box says what it needs, and Generate explains.
        assert!(
            h.query_by_label_contains("load the model's T5 encoder")
                .is_some()
        );

        type_into(&mut h, "T5 folder", &t5.display().to_string());
        h.get_by_label("Load T5").click();
        h.step();
        step_until(&mut h, |a| matches!(a.text, TextState::Ready { .. }));
        h.step();
        assert!(
            h.query_by_label_contains("load the model's T5 encoder")
                .is_none()
        );

        type_into(&mut h, "Prompt", "a red star\na blue ring");
        assert_eq!(h.state().prompts(), vec!["a red star", "a blue ring"]);
        h.get_by_label("Generate").click();
        h.step();
        step_until(&mut h, finished);

        let job = &h.state().sent_jobs[0];
        assert_eq!(
            job.prompts,
            vec![
                Some("a red star".to_string()),
                Some("a blue ring".to_string())
            ]
        );
        // The worker turned each prompt into caption features before generating.
        let gallery = &h.state().gallery;
        assert_eq!(gallery.len(), 2);
        assert_eq!(gallery[0].record.prompt.as_deref(), Some("a red star"));
        assert_eq!(gallery[1].record.prompt.as_deref(), Some("a blue ring"));

        // A grid over prompts ('|'-separated) is one batch too.
        {
            let s = &mut h.state_mut().settings;
            s.xy.x = Axis::Prompt;
            s.xy.x_values = "a red star | a blue ring, on the background".into();
            s.xy.y = Axis::CfgScale;
            s.xy.y_values = "1, 4".into();
        }
        h.state_mut().generate_grid();
        h.step();
        step_until(&mut h, finished);
        let job = h.state().sent_jobs.last().unwrap();
        assert_eq!(job.requests.len(), 4);
        assert_eq!(
            job.prompts[1].as_deref(),
            Some("a blue ring, on the background")
        );
        assert_eq!(job.requests[3].params.cfg_scale, 4.0);
    }

    /// A project model whose card names its text encoder (as the bundled text demo's does)
    /// comes with the encoder loaded: the prompt box is live at once.
    #[test]
    fn a_card_naming_its_text_encoder_loads_it_with_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let (gpt, vq, t5) = t2i_model(dir.path());
        let card_path = dir.path().join("model.json");
        let mut card = ModelCard::read(&card_path).unwrap();
        card.t5_dir = Some(t5.file_name().unwrap().to_string_lossy().into_owned());
        card.write(&card_path).unwrap();
        let mut h = studio(Settings::default());
        type_into(&mut h, "GPT", &gpt.display().to_string());
        type_into(&mut h, "VQ ", &vq.display().to_string());
        h.get_by_label("Open").click();
        h.step();
        step_until(&mut h, |a| matches!(a.text, TextState::Ready { .. }));
        h.step();
        assert_eq!(
            std::path::Path::new(h.state().settings.t5_dir.trim()),
            t5.as_path()
        );
        assert!(
            h.query_by_label_contains("load the model's T5 encoder")
                .is_none()
        );
    }
}
