//! `llamagen-studio`: the desktop studio.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use llamagen_studio::StudioApp;
use llamagen_studio::worker::Compute;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// A GPU through wgpu when there is one (shared with the window), the CPU otherwise.
    Auto,
    /// wgpu even on a software adapter (e.g. Mesa's lavapipe: slow, for checking).
    Wgpu,
    /// The CPU (burn-flex).
    Cpu,
}

/// LlamaGen studio: pick a class, move the sliders, watch the image appear token by token.
///
/// Starts on the bundled demo model; open official checkpoints (`c2i_L_384.pt` +
/// `vq_ds16_c2i.pt`) from the Model panel or by dropping them on the window.
#[derive(Debug, Parser)]
#[command(name = "llamagen-studio", version)]
struct Args {
    /// Where the models run.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
}

/// What the models run on, and the wgpu device to give the window when it is shared.
fn choose_compute(arg: BackendArg) -> Result<(Compute, Option<egui_wgpu::WgpuSetup>), String> {
    if arg == BackendArg::Cpu {
        return Ok((Compute::Cpu, None));
    }
    // burn creates its wgpu device (all the adapter's features and limits); the window then
    // draws with that same device, so decoded images never leave the GPU twice.
    match (
        llamagen::backend::default_wgpu_setup(),
        llamagen::backend::wgpu_adapter(),
    ) {
        (Some(setup), Some(adapter)) => {
            if arg == BackendArg::Auto && adapter.software {
                eprintln!(
                    "only a software graphics adapter ({}) was found: the models run on the CPU",
                    adapter.name
                );
                return Ok((Compute::Cpu, None));
            }
            let shared = egui_wgpu::WgpuSetup::Existing(egui_wgpu::WgpuSetupExisting {
                instance: setup.instance.clone(),
                adapter: setup.adapter.clone(),
                device: setup.device.clone(),
                queue: setup.queue.clone(),
            });
            Ok((
                Compute::Wgpu {
                    device: burn::backend::wgpu::WgpuDevice::DefaultDevice,
                    adapter: format!("{}, {}", adapter.name, adapter.api),
                },
                Some(shared),
            ))
        }
        _ if arg == BackendArg::Auto => {
            eprintln!("no GPU adapter was found: the models run on the CPU");
            Ok((Compute::Cpu, None))
        }
        _ => Err("--backend wgpu: no wgpu adapter could be created".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (compute, shared) = match choose_compute(args.backend) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\nhint: --backend auto falls back to the CPU");
            return ExitCode::FAILURE;
        }
    };
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("LlamaGen studio")
            .with_app_id("llamagen-studio")
            .with_inner_size([1280.0, 820.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    if let Some(setup) = shared {
        options.wgpu_options.wgpu_setup = setup;
    }
    let result = eframe::run_native(
        "llamagen-studio",
        options,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, compute)))),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: the studio window could not be opened: {e}\n\
                 hint: it draws with wgpu (Vulkan / Metal / DX12); on Linux without a GPU install \
                 Mesa's software Vulkan driver (Debian: apt install mesa-vulkan-drivers libvulkan1)"
            );
            ExitCode::FAILURE
        }
    }
}
