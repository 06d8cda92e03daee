//! Progress bars (step/tile counts with ETA) and Ctrl-C handling.
//!
//! The first Ctrl-C asks the render to stop at the next UNet evaluation; nothing partial is
//! written because outputs are only ever written whole (see `output`). A second Ctrl-C exits.

use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Install the Ctrl-C handler (CLI only; the library never touches signals).
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current step (Ctrl-C again to quit now)");
    });
}

/// Err(Interrupted) once the user has pressed Ctrl-C.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// The same check for code that returns candle errors: the interrupt stays typed inside
/// (see [`crate::error::Interrupt`]).
pub fn check_interrupt_candle() -> candle_core::Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err(crate::error::Interrupt.into_candle()),
        false => Ok(()),
    }
}

/// Whether progress bars are drawn (off in tests and library use by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub visible: bool,
}

impl Progress {
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(
            Some(len),
            if self.visible {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar
    }

    pub fn note(&self, msg: impl AsRef<str>) {
        if self.visible {
            eprintln!("{}", msg.as_ref());
        }
    }
}
