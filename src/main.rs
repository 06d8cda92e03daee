use clap::Parser;

fn main() {
    let cli = tessera::cli::Cli::parse();
    if let Err(err) = tessera::cli::run(cli) {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}
