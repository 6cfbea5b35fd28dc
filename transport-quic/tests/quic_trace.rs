//! Trace uploads and ranks queries over real QUIC on 127.0.0.1: tokens are
//! checked, a server that does not collect traces says so, and a bundle
//! request on the same connection still works.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use transport_quic::quic::{
    BundleHandler, BundleWriter, ClientError, HandlerError, HandlerFuture, ReplyFuture,
};
use transport_quic::{
    ErrorCode, RankedPath, RanksQuery, RanksReply, Request, Trace, TraceAck, TraceOpen, TraceUpload,
};

/// Keeps uploaded traces in memory, counting each id once; answers ranks
/// from them; serves no bundles.
#[derive(Default)]
struct Collector {
    traces: Mutex<HashMap<String, Trace>>,
}

impl BundleHandler for Collector {
    fn handle<'a>(&'a self, request: Request, _out: &'a mut BundleWriter) -> HandlerFuture<'a> {
        Box::pin(async move {
            Err(HandlerError::new(
                ErrorCode::NotFound,
                format!("no bundle for {}", request.image),
            ))
        })
    }

    fn upload_trace(&self, trace: Trace) -> ReplyFuture<'_, TraceAck> {
        Box::pin(async move {
            let mut traces = self.traces.lock().unwrap();
            let duplicate = traces.contains_key(&trace.id);
            let folded = trace.opens.len() as u32;
            let id = trace.id.clone();
            traces.entry(id.clone()).or_insert(trace);
            Ok(TraceAck {
                id,
                duplicate,
                folded: if duplicate { 0 } else { folded },
                ignored: 0,
            })
        })
    }

    fn ranks(&self, query: RanksQuery) -> ReplyFuture<'_, RanksReply> {
        Box::pin(async move {
            let traces = self.traces.lock().unwrap();
            let mut sums: HashMap<String, (u64, u64)> = HashMap::new();
            for t in traces.values().filter(|t| t.image == query.image) {
                for o in &t.opens {
                    let e = sums.entry(o.path.clone()).or_default();
                    e.0 += u64::from(o.rank);
                    e.1 += 1;
                }
            }
            let mut ranks: Vec<RankedPath> = sums
                .into_iter()
                .map(|(path, (rank_sum, hits))| RankedPath {
                    path,
                    rank_sum,
                    hits,
                })
                .collect();
            ranks.sort_by(|a, b| a.rank_sum.cmp(&b.rank_sum).then(a.path.cmp(&b.path)));
            Ok(RanksReply {
                manifest_digest: "sha256:m".into(),
                traces: traces.len() as u64,
                inherited_from: None,
                ranks,
            })
        })
    }
}

fn upload(id: &str, token: &str, paths: &[&str]) -> TraceUpload {
    TraceUpload {
        token: token.into(),
        trace: Trace {
            id: id.into(),
            image: "app:v1".into(),
            manifest_digest: "sha256:m".into(),
            opens: paths
                .iter()
                .enumerate()
                .map(|(i, p)| TraceOpen {
                    path: p.to_string(),
                    layer: 0,
                    rank: i as u32,
                    ms_since_start: i as u64,
                    ms_waited: 0,
                })
                .collect(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_acknowledged_once_and_ranks_answered() {
    let collector = Arc::new(Collector::default());
    let (server, cert) = start_server(collector.clone());
    let addr = server.local_addr();
    let client = client_trusting(&cert);

    let ack = client
        .upload_trace(addr, "localhost", &upload("t1", TOKEN, &["b", "a"]))
        .await
        .unwrap();
    assert_eq!(
        (ack.id.as_str(), ack.duplicate, ack.folded),
        ("t1", false, 2)
    );
    let ack = client
        .upload_trace(addr, "localhost", &upload("t1", TOKEN, &["b", "a"]))
        .await
        .unwrap();
    assert!(ack.duplicate);
    client
        .upload_trace(addr, "localhost", &upload("t2", TOKEN, &["b", "c"]))
        .await
        .unwrap();

    let err = client
        .upload_trace(addr, "localhost", &upload("t3", "wrong", &["x"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");
    assert_eq!(collector.traces.lock().unwrap().len(), 2);

    let ranks = client
        .ranks(
            addr,
            "localhost",
            &RanksQuery {
                token: TOKEN.into(),
                image: "app:v1".into(),
            },
        )
        .await
        .unwrap();
    let got: Vec<(&str, u64, u64)> = ranks
        .ranks
        .iter()
        .map(|r| (r.path.as_str(), r.rank_sum, r.hits))
        .collect();
    assert_eq!(got, vec![("b", 0, 2), ("a", 1, 1), ("c", 1, 1)]);
    assert_eq!(ranks.ranks[0].average(), Some(0.0));

    // A bundle request on the same connection is still a bundle request.
    let err = fetch_verified(&client, addr, &request("app:v1", TOKEN))
        .await
        .unwrap_err();
    match err {
        ClientError::Proxy(f) => assert_eq!(f.code, ErrorCode::NotFound),
        e => panic!("expected NotFound, got {e}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_trace_collection_refuses_clearly() {
    let handler = Arc::new(SyntheticHandler {
        bundles: HashMap::new(),
        mode: Mode::Complete,
        write_size: 1024,
    });
    let (server, cert) = start_server(handler);
    let client = client_trusting(&cert);
    let err = client
        .upload_trace(
            server.local_addr(),
            "localhost",
            &upload("t", TOKEN, &["a"]),
        )
        .await
        .unwrap_err();
    match &err {
        ClientError::Proxy(f) => {
            assert_eq!(f.code, ErrorCode::BadRequest);
            assert!(f.message.contains("does not collect traces"), "{err}");
        }
        e => panic!("expected BadRequest, got {e}"),
    }
    server.shutdown().await;
}
