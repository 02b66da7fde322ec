//! Ctrl-C (or SIGTERM) during a long training run: the first asks the run to stop after the
//! step it is in and to save a checkpoint there, so that `--resume` goes on from that very
//! step; a second quits at once (the last checkpoint, written atomically, still loads).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_CODE: u8 = 130;

/// A run stopped on request after saving its state: not a failure of the command's input, but
/// the requested work is not all done, so the process still exits non-zero.
#[derive(Debug)]
pub struct Stopped {
    pub step: u64,
    pub total: u64,
    pub saved: std::path::PathBuf,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped at step {} of {}; saved {}",
            self.step,
            self.total,
            self.saved.display()
        )
    }
}

impl std::error::Error for Stopped {}

/// Takes over Ctrl-C / SIGTERM for the rest of the process (once). When the handler cannot be
/// installed, the signals keep their default effect (the process ends at once, as without
/// this), and that is said.
pub fn install() {
    INSTALL.call_once(|| {
        let result = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopped at once; the last saved checkpoint is kept");
                std::process::exit(EXIT_CODE.into());
            }
            eprintln!(
                "\nstopping after this step and saving a checkpoint there \
                 (Ctrl-C again to quit at once, losing the steps since the last save)"
            );
        });
        if let Err(e) = result {
            eprintln!("note: Ctrl-C will end the run without saving ({e})");
        }
    });
}

/// Whether a stop has been asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
