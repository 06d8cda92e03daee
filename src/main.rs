//! The `tessera` binary: parse the command line, run it, turn an error into its message and
//! exit status (2 bad input, 130 interrupted, 1 otherwise).

mod cli;
mod progress;

use clap::Parser;

/// The system allocator, recycling the tiled VAE's band buffers (`tessera::recycle`).
#[global_allocator]
static ALLOCATOR: tessera::recycle::Recycler = tessera::recycle::Recycler;

fn main() {
    // Die quietly on a closed pipe (`tessera check ... | head`), as Unix tools do, instead of
    // panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    if let Err(err) = cli::run(cli) {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}
