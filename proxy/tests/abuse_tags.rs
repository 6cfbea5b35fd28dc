//! Stale tags: a tag moved in the registry is served at its new digest after
//! the tag TTL, and at once after a Refresh (what `starlight convert --notify`
//! sends). Real in-process bundle server, real `docker-registry`, loopback.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod abuse_support;
mod common;
mod serve_support;

use std::time::Duration;

use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::{ResolvePolicy, ServeOptions};
use transport_quic::RanksQuery;

/// Pushes a one-file image to `name:tag`; its manifest digest.
fn push_version(reg: &TestRegistry, name: &str, tag: &str, version: u32) -> String {
    let files = vec![(
        "app/version".to_string(),
        format!("version {version}\n").repeat(50).into_bytes(),
    )];
    push_image(
        reg,
        name,
        tag,
        &[starlight_layer(
            &tar_of(&files, u64::from(version)),
            Compression::Zstd,
        )],
    )
}

async fn served_digest(proxy: &Proxy, image: &str) -> String {
    let b = fetch(&proxy.client(), proxy.addr, &request(image, &[]))
        .await
        .unwrap();
    verify(&b).unwrap();
    b.header.manifest_digest
}

fn with_ttl(ttl: Duration) -> ServeOptions {
    ServeOptions {
        resolve: ResolvePolicy {
            tag_ttl: Some(ttl),
            ..ResolvePolicy::default()
        },
        ..ServeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_served_at_its_new_digest_after_the_ttl() {
    let reg = TestRegistry::start();
    let d1 = push_version(&reg, "tags/app", "latest", 1);
    let proxy = Proxy::start(&reg, with_ttl(Duration::from_secs(2)));
    assert_eq!(served_digest(&proxy, "tags/app:latest").await, d1);

    let d2 = push_version(&reg, "tags/app", "latest", 2);
    assert_ne!(d1, d2);
    // Within the TTL: the indexed digest.
    assert_eq!(served_digest(&proxy, "tags/app:latest").await, d1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // After it: resolved again, the new digest.
    assert_eq!(served_digest(&proxy, "tags/app:latest").await, d2);
    // The database moved the tag.
    let qualified = format!("{}/tags/app:latest", reg.addr);
    assert_eq!(
        proxy.db.digest_by_reference(&qualified).unwrap().as_deref(),
        Some(d2.as_str())
    );
    // The old digest stays addressable by digest.
    assert_eq!(served_digest(&proxy, &d1).await, d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_re_resolves_a_tag_at_once() {
    let reg = TestRegistry::start();
    let d1 = push_version(&reg, "tags/notify", "v", 1);
    let proxy = Proxy::start(&reg, with_ttl(Duration::from_secs(3600)));
    assert_eq!(served_digest(&proxy, "tags/notify:v").await, d1);
    let d2 = push_version(&reg, "tags/notify", "v", 2);
    // A long TTL: still the old digest...
    assert_eq!(served_digest(&proxy, "tags/notify:v").await, d1);
    // ...until the converter's notice.
    let reply = proxy
        .client()
        .refresh(
            proxy.addr,
            "127.0.0.1",
            &RanksQuery {
                token: TOKEN.into(),
                image: "tags/notify:v".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.manifest_digest, d2);
    assert_eq!(served_digest(&proxy, "tags/notify:v").await, d2);

    // A refresh for a host that is not allowed is refused like any request.
    let err = proxy
        .client()
        .refresh(
            proxy.addr,
            "127.0.0.1",
            &RanksQuery {
                token: TOKEN.into(),
                image: "127.0.0.1:9/tags/notify:v".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_bounded_per_token() {
    let reg = TestRegistry::start();
    let d1 = push_version(&reg, "tags/spam", "v", 1);
    let proxy = abuse_support::AbuseProxy::start(
        &reg,
        with_ttl(Duration::from_secs(3600)),
        transport_quic::quic::ServerOptions {
            max_refreshes_per_minute: 2,
            ..transport_quic::quic::ServerOptions::default()
        },
    );
    let query = |token: &str| RanksQuery {
        token: token.into(),
        image: "tags/spam:v".into(),
    };
    let client = proxy.client();
    for _ in 0..2 {
        let r = client
            .refresh(proxy.addr, "127.0.0.1", &query(TOKEN))
            .await
            .unwrap();
        assert_eq!(r.manifest_digest, d1);
    }
    let indexed = proxy.handler.stats().indexed;
    let err = client
        .refresh(proxy.addr, "127.0.0.1", &query(TOKEN))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too many refreshes"), "{err}");
    // Refused before the registry was asked again.
    assert_eq!(proxy.handler.stats().indexed, indexed);
    // Another token has its own allowance.
    client
        .refresh(proxy.addr, "127.0.0.1", &query(abuse_support::OTHER_TOKEN))
        .await
        .unwrap();
}
