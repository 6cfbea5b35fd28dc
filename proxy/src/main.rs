//! `starlight-proxy`: indexes images into the directory database, prints
//! their merged tables of contents, and serves delta bundles over QUIC.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use starlight_proxy::config::Config;
use starlight_proxy::db::{Db, ImageRecord, TocEntry};
use starlight_proxy::format::EntryKind;
use starlight_proxy::index::{index_image, TocSummary};
use starlight_proxy::registry::RegistryClient;
use std::io::Write;
use std::path::{Path, PathBuf};

mod serve_cmd;

/// The Starlight proxy.
#[derive(Parser, Debug)]
#[command(
    name = "starlight-proxy",
    version,
    about,
    after_long_help = "\
Settings come from the TOML file given with --config (or
STARLIGHT_PROXY_CONFIG); flags override them. `starlight-proxy COMMAND
--help` describes each command.

Examples:
  starlight-proxy gen-cert --out /etc/starlight --name proxy.example
  starlight-proxy serve --config /etc/starlight/proxy.toml
  starlight-proxy index --plain-http 127.0.0.1:5000/app:v1-starlight
  starlight-proxy toc --summary 127.0.0.1:5000/app:v1-starlight"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Indexes a converted image from the registry into the database.
    #[command(after_long_help = "\
Re-indexing is idempotent; an image not indexed yet is also indexed on its
first bundle request.

Examples:
  starlight-proxy index --plain-http 127.0.0.1:5000/app:v1-starlight
  starlight-proxy index --platform linux/arm64 --db /var/lib/starlight-proxy registry.example/app:v1")]
    Index {
        #[command(flatten)]
        common: Common,
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        plain_http: bool,
        /// Platform to index when IMAGE names an index (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
        /// Image reference, e.g. 127.0.0.1:5000/app:v1.
        image: String,
    },
    /// Prints an indexed image's merged table of contents.
    #[command(after_long_help = "\
Examples:
  starlight-proxy toc 127.0.0.1:5000/app:v1-starlight
  starlight-proxy toc --summary --db /var/lib/starlight-proxy sha256:3f2a...")]
    Toc {
        #[command(flatten)]
        common: Common,
        /// Print the summary instead of one line per entry.
        #[arg(long)]
        summary: bool,
        /// Image reference as indexed, or a manifest digest.
        image: String,
    },
    /// Serves delta bundles over QUIC (see the `[serve]` config section).
    #[command(after_long_help = "\
Examples:
  starlight-proxy serve --config /etc/starlight/proxy.toml
  starlight-proxy serve --listen 0.0.0.0:8443 --registry http://127.0.0.1:5000 --plain-http \\
      --self-signed /tmp/proxy-tls
  STARLIGHT_PROXY_TOKENS=secret starlight-proxy serve --listen [::]:8443 --db /var/lib/starlight-proxy")]
    Serve(Box<serve_cmd::ServeArgs>),
    /// Writes a self-signed certificate and key (cert.pem, key.pem) for demos.
    #[command(after_long_help = "\
Examples:
  starlight-proxy gen-cert --out /tmp/proxy-tls
  starlight-proxy gen-cert --out /etc/starlight --name proxy.example --name 10.0.0.5")]
    GenCert {
        /// Directory to write cert.pem and key.pem to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Names (IP addresses or DNS names) the certificate is valid for.
        #[arg(long = "name", default_values_t = vec!["127.0.0.1".to_string(), "localhost".to_string()])]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// TOML configuration file.
    #[arg(long, env = "STARLIGHT_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Database directory (overrides the config's `db`).
    #[arg(long)]
    db: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> Result<(Config, PathBuf)> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let db = self.db.clone().unwrap_or_else(|| config.db.clone());
        Ok((config, db))
    }
}

fn open_db(path: &Path) -> Result<Db> {
    Db::open(path).with_context(|| format!("cannot open the database {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // The server logs every request at info level; the one-shot commands only warnings.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match cli.command {
        Command::Serve(args) => serve_cmd::run(*args).await?,
        Command::GenCert { out, names } => {
            let (cert, key) = serve_cmd::write_self_signed(&out, &names)?;
            println!(
                "certificate {}\nkey         {}",
                cert.display(),
                key.display()
            );
        }
        Command::Index {
            common,
            plain_http,
            platform,
            image,
        } => {
            let (config, db_path) = common.load()?;
            let reference = config.qualify(&image);
            let db = open_db(&db_path)?;
            let credentials = starlight_proxy::credentials::Credentials::load(
                &config.registry.auth,
                config.registry.docker_config.clone(),
            )
            .context("cannot load registry credentials")?;
            let client = RegistryClient::new(plain_http || config.registry.plain_http)
                .with_credentials(credentials);
            starlight_proxy::index::configure(&config.index);
            let report = index_image(&client, &db, &reference, platform.as_deref()).await?;
            println!("{report}");
        }
        Command::Toc {
            common,
            summary,
            image,
        } => {
            let (config, db_path) = common.load()?;
            let db = open_db(&db_path)?;
            let record = find_image(&db, &config, &image)?;
            let toc = db.merged_toc(&record.manifest_digest)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if summary {
                writeln!(out, "image              {}", record.references.join(", "))?;
                writeln!(out, "manifest           {}", record.manifest_digest)?;
                writeln!(out, "platform           {}", record.platform)?;
                writeln!(out, "{}", TocSummary::new(&toc, &record.layers))?;
            } else {
                for t in &toc {
                    writeln!(out, "{}", toc_line(t))?;
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// Finds an indexed image by reference (as given or qualified) or digest.
fn find_image(db: &Db, config: &Config, image: &str) -> Result<ImageRecord> {
    for reference in [image.to_string(), config.qualify(image)] {
        if let Some(r) = db.image_by_reference(&reference)? {
            return Ok(r);
        }
    }
    let digest = image.rsplit_once('@').map_or(image, |(_, d)| d);
    if digest.starts_with("sha256:") {
        if let Some(r) = db.image(digest)? {
            return Ok(r);
        }
    }
    bail!(
        "image {image} is not indexed in {}: run `starlight-proxy index {image}`",
        db.path().display()
    )
}

/// `ls -l`-style permission string with the kind letter.
fn mode_string(kind: EntryKind, mode: u32) -> String {
    let kind = match kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
        EntryKind::CharDev => 'c',
        EntryKind::BlockDev => 'b',
        EntryKind::Fifo => 'p',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// One table-of-contents line: mode, owner, size, SHA-256 prefix, layer, path.
fn toc_line(t: &TocEntry) -> String {
    let e = &t.entry;
    let sha = e
        .sha256_hex()
        .map_or_else(|| "-".repeat(12), |h| h[..12].to_string());
    let size = match e.kind {
        EntryKind::CharDev | EntryKind::BlockDev => format!("{},{}", e.devmajor, e.devminor),
        _ => e.size.to_string(),
    };
    let mut line = format!(
        "{} {:>5}:{:<5} {:>10} {sha} {:>3} /{}",
        mode_string(e.kind, e.mode),
        e.uid,
        e.gid,
        size,
        t.layer,
        e.path
    );
    match (e.kind, &e.link) {
        (EntryKind::Symlink, Some(l)) => line.push_str(&format!(" -> {l}")),
        (EntryKind::Hardlink, Some(l)) => line.push_str(&format!(" => /{l}")),
        _ => {}
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(EntryKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(EntryKind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(EntryKind::Symlink, 0o777), "lrwxrwxrwx");
    }
}
