//! Helpers for the abuse tests: an in-process proxy with chosen server options,
//! raw QUIC connections from chosen loopback addresses (that never authenticate),
//! the real `starlight-proxy serve` binary and its resident memory.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests may unwrap

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use starlight_proxy::db::Db;
use starlight_proxy::optimize::PlanCache;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::{BundleServer, ServeOptions};
use transport_quic::quic::{Client, ClientTls, Server, ServerOptions, ServerTls};

use crate::common::registry::TestRegistry;

/// A second accepted token (the first is `serve_support::TOKEN`).
pub const OTHER_TOKEN: &str = "abuse-other-token";

/// An in-process proxy for `reg` with both option sets.
pub struct AbuseProxy {
    pub server: Option<Server>,
    pub handler: Arc<BundleServer>,
    pub db: Arc<Db>,
    pub cert_pem: Vec<u8>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl AbuseProxy {
    /// Starts a proxy (`registry_host` defaults to `reg`), accepting
    /// `serve_support::TOKEN` and [`OTHER_TOKEN`].
    pub fn start(reg: &TestRegistry, mut serve: ServeOptions, server: ServerOptions) -> AbuseProxy {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        if serve.registry_host.is_none() {
            serve.registry_host = Some(reg.addr.clone());
        }
        let handler = Arc::new(BundleServer::new(
            db.clone(),
            Arc::new(RegistryClient::new(true)),
            Arc::new(PlanCache::new(64, 64 << 20)),
            serve,
        ));
        let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
        let s = Server::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls {
                cert_chain_pem: cert.clone().into_bytes(),
                key_pem: key.into_bytes(),
            },
            [crate::serve_support::TOKEN, OTHER_TOKEN],
            handler.clone(),
            server,
        )
        .unwrap();
        let addr = s.local_addr();
        AbuseProxy {
            server: Some(s),
            handler,
            db,
            cert_pem: cert.into_bytes(),
            addr,
            _dir: dir,
        }
    }

    /// A client trusting this proxy.
    pub fn client(&self) -> Client {
        Client::new(ClientTls::CaPem(self.cert_pem.clone())).unwrap()
    }

    /// The server's admission counters.
    pub fn stats(&self) -> transport_quic::quic::ServerStats {
        self.server.as_ref().unwrap().stats()
    }
}

/// A raw QUIC client endpoint bound to `ip` (any port), trusting `cert_pem`.
pub fn raw_endpoint(ip: IpAddr, cert_pem: &[u8]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for c in transport_quic::tls::certs_from_pem(cert_pem, "cert").unwrap() {
        roots.add(c).unwrap();
    }
    let mut crypto =
        rustls::ClientConfig::builder_with_provider(transport_quic::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    crypto.alpn_protocols = vec![transport_quic::quic::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Idle, but kept open from this side.
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// Resident memory of process `pid`, KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A `starlight-proxy serve` child process.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub cert_pem: Vec<u8>,
}

impl ProxyProcess {
    /// Starts the binary with `extra` lines appended to its `[serve]` section.
    pub fn start(reg: &TestRegistry, dir: &Path, extra: &str) -> ProxyProcess {
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "db = \"{}\"\n[registry]\nurl = \"{}\"\nplain_http = true\n[serve]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{}\"]\n{extra}\n",
                dir.join("db").display(),
                reg.addr,
                crate::serve_support::TOKEN
            ),
        )
        .unwrap();
        let certs = dir.join("certs");
        let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_starlight-proxy"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--self-signed")
            .arg(&certs)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        let cert_pem = std::fs::read(certs.join("cert.pem")).unwrap();
        ProxyProcess {
            child,
            addr,
            cert_pem,
        }
    }

    /// A client trusting the process's certificate.
    pub fn client(&self) -> Client {
        Client::new(ClientTls::CaPem(self.cert_pem.clone())).unwrap()
    }

    /// Its resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
