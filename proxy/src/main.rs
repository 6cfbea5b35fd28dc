//! `starlight-proxy`: indexes images and (later) serves delta bundles.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
