//! Helpers for the bundle-server tests (also used by `tools/tests/cli_fetch.rs`
//! through `#[path]`): Starlight images built from file lists and pushed to a
//! real registry, an in-process proxy on 127.0.0.1, and a verifying fetch.
//! The including crate must mount `common` (proxy/tests/common) at its root.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests may unwrap

use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use starlight_proxy::db::Db;
use starlight_proxy::format::{self, Compression, ConvertOptions};
use starlight_proxy::optimize::PlanCache;
use starlight_proxy::registry::RegistryClient;
use starlight_proxy::serve::{BundleServer, PayloadCache, ServeOptions};
use transport_quic::quic::{Client, ClientError, ClientTls, Server, ServerOptions, ServerTls};
use transport_quic::{Event, Header, PayloadCompression, Request, Source};

use crate::common::layout::{Layer, OciLayout};
use crate::common::registry::TestRegistry;

pub const TOKEN: &str = "serve-test-token";

/// SHA-256 of `data`.
pub fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An uncompressed tar of regular files (mode 0644, mtime `mtime`).
pub fn tar_of(files: &[(String, Vec<u8>)], mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A layer converted to the Starlight format (gzip level 1: fast).
pub fn starlight_layer(tar: &[u8], compression: Compression) -> Layer {
    let mut blob = Vec::new();
    let converted = format::convert_layer(
        tar,
        &mut blob,
        &ConvertOptions {
            compression,
            level: Some(1),
        },
    )
    .unwrap();
    let media_type = match compression {
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    Layer {
        blob,
        media_type: media_type.into(),
        diff_id: converted.diff_id,
    }
}

/// Pushes an image of `layers` as `REGISTRY/name:tag`; returns its manifest digest.
pub fn push_image(reg: &TestRegistry, name: &str, tag: &str, layers: &[Layer]) -> String {
    push_image_as(reg, name, tag, layers, None)
}

/// [`push_image`], presenting `creds` (`USER:PASSWORD`) when given.
pub fn push_image_as(
    reg: &TestRegistry,
    name: &str,
    tag: &str,
    layers: &[Layer],
    creds: Option<&str>,
) -> String {
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", layers, &["/app/main"]);
    layout.tag(tag, &desc);
    layout.push_as(tag, &format!("{}/{name}:{tag}", reg.addr), false, creds);
    desc["digest"].as_str().unwrap().to_string()
}

/// A proxy served in-process on 127.0.0.1.
pub struct Proxy {
    pub server: Option<Server>,
    pub handler: Arc<BundleServer>,
    pub db: Arc<Db>,
    pub cert_pem: Vec<u8>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a proxy for `reg` with `options` (`registry_host` defaults to `reg`).
    pub fn start(reg: &TestRegistry, options: ServeOptions) -> Proxy {
        Self::start_with(reg, options, RegistryClient::new(true))
    }

    /// [`Proxy::start`] with its own registry client (credentials).
    pub fn start_with(
        reg: &TestRegistry,
        options: ServeOptions,
        registry: RegistryClient,
    ) -> Proxy {
        Self::start_full(reg, options, registry, None, ServerOptions::default())
    }

    /// [`Proxy::start_with`], reading ranges through `payload_cache` when
    /// given, with the QUIC server's `server` options.
    pub fn start_full(
        reg: &TestRegistry,
        mut options: ServeOptions,
        registry: RegistryClient,
        payload_cache: Option<Arc<PayloadCache>>,
        server: ServerOptions,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db")).unwrap());
        let registry = Arc::new(registry);
        let cache = Arc::new(PlanCache::new(64, 64 << 20));
        if options.registry_host.is_none() {
            options.registry_host = Some(reg.addr.clone());
        }
        let mut handler = BundleServer::new(db.clone(), registry, cache, options);
        if let Some(c) = payload_cache {
            handler = handler.with_payload_cache(c);
        }
        let handler = Arc::new(handler);
        let (cert, key) = transport_quic::tls::self_signed(&["127.0.0.1", "localhost"]).unwrap();
        let server = Server::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls {
                cert_chain_pem: cert.clone().into_bytes(),
                key_pem: key.into_bytes(),
            },
            [TOKEN],
            handler.clone(),
            server,
        )
        .unwrap();
        let addr = server.local_addr();
        Proxy {
            server: Some(server),
            handler,
            db,
            cert_pem: cert.into_bytes(),
            addr,
            _dir: dir,
        }
    }

    /// A client trusting this proxy's certificate.
    pub fn client(&self) -> Client {
        Client::new(ClientTls::CaPem(self.cert_pem.clone())).unwrap()
    }

    /// Stops the server (bundles in flight are cut off).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A request for `image` holding `held`.
pub fn request(image: &str, held: &[&str]) -> Request {
    Request {
        token: TOKEN.into(),
        image: image.into(),
        platform: None,
        held_images: held.iter().map(|s| s.to_string()).collect(),
        held_payloads: vec![],
        unordered: false,
    }
}

/// A received bundle: the header and each payload's compressed bytes.
pub struct Bundle {
    pub header: Header,
    pub payloads: Vec<Vec<u8>>,
    /// The held images the proxy says it used (protocol version 4).
    pub held_used: Option<Vec<String>>,
}

/// Fetches a whole bundle (checking framing, not contents).
pub async fn fetch(
    client: &Client,
    addr: SocketAddr,
    req: &Request,
) -> Result<Bundle, ClientError> {
    let mut stream = client.fetch(addr, "127.0.0.1", req).await?;
    let mut header = None;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut ended = false;
    while let Some(ev) = stream.next_event().await? {
        match ev {
            Event::Header(h) => header = Some(h),
            Event::PayloadBegin { index } => {
                assert_eq!(index as usize, payloads.len());
                payloads.push(Vec::new());
            }
            Event::PayloadData { index, data } => payloads[index as usize].extend_from_slice(&data),
            Event::PayloadEnd { .. } => {}
            Event::End(_) => ended = true,
            Event::Error(e) => panic!("error frames come back as Err: {e}"),
        }
    }
    assert!(ended, "complete without End");
    Ok(Bundle {
        header: header.unwrap(),
        payloads,
        held_used: stream.held_used().map(<[String]>::to_vec),
    })
}

/// Decompresses every payload and checks its size and SHA-256 against the
/// header; the error names the paths of the failing payload.
pub fn verify(bundle: &Bundle) -> Result<(), String> {
    let h = &bundle.header;
    assert_eq!(h.payloads.len(), bundle.payloads.len());
    for (i, (info, bytes)) in h.payloads.iter().zip(&bundle.payloads).enumerate() {
        let paths: Vec<&str> = h
            .toc
            .iter()
            .filter(|e| e.source == Source::Payload(i as u32))
            .map(|e| e.path.as_str())
            .collect();
        let compression = match info.compression {
            PayloadCompression::Gzip => Compression::Gzip,
            PayloadCompression::Zstd => Compression::Zstd,
        };
        let data = format::decompress_member(compression, bytes, info.size)
            .map_err(|e| format!("payload {i} ({paths:?}): cannot decompress: {e}"))?;
        if sha(&data) != info.sha256 {
            return Err(format!("payload {i} ({paths:?}): digest mismatch"));
        }
    }
    Ok(())
}
