//! `starlight`: the command-line tool. One module per subcommand under
//! [`cmd`]; `main` only parses arguments, sets up logging and runs the
//! chosen command.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod cmd;

/// Starlight: fast container provisioning on the edge and over the WAN.
#[derive(Debug, Parser)]
#[command(name = "starlight", version, about)]
struct Cli {
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an image in a registry to the Starlight seekable layer format.
    Convert(cmd::convert::Args),
    /// Fetch a delta bundle from a proxy, verify it and write it to a file.
    Fetch(cmd::fetch::Args),
    /// Pull an image through starlightd (registered in containerd at once).
    Pull(cmd::pull::Args),
    /// List the images starlightd holds.
    Images(cmd::images::Args),
    /// Remove an image from starlightd and free its unused contents.
    Rm(cmd::rm::Args),
    /// Pull an image into containerd through starlightd's remote snapshots
    /// (containerd-client pull with the image labels; no layer download).
    Rpull(cmd::rpull::Args),
    /// Collect startup traces of an image and upload them to the proxy.
    Trace(cmd::trace::Args),
    /// Show how the proxy orders an image's files (average rank, hits).
    Ranks(cmd::ranks::Args),
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Convert(args) => cmd::convert::run(args).await,
            Command::Fetch(args) => cmd::fetch::run(args).await,
            Command::Pull(args) => cmd::pull::run(args).await,
            Command::Images(args) => cmd::images::run(args).await,
            Command::Rm(args) => cmd::rm::run(args).await,
            Command::Rpull(args) => cmd::rpull::run(args).await,
            Command::Trace(args) => cmd::trace::run(args).await,
            Command::Ranks(args) => cmd::ranks::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<cmd::fetch::FetchFailure>() {
                Some(f) => std::process::ExitCode::from(f.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
