//! `starlight fetch`: receives a bundle from a proxy, verifies every payload
//! and writes the bundle to a file. The "wget" of the evaluation.
//!
//! The output file holds the bundle as a Delta Bundle Protocol response
//! stream (preamble, Header frame, payload frames, End frame), re-encoded
//! from the events as they were decoded: `transport_quic::codec::ResponseDecoder`
//! reads it back. It is written to `FILE.partial` and renamed to `FILE` only
//! when the bundle arrived complete and every payload verified.
//!
//! Exit codes: 0 success; 1 other failures (connection, I/O, usage of the
//! output); 3 token refused; 4 certificate not trusted; 5 truncated or
//! malformed stream; 6 verification failed (a header that does not follow
//! from the image's manifest, see `transport_quic::verify`; a payload's
//! digest, size or a corrupt member); 7 the proxy answered another error (not found, not a Starlight
//! image...).

mod verify;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use transport_quic::codec::ResponseEncoder;
use transport_quic::quic::{Client, ClientError, ClientTls};
use transport_quic::{Event, Header, Request, Source};

use verify::{Msg, VerifierThread, VerifyError};

/// Arguments of `starlight fetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's QUIC address, `HOST:PORT`.
    #[arg(long)]
    pub proxy: String,
    /// PEM file of the CA (or the self-signed certificate) to trust.
    #[arg(long)]
    pub ca: PathBuf,
    /// Bearer token presented to the proxy. Prefer STARLIGHT_TOKEN or
    /// --token-file: a token on the command line is visible to every local
    /// user in /proc.
    #[arg(
        long,
        env = "STARLIGHT_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Name the proxy's certificate must be valid for (default: the host of --proxy).
    #[arg(long)]
    pub server_name: Option<String>,
    /// An image the worker already holds (manifest digest, or a reference the
    /// proxy has indexed); repeatable.
    #[arg(long = "from")]
    pub from: Vec<String>,
    /// Platform wanted (`os/arch[/variant]`; default: the proxy's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Skip header and payload verification (transport measurements only).
    #[arg(long)]
    pub no_verify: bool,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// The wanted image: a reference or a `sha256:` manifest digest.
    pub image: String,
}

/// A failed fetch, with the process exit code for its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchFailure {
    /// Exit code (see the module documentation).
    pub code: u8,
    /// What happened.
    pub message: String,
}

impl FetchFailure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        FetchFailure {
            code,
            message: message.into(),
        }
    }

    fn client(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unauthorized(_) => 3,
            ClientError::CertificateNotTrusted(_) => 4,
            ClientError::Truncated(_) | ClientError::Protocol(_) => 5,
            ClientError::Proxy(_) => 7,
            _ => 1,
        };
        FetchFailure::new(code, e.to_string())
    }
}

/// What a successful fetch measured.
#[derive(Debug, Clone)]
struct Report {
    manifest: String,
    header_bytes: usize,
    toc_entries: usize,
    held_entries: usize,
    payloads: usize,
    payload_bytes: u64,
    uncompressed: u64,
    received: u64,
    to_header: Duration,
    to_last_byte: Duration,
    verified: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.to_last_byte.as_secs_f64().max(1e-9);
        writeln!(f, "manifest           {}", self.manifest)?;
        writeln!(
            f,
            "header             {} bytes, {} entries ({} held)",
            self.header_bytes, self.toc_entries, self.held_entries
        )?;
        writeln!(
            f,
            "payloads           {} ({} bytes compressed, {} uncompressed)",
            self.payloads, self.payload_bytes, self.uncompressed
        )?;
        writeln!(
            f,
            "time to header     {:.1} ms",
            self.to_header.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "time to last byte  {:.1} ms",
            self.to_last_byte.as_secs_f64() * 1e3
        )?;
        writeln!(
            f,
            "bytes received     {} ({:.1} MB/s)",
            self.received,
            self.received as f64 / secs / 1e6
        )?;
        write!(
            f,
            "verified           {}",
            if self.verified {
                "every payload's SHA-256"
            } else {
                "no (--no-verify)"
            }
        )
    }
}

