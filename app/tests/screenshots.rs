//! The studio drawn by wgpu (Mesa's lavapipe where there is no GPU): the live mosaic comes from
//! the WGSL shader, or from the CPU on a device whose fragment shaders read no storage buffers.
//! Renders mid-generation and finished are written to `target/studio-screenshots/` for people
//! to look at.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use egui_kittest::wgpu::WgpuTestRenderer;
use egui_wgpu::wgpu;
use llamagen_studio::StudioApp;
use llamagen_studio::app::RunStatus;
use llamagen_studio::settings::Settings;
use llamagen_studio::worker::Compute;

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/studio-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mean brightness and number of distinct colours of a square region of a render.
fn region_stats(img: &image::RgbaImage, x0: u32, y0: u32, w: u32, h: u32) -> (f64, usize) {
    let mut sum = 0f64;
    let mut colours = std::collections::HashSet::new();
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let p = img.get_pixel(x, y);
            sum += (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0;
            colours.insert([p[0], p[1], p[2]]);
        }
    }
    (sum / (w * h) as f64, colours.len())
}

#[test]
fn the_live_mosaic_is_drawn_by_the_shader_and_renders_are_saved() {
    let h = studio(WgpuTestRenderer::new());
    assert!(
        h.state().gpu_preview,
        "the wgpu renderer installs the mosaic pipeline"
    );
    generate_and_render(h, "kittest");
}

/// A device at WebGL2-level limits, as egui asks of wgpu's GL backend: fragment shaders read no
/// storage buffers there.
fn webgl2_level_renderer() -> WgpuTestRenderer {
    let egui_wgpu::WgpuSetup::CreateNew(mut setup) = egui_kittest::wgpu::default_wgpu_setup()
    else {
        panic!("egui_kittest's default set-up makes its own device");
    };
    setup.device_descriptor = Arc::new(|_adapter| wgpu::DeviceDescriptor {
        label: Some("WebGL2-level device"),
        required_limits: wgpu::Limits {
            max_texture_dimension_2d: 8192,
            ..wgpu::Limits::downlevel_webgl2_defaults()
        },
        ..Default::default()
    });
    WgpuTestRenderer::from_setup(egui_wgpu::WgpuSetup::CreateNew(setup))
}

#[test]
fn without_storage_buffers_the_studio_composes_the_mosaic_on_the_cpu() {
    let h = studio(webgl2_level_renderer());
    assert!(
        !h.state().gpu_preview,
        "a device without fragment storage buffers gets no mosaic pipeline"
    );
    generate_and_render(h, "kittest-cpu-mosaic");
}

/// The studio, 16 images a run, drawn by wgpu on `renderer`'s device.
fn studio(renderer: WgpuTestRenderer) -> Harness<'static, StudioApp> {
    let save_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("studio-saved-screenshots")
        .join(std::thread::current().name().unwrap_or("main"));
    let _ = std::fs::remove_dir_all(&save_dir);
    let settings = Settings {
        num_images: 16,
        // No true decode while running: what shows is the mosaic alone.
        decode_every: 0,
        save_dir,
        ..Settings::default()
    };
    Harness::builder()
        .with_size([1280.0, 820.0])
        .with_max_steps(10_000)
        .renderer(renderer)
        .build_eframe(move |cc| {
            let mut app = StudioApp::new(cc, Compute::Cpu);
            app.settings = settings;
            app
        })
}

