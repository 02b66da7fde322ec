//! `llamagen-studio`: the desktop studio.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use llamagen_studio::StudioApp;
use llamagen_studio::app::Launch;
use llamagen_studio::settings::RecentModel;
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
/// Starts on the last model (the bundled demo model the first time); open official checkpoints
/// (`c2i_L_384.pt` + `vq_ds16_c2i.pt`) with --gpt-ckpt and --vq-ckpt, from the Model panel, or
/// by dropping them on the window.
#[derive(Debug, Parser)]
#[command(name = "llamagen-studio", version)]
struct Args {
    /// Where the models run.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Generator checkpoint to open: official `.pt`, `.safetensors`, or a project model (with
    /// its card, or a training run folder).
    #[arg(long, value_name = "FILE", requires = "vq_ckpt")]
    gpt_ckpt: Option<PathBuf>,
    /// Tokenizer checkpoint to open with it.
    #[arg(long, value_name = "FILE", requires = "gpt_ckpt")]
    vq_ckpt: Option<PathBuf>,
    /// Image side in pixels, when the generator's file name does not say it (`…_384.pt`).
    #[arg(long, value_name = "N", requires = "gpt_ckpt",
          value_parser = clap::value_parser!(u32).range(1..))]
    image_size: Option<u32>,
    /// FLAN-T5 folder for a text-conditional model (config.json, weights, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    t5: Option<PathBuf>,
}

/// A path given on the command line that cannot be what it should be.
fn check_path(path: &Path, flag: &str, dir: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) => Err(format!("{flag} {}: {e}", path.display())),
        Ok(m) if dir && !m.is_dir() => Err(format!("{flag} {}: not a folder", path.display())),
        Ok(m) if m.is_dir() || dir => Ok(()),
        Ok(_) => check_signature(path, flag),
    }
}

/// Refuses a file that is neither a PyTorch checkpoint (a zip archive, or the older pickle
/// format) nor safetensors, from its first bytes: the model itself loads in the window.
fn check_signature(path: &Path, flag: &str) -> Result<(), String> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let head = &head[..n];
    let zip = head.starts_with(b"PK\x03\x04");
    let pickle = head.first() == Some(&0x80);
    // safetensors: a little-endian header length, then the JSON header.
    let safetensors = head.len() == 9 && head[8] == b'{';
    if zip || pickle || safetensors {
        Ok(())
    } else {
        Err(format!(
            "{flag} {}: not a checkpoint (neither a PyTorch .pt file nor safetensors)",
            path.display()
        ))
    }
}

/// The model and T5 folder the command line names, checked before any window opens.
fn launch(args: &Args) -> Result<Launch, String> {
    let model = match (&args.gpt_ckpt, &args.vq_ckpt) {
        (Some(gpt), Some(vq)) => {
            check_path(gpt, "--gpt-ckpt", false)?;
            check_path(vq, "--vq-ckpt", false)?;
            Some(RecentModel {
                gpt: std::path::absolute(gpt).unwrap_or_else(|_| gpt.clone()),
                vq: std::path::absolute(vq).unwrap_or_else(|_| vq.clone()),
                image_size: args.image_size.map(|n| n as usize),
            })
        }
        _ => None,
    };
    if let Some(dir) = &args.t5 {
        check_path(dir, "--t5", true)?;
    }
    Ok(Launch {
        model,
        t5: args
            .t5
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone())),
    })
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
    // SAFETY: first thing in main, before any thread starts.
    unsafe { llamagen::backend::quiet_display_probe() };
    let args = Args::parse();
    let launch = match launch(&args) {
        Ok(l) => l,
        Err(e) => {
            let hint = if e.starts_with("--t5") {
                "--t5 takes the FLAN-T5 folder (config.json, the weights, tokenizer.json)"
            } else {
                "give an existing generator and tokenizer checkpoint (official .pt or \
                 .safetensors), e.g. --gpt-ckpt c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt"
            };
            eprintln!("error: {e}\nhint: {hint}");
            return ExitCode::from(2);
        }
    };
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
        Box::new(move |cc| Ok(Box::new(StudioApp::launch(cc, compute, launch)))),
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
