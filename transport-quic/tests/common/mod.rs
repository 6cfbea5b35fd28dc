//! Shared helpers for the QUIC tests: a synthetic bundle handler and a verifying client.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests may unwrap

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use transport_quic::quic::{
    BundleHandler, BundleWriter, Client, ClientError, ClientTls, HandlerError, HandlerFuture,
    Server, ServerTls,
};
use transport_quic::{
    EntryKind, ErrorCode, Event, Header, PayloadCompression, PayloadInfo, Request, Source, TocEntry,
};

pub const TOKEN: &str = "worker-secret";

/// A deterministic generator (splitmix64), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A bundle made up for a test: its header and the payloads' bytes.
pub struct Synthetic {
    pub header: Header,
    pub bodies: Vec<Vec<u8>>,
}

/// A bundle of payloads with the given sizes, each with its own path in the table of
/// contents (plus a directory and a held file).
pub fn synthetic(seed: u64, sizes: &[usize]) -> Synthetic {
    let mut rng = Rng::new(seed);
    let bodies: Vec<Vec<u8>> = sizes.iter().map(|&s| rng.bytes(s)).collect();
    let payloads = bodies
        .iter()
        .map(|b| PayloadInfo {
            sha256: sha256(b),
            compression: PayloadCompression::Gzip,
            compressed_len: b.len() as u64,
            size: b.len() as u64,
        })
        .collect();
    let entry = |path: String, kind, source, sha| TocEntry {
        path,
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        size: 0,
        link: None,
        devmajor: 0,
        devminor: 0,
        xattrs: Vec::new(),
        sha256: sha,
        layer: 0,
        source,
    };
    let mut toc = vec![
        entry("etc".into(), EntryKind::Dir, Source::NoContent, None),
        entry(
            "etc/held".into(),
            EntryKind::File,
            Source::Held,
            Some([7; 32]),
        ),
    ];
    for (i, b) in bodies.iter().enumerate() {
        toc.push(entry(
            format!("files/{i:05}"),
            EntryKind::File,
            Source::Payload(i as u32),
            Some(sha256(b)),
        ));
    }
    Synthetic {
        header: Header {
            manifest_digest: format!("sha256:{seed:064x}"),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: b"{\"schemaVersion\":2}".to_vec(),
            config: b"{}".to_vec(),
            layers: vec![format!("sha256:{:064x}", seed + 1)],
            image_layers: vec![0],
            toc,
            payloads,
            layer_tocs: Vec::new(),
        },
        bodies,
    }
}

/// How the test handler behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Sends the whole bundle.
    Complete,
    /// Returns `Ok` halfway through the body without finishing.
    StopMidBody,
    /// Calls `abort()` halfway through the body.
    AbortMidBody,
    /// Returns an error halfway through the body.
    FailMidBody,
}

/// Serves synthetic bundles by image name.
pub struct SyntheticHandler {
    pub bundles: HashMap<String, Arc<Synthetic>>,
    pub mode: Mode,
    /// Bytes per `send_data` call.
    pub write_size: usize,
}

impl SyntheticHandler {
    async fn serve(&self, request: Request, out: &mut BundleWriter) -> Result<(), HandlerError> {
        let bundle = self.bundles.get(&request.image).ok_or_else(|| {
            HandlerError::new(ErrorCode::NotFound, format!("no image {}", request.image))
        })?;
        out.send_header(&bundle.header).await?;
        let half = bundle.bodies.len() / 2;
        for (i, body) in bundle.bodies.iter().enumerate() {
            out.begin_payload(i as u32).await?;
            let mut rest = &body[..];
            if i == half && self.mode != Mode::Complete {
                out.send_data(&rest[..rest.len() / 2]).await?;
                match self.mode {
                    Mode::StopMidBody => return Ok(()),
                    Mode::AbortMidBody => {
                        out.abort();
                        return Ok(());
                    }
                    _ => {
                        return Err(HandlerError::new(
                            ErrorCode::Upstream,
                            "the registry went away",
                        ))
                    }
                }
            }
            while !rest.is_empty() {
                let n = rest.len().min(self.write_size);
                out.send_data(&rest[..n]).await?;
                rest = &rest[n..];
            }
            out.end_payload().await?;
        }
        let totals = out.totals();
        out.finish(totals).await?;
        Ok(())
    }
}

impl BundleHandler for SyntheticHandler {
    fn handle<'a>(&'a self, request: Request, out: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(self.serve(request, out))
    }
}

/// A server on 127.0.0.1 with a fresh self-signed certificate; returns it with its
/// certificate (PEM).
pub fn start_server(handler: Arc<dyn BundleHandler>) -> (Server, String) {
    let (cert, key) = transport_quic::tls::self_signed(&["localhost"]).unwrap();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls {
            cert_chain_pem: cert.clone().into_bytes(),
            key_pem: key.into_bytes(),
        },
        [TOKEN, "another-token"],
        handler,
    )
    .unwrap();
    (server, cert)
}

pub fn client_trusting(cert_pem: &str) -> Client {
    Client::new(ClientTls::CaPem(cert_pem.as_bytes().to_vec())).unwrap()
}

pub fn request(image: &str, token: &str) -> Request {
    Request {
        token: token.into(),
        image: image.into(),
        platform: Some("linux/amd64".into()),
        held_images: Vec::new(),
        held_payloads: Vec::new(),
        unordered: false,
    }
}

/// Fetches a bundle and checks every payload against the header's SHA-256; returns the
/// header and the payloads.
pub async fn fetch_verified(
    client: &Client,
    addr: SocketAddr,
    req: &Request,
) -> Result<(Header, Vec<Vec<u8>>), ClientError> {
    let mut stream = client.fetch(addr, "localhost", req).await?;
    let mut header = None;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut ended = false;
    while let Some(ev) = stream.next_event().await? {
        match ev {
            Event::Header(h) => header = Some(h),
            Event::PayloadBegin { index } => {
                assert_eq!(index as usize, bodies.len());
                bodies.push(Vec::new());
            }
            Event::PayloadData { index, data } => bodies[index as usize].extend_from_slice(&data),
            Event::PayloadEnd { index } => {
                let h = header.as_ref().unwrap();
                let info = &h.payloads[index as usize];
                assert_eq!(
                    sha256(&bodies[index as usize]),
                    info.sha256,
                    "payload {index} digest"
                );
            }
            Event::End(end) => {
                assert_eq!(end.payloads as usize, bodies.len());
                ended = true;
            }
            Event::Error(e) => panic!("error frames come back as Err: {e}"),
        }
    }
    assert!(ended, "Ok(None) without End");
    Ok((header.unwrap(), bodies))
}