/// Generates one image of every class: renders the first cell half-way (generated rows show
/// patches, the rest is dark) and finished, saved as `<name>-generating.png` and
/// `<name>-finished.png`.
fn generate_and_render(mut h: Harness<'static, StudioApp>, name: &str) {
    assert!(
        h.state_mut()
            .poll_until(Duration::from_secs(120), |a| a.info().is_some())
    );
    let grid = h.state().info().unwrap().grid_size;
    let n = h.state().info().unwrap().class_names.len();
    h.state_mut().settings.classes = (0..n).collect();
    h.step();
    h.get_by_label("Generate").click();
    h.step();

    // Wait until about half of the first image's tokens are there, then render that frame.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < end);
        h.state_mut()
            .poll_until(Duration::from_millis(10), |_| false);
        h.step();
        let v = h.state().view.as_ref().unwrap();
        assert!(
            v.is_running(),
            "the run finished before it could be drawn mid-way"
        );
        if v.cells[0].tokens.len() >= grid * grid / 2 {
            break;
        }
    }
    let done = h.state().view.as_ref().unwrap().cells[0].tokens.len();
    let live = h.render().expect("render");
    live.save(out_dir().join(format!("{name}-generating.png")))
        .unwrap();

    // In the first cell: rows already generated show patches (many colours); the last row,
    // not generated yet, is flat dark.
    let rect = h.state().cell_rects[0];
    let ppp = h.ctx.pixels_per_point();
    let step = rect.width() * ppp / grid as f32;
    let (x0, y0) = ((rect.min.x * ppp) as u32, (rect.min.y * ppp) as u32);
    let full_rows = (done / grid) as u32;
    assert!(full_rows >= 1 && full_rows < grid as u32, "{done} tokens");
    let band = (step as u32 * full_rows).max(1);
    let (_, top_colours) = region_stats(&live, x0, y0, (step * grid as f32) as u32, band);
    let last_y = y0 + (step * (grid - 1) as f32) as u32 + 1;
    let (bottom_mean, bottom_colours) = region_stats(
        &live,
        x0 + 1,
        last_y,
        (step * grid as f32) as u32 - 2,
        step as u32 - 2,
    );
    assert!(
        top_colours > 20,
        "generated rows show patches ({top_colours} colours)"
    );
    assert!(
        bottom_colours <= 2 && bottom_mean < 40.0,
        "the ungenerated row is dark ({bottom_mean:.1}, {bottom_colours} colours)"
    );

    // Finish, and render the results.
    let end = Instant::now() + Duration::from_secs(300);
    while !matches!(
        h.state().view.as_ref().unwrap().status,
        RunStatus::Done { .. }
    ) {
        assert!(Instant::now() < end);
        h.state_mut()
            .poll_until(Duration::from_millis(50), |_| false);
        h.step();
    }
    h.step();
    let finished = h.render().expect("render");
    finished
        .save(out_dir().join(format!("{name}-finished.png")))
        .unwrap();
    let (_, colours) = region_stats(
        &finished,
        x0,
        y0,
        (step * grid as f32) as u32,
        (step * grid as f32) as u32,
    );
    assert!(colours > 20, "a finished image is drawn");
}

/// On a 1280×800 screen, after a generation, the image and the whole sampler are on screen at
/// once, with nothing to scroll: the sampler has its own column beside the image. The render is
/// saved as `layout-1280x800.png` for a person to look at.
#[test]
fn at_1280_by_800_the_image_and_the_sampler_show_together() {
    use egui::accesskit::Role;
    let settings = Settings {
        num_images: 1,
        decode_every: 0,
        save_dir: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("studio-layout"),
        ..Settings::default()
    };
    let mut h = Harness::builder()
        .with_size([1280.0, 800.0])
        .with_max_steps(10_000)
        .renderer(WgpuTestRenderer::new())
        .build_eframe(move |cc| {
            let mut app = StudioApp::new(cc, Compute::Cpu);
            app.settings = settings;
            app
        });
    assert!(
        h.state_mut()
            .poll_until(Duration::from_secs(120), |a| a.info().is_some())
    );
    h.state_mut().settings.classes = vec![0];
    h.step();
    h.get_by_label("Generate").click();
    h.step();
    let end = Instant::now() + Duration::from_secs(300);
    while !matches!(
        h.state().view.as_ref().map(|v| &v.status),
        Some(RunStatus::Done { .. })
    ) {
        assert!(Instant::now() < end, "{}", h.state().message);
        h.state_mut()
            .poll_until(Duration::from_millis(50), |_| false);
        h.step();
    }
    h.step();
    h.step();
    let shot = h.render().expect("render");
    shot.save(out_dir().join("layout-1280x800.png")).unwrap();

    let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1280.0, 800.0));
    let image = h.state().cell_rects[0];
    assert!(
        screen.contains_rect(image) && image.width() >= 400.0,
        "the image is whole on screen and large: {image:?}"
    );
    for label in [
        "CFG scale",
        "CFG interval",
        "Temperature",
        "Top-k",
        "Top-p",
        "Images per class",
        "Batch size",
        "Decode every",
    ] {
        let r = h.get_by_role_and_label(Role::Slider, label).rect();
        assert!(
            screen.contains_rect(r) && !r.intersects(image),
            "the sampler's '{label}' is on screen beside the image: {r:?}"
        );
    }
    let generate = h.get_by_label("Generate").rect();
    assert!(screen.contains_rect(generate), "{generate:?}");
}
