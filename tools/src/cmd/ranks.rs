//! `starlight ranks`: asks the proxy (over QUIC, with the same proxy, CA and
//! token flags as `starlight trace`) how it orders an image's files: by
//! average rank over the startup traces, inherited from an older version of
//! the repository when the image has none of its own.

use std::time::Duration;

use anyhow::Context;
use transport_quic::RanksQuery;

use super::trace::proxy::ProxyArgs;

/// Arguments of `starlight ranks`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: ProxyArgs,
    /// The image: a reference or a `sha256:` manifest digest.
    image: String,
}

/// Runs `starlight ranks`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = args.proxy.connect().await?;
    let query = RanksQuery {
        token: target.token.clone(),
        image: args.image.clone(),
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        target
            .client
            .ranks(target.addr, &target.server_name, &query),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer from {} within 60 s", target.addr))?
    .with_context(|| format!("asking {} for the ranks of {}", target.addr, args.image))?;
    println!(
        "{} ({}): {} trace(s)",
        args.image, reply.manifest_digest, reply.traces
    );
    if let Some(from) = &reply.inherited_from {
        println!("ranks inherited from {from}");
    }
    if reply.ranks.is_empty() {
        println!("no ranks: payloads are sent in layer order");
        return Ok(());
    }
    println!("{:>5}  {:>10}  {:>5}  path", "order", "avg rank", "hits");
    for (i, r) in reply.ranks.iter().enumerate() {
        let avg = r
            .average()
            .map_or_else(|| "-".into(), |a| format!("{a:.2}"));
        println!("{:>5}  {avg:>10}  {:>5}  {}", i + 1, r.hits, r.path);
    }
    Ok(())
}