/// The address and default server name of `proxy` (`HOST:PORT`).
pub(crate) async fn resolve_proxy(proxy: &str) -> Result<(SocketAddr, String), FetchFailure> {
    let host = match proxy.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => {
            return Err(FetchFailure::new(
                1,
                format!("--proxy {proxy:?}: expected HOST:PORT"),
            ))
        }
    };
    let addr = tokio::net::lookup_host(proxy)
        .await
        .map_err(|e| FetchFailure::new(1, format!("cannot resolve {proxy}: {e}")))?
        .next()
        .ok_or_else(|| FetchFailure::new(1, format!("{proxy} resolves to no address")))?;
    Ok((addr, host))
}

/// The paths whose content is payload `index`.
fn payload_paths(header: &Header, index: u32) -> String {
    let paths: Vec<&str> = header
        .toc
        .iter()
        .filter(|e| e.source == Source::Payload(index))
        .map(|e| e.path.as_str())
        .collect();
    match paths.as_slice() {
        [] => "no path".to_string(),
        [one] => format!("/{one}"),
        [first, rest @ ..] => format!("/{first} (and {} more)", rest.len()),
    }
}

fn verify_failure(header: Option<&Header>, e: &VerifyError) -> FetchFailure {
    let paths = header.map_or_else(String::new, |h| payload_paths(h, e.index()));
    FetchFailure::new(6, format!("verification failed for {paths}: {e}"))
}

/// Writes re-encoded frames to the output file.
struct Output {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    enc: ResponseEncoder,
    buf: BytesMut,
}

impl Output {
    fn io(&self, e: impl std::fmt::Display) -> FetchFailure {
        FetchFailure::new(1, format!("cannot write {}: {e}", self.path.display()))
    }

    fn flush_buf(&mut self) -> Result<(), FetchFailure> {
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| self.io(e))
    }

    fn event(&mut self, event: &Event) -> Result<usize, FetchFailure> {
        let r = match event {
            Event::Header(h) => self.enc.header(h, &mut self.buf),
            Event::PayloadBegin { index } => self.enc.begin_payload(*index, &mut self.buf),
            Event::PayloadData { data, .. } => self.enc.data(data, &mut self.buf),
            Event::PayloadEnd { index } => self.enc.end_payload(*index, &mut self.buf),
            Event::End(end) => self.enc.end(end, &mut self.buf),
            Event::Error(_) => Ok(()),
        };
        r.map_err(|e| FetchFailure::new(5, format!("the bundle breaks the protocol: {e}")))?;
        let n = self.buf.len();
        self.flush_buf()?;
        Ok(n)
    }
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Receives the bundle; writes it to `out`; verifies through `verifier`.
async fn receive(
    args: &Args,
    out: &mut Output,
    verifier: Option<&VerifierThread>,
) -> Result<(Report, Option<Header>), (FetchFailure, Option<Header>)> {
    let (addr, host) = resolve_proxy(&args.proxy).await.map_err(|e| (e, None))?;
    let server_name = args.server_name.clone().unwrap_or(host);
    let client = Client::new(ClientTls::CaFile(args.ca.clone()))
        .map_err(|e| (FetchFailure::client(e), None))?;
    let token = super::token_from(args.token.as_ref(), args.token_file.as_ref())
        .map_err(|e| (FetchFailure::new(1, format!("{e:#}")), None))?
        .ok_or_else(|| {
            (
                FetchFailure::new(1, "no token: set STARLIGHT_TOKEN or pass --token-file"),
                None,
            )
        })?;
    let request = Request {
        token,
        image: args.image.clone(),
        platform: args.platform.clone(),
        held_images: args.from.clone(),
        held_payloads: Vec::new(),
        unordered: false,
    };
    let started = Instant::now();
    let mut stream = client
        .fetch(addr, &server_name, &request)
        .await
        .map_err(|e| (FetchFailure::client(e), None))?;
    let mut header: Option<Header> = None;
    let mut report = Report {
        manifest: String::new(),
        header_bytes: 0,
        toc_entries: 0,
        held_entries: 0,
        payloads: 0,
        payload_bytes: 0,
        uncompressed: 0,
        received: 0,
        to_header: Duration::ZERO,
        to_last_byte: Duration::ZERO,
        verified: verifier.is_some(),
    };
    let stopped = || FetchFailure::new(6, "the verifier stopped");
    loop {
        let event = match stream.next_event().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err((FetchFailure::client(e), header)),
        };
        if let (Event::Header(h), Some(_)) = (&event, verifier) {
            // The header must follow from the image's manifest (the worker's
            // own check) before anything of it is written.
            if let Err(e) = transport_quic::verify::verify_header(h, &args.image) {
                return Err((
                    FetchFailure::new(6, format!("header verification failed: {e}")),
                    None,
                ));
            }
        }
        let written = out.event(&event).map_err(|e| (e, header.clone()))?;
        match event {
            Event::Header(h) => {
                report.to_header = started.elapsed();
                report.header_bytes = written;
                report.manifest = h.manifest_digest.clone();
                report.toc_entries = h.toc.len();
                report.held_entries = h.toc.iter().filter(|e| e.source == Source::Held).count();
                report.payloads = h.payloads.len();
                report.uncompressed = h.payloads.iter().map(|p| p.size).sum();
                header = Some(h);
            }
            Event::PayloadBegin { index } => {
                let info = header
                    .as_ref()
                    .and_then(|h| h.payloads.get(index as usize))
                    .cloned();
                if let (Some(v), Some(info)) = (verifier, info) {
                    if !v.send(Msg::Begin(index, info)) {
                        return Err((stopped(), header));
                    }
                }
            }
            Event::PayloadData { data, .. } => {
                report.payload_bytes += data.len() as u64;
                if let Some(v) = verifier {
                    if !v.send(Msg::Data(data)) {
                        return Err((stopped(), header));
                    }
                }
            }
            Event::PayloadEnd { .. } => {
                if let Some(v) = verifier {
                    if !v.send(Msg::End) {
                        return Err((stopped(), header));
                    }
                }
            }
            Event::End(_) | Event::Error(_) => {}
        }
    }
    report.to_last_byte = started.elapsed();
    report.received = stream.bytes_received();
    Ok((report, header))
}

