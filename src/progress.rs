//! The terminal side of long work: progress bars drawn from the library's observer events, and
//! Ctrl-C (and SIGTERM, as a cluster sends before preempting a job) turned into the library's
//! interrupt request.
//!
//! The first Ctrl-C asks the work to stop at the next UNet evaluation or VAE tile; nothing
//! partial is written because outputs are only ever written whole. A second Ctrl-C exits.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;
use tessera::Observer;

/// Install the Ctrl-C handler.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if tessera::interrupt::request() {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current step (Ctrl-C again to quit now)");
    });
}

/// Notes on stderr and one progress bar per task.
#[derive(Default)]
pub struct Terminal {
    bar: Mutex<Option<ProgressBar>>,
}

impl Observer for Terminal {
    fn note(&self, message: &str) {
        // A hidden bar (stderr not a terminal) would swallow the line.
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) if !bar.is_hidden() => bar.println(message),
            _ => eprintln!("{message}"),
        }
    }

    fn begin(&self, what: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn status(&self, message: &str) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            bar.set_message(message.to_string());
        }
    }

    fn advance(&self) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            bar.inc(1);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().ok().and_then(|mut b| b.take()) {
            bar.finish_and_clear();
        }
    }
}
