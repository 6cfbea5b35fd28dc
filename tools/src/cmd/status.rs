//! `starlight status`: starlightd's version, whether it reaches its proxy,
//! its store use against `max_store_bytes`, and its images.

use anyhow::bail;
use starlight_api::{Request, Response, StatusReport};

use super::api::{human_bytes, request, ApiArgs};

/// Arguments of `starlight status`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
The proxy check resolves the configured address, connects over QUIC, checks
the certificate and presents the token (5 s at most). The command exits
non-zero when the proxy is not reachable.

Examples:
  starlight status
  starlight status --api /run/starlight/starlightd.sock")]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
}

/// The report as printed.
pub fn render(s: &StatusReport) -> String {
    let p = &s.proxy;
    let proxy = if p.reachable {
        format!("reachable ({} ms)", p.millis)
    } else {
        format!("NOT reachable: {}", p.error.as_deref().unwrap_or("unknown"))
    };
    let resolved = p.resolved.as_deref().unwrap_or("unresolved");
    let bound = s
        .max_store_bytes
        .map_or_else(|| "unbounded".to_string(), human_bytes);
    let mut out = format!(
        "starlightd {}\nproxy      {} ({resolved}, certificate name {}): {proxy}\n\
         store      {} of {bound}\nimages     {}\n",
        s.version,
        p.address,
        p.server_name,
        human_bytes(s.store_bytes),
        s.images.len()
    );
    for i in &s.images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        out.push_str(&format!(
            "  {} {short} {} {}\n",
            i.name,
            if i.complete { "complete" } else { "partial" },
            human_bytes(i.bytes)
        ));
    }
    out
}

/// Runs `starlight status`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let response = request(&args.api, &Request::Status, |_| {}).await?;
    let Response::Status(status) = response else {
        bail!("starlightd answered a status request with {response:?}");
    };
    print!("{}", render(&status));
    if !status.proxy.reachable {
        bail!("the proxy {} is not reachable", status.proxy.address);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starlight_api::ProxyStatus;

    #[test]
    fn status_shows_the_proxy_the_store_and_the_images() {
        let s = StatusReport {
            version: "0.1.0".into(),
            proxy: ProxyStatus {
                address: "proxy.example:8443".into(),
                server_name: "proxy.example".into(),
                resolved: None,
                reachable: false,
                error: Some("cannot resolve proxy.example:8443".into()),
                millis: 3,
            },
            store_bytes: 1_500_000,
            max_store_bytes: None,
            images: vec![],
        };
        let text = render(&s);
        assert!(text.starts_with("starlightd 0.1.0\n"), "{text}");
        assert!(text.contains("proxy.example:8443 (unresolved, certificate name proxy.example): NOT reachable: cannot resolve"), "{text}");
        assert!(text.contains("store      1.5 MB of unbounded"), "{text}");
        assert!(text.contains("images     0"), "{text}");
    }
}