/// Runs `starlight fetch`: prints the report on stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let partial = partial_path(&args.output);
    let file = std::fs::File::create(&partial)
        .map_err(|e| FetchFailure::new(1, format!("cannot create {}: {e}", partial.display())))?;
    let mut out = Output {
        file: std::io::BufWriter::with_capacity(1 << 20, file),
        path: partial.clone(),
        enc: ResponseEncoder::default(),
        buf: BytesMut::new(),
    };
    let verifier = if args.no_verify {
        None
    } else {
        Some(
            VerifierThread::start(256)
                .map_err(|e| FetchFailure::new(1, format!("cannot start the verifier: {e}")))?,
        )
    };
    let received = receive(&args, &mut out, verifier.as_ref()).await;
    // The verifier's own error comes first: it explains a stopped stream.
    let verified = verifier.map(VerifierThread::finish);
    let result = match (received, verified) {
        (Err((_, header)), Some(Err(e))) | (Ok((_, header)), Some(Err(e))) => {
            Err(verify_failure(header.as_ref(), &e))
        }
        (Err((e, _)), _) => Err(e),
        (Ok((mut report, _)), verified) => {
            if let Some(Ok(v)) = verified {
                report.uncompressed = v.bytes;
            }
            out.file
                .flush()
                .map_err(|e| out.io(e))
                .and_then(|()| {
                    std::fs::rename(&partial, &args.output).map_err(|e| {
                        FetchFailure::new(
                            1,
                            format!("cannot rename to {}: {e}", args.output.display()),
                        )
                    })
                })
                .map(|()| report)
        }
    };
    match result {
        Ok(report) => {
            println!("image              {}", args.image);
            println!("{report}");
            println!("output             {}", args.output.display());
            Ok(())
        }
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            Err(e.into())
        }
    }
}
