//! `starlight`: the command-line tool. One module per subcommand under
//! [`cmd`]; `main` only parses arguments, sets up logging and runs the
//! chosen command.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod cmd;

/// Starlight: fast container provisioning on the edge and over the WAN.
#[derive(Debug, Parser)]
#[command(
    name = "starlight",
    version,
    about,
    after_long_help = "\
Every command that talks to starlightd uses its API socket (--api, default
/run/starlight/starlightd.sock); `fetch`, `trace` and `ranks` talk to the
proxy directly; `convert` to the registries. `starlight COMMAND --help`
describes each.

Examples:
  starlight convert --plain-http 127.0.0.1:5000/app:v1 127.0.0.1:5000/app:v1-sl
  starlight pull 127.0.0.1:5000/app:v1-sl && ctr run --snapshotter starlight \\
      127.0.0.1:5000/app:v1-sl app1
  starlight images
  starlight status
  starlight gc --dry-run"
)]
struct Cli {
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an image in a registry to the Starlight seekable layer format.
    #[command(after_long_help = "\
Examples:
  starlight convert --plain-http 127.0.0.1:5000/redis:7 127.0.0.1:5000/redis:7-starlight
  starlight convert --platform linux/arm64 --compression zstd docker.io/library/nginx:1.27 \\
      registry.example/nginx:1.27-starlight
  starlight convert --notify proxy.example:8443 --ca ca.pem --token-file token SRC DST")]
    Convert(cmd::convert::Args),
    /// Fetch a delta bundle from a proxy, verify it and write it to a file.
    #[command(after_long_help = "\
Exit codes: 3 token refused, 4 certificate not trusted, 5 truncated,
6 verification failed, 7 other proxy error.

Examples:
  starlight fetch --proxy localhost:8443 --ca ca.pem --token-file token \\
      127.0.0.1:5000/app:v2 --from 127.0.0.1:5000/app:v1 -o bundle.bin")]
    Fetch(cmd::fetch::Args),
    /// Pull an image through starlightd (registered in containerd at once).
    #[command(after_long_help = "\
Examples:
  starlight pull 127.0.0.1:5000/app:v1-starlight
  starlight pull --wait --from 127.0.0.1:5000/app:v1 127.0.0.1:5000/app:v2
  starlight pull --trace app:v1 && ctr run --snapshotter starlight app:v1 c1")]
    Pull(cmd::pull::Args),
    /// List the images starlightd holds.
    #[command(after_long_help = "\
Examples:
  starlight images
  starlight images --api /run/starlight/starlightd.sock")]
    Images(cmd::images::Args),
    /// Remove an image from starlightd and free its unused contents.
    #[command(after_long_help = "\
Removes the image from containerd too; contents another image names stay.

Examples:
  starlight rm 127.0.0.1:5000/app:v1
  starlight rm sha256:3f2a...")]
    Rm(cmd::rm::Args),
    /// Pull an image into containerd through starlightd's remote snapshots
    /// (containerd-client pull with the image labels; no layer download).
    #[command(after_long_help = "\
Reads the manifest and config from the registry, prepares each layer with the
labels containerd's CRI plugin sets (starlightd answers them from one bundle),
and writes the image record with its GC labels. A plain image is refused: pull
it with `ctr images pull --snapshotter starlight`.

Examples:
  starlight rpull --plain-http 127.0.0.1:5000/app:v1
  printf '%s\\n' \"$REGISTRY_PASSWORD\" | starlight rpull --user ci registry.example/app:v1
  ctr run --snapshotter starlight 127.0.0.1:5000/app:v1 app1")]
    Rpull(cmd::rpull::Args),
    /// Collect startup traces of an image and upload them to the proxy.
    #[command(after_long_help = "\
Examples:
  starlight trace --ready 'READY' 127.0.0.1:5000/app:v1
  starlight trace --proxy localhost:8443 --ca ca.pem 127.0.0.1:5000/app:v1")]
    Trace(cmd::trace::Args),
    /// Show how the proxy orders an image's files (average rank, hits).
    #[command(after_long_help = "\
Examples:
  starlight ranks 127.0.0.1:5000/app:v1
  starlight ranks --proxy proxy.example:8443 --ca ca.pem app:v1")]
    Ranks(cmd::ranks::Args),
    /// Evict unused images now (or show what would go with --dry-run).
    Gc(cmd::gc::Args),
    /// Show starlightd's version, proxy reachability, store use and images.
    Status(cmd::status::Args),
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
            Command::Gc(args) => cmd::gc::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
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
