//! `starlight-bench`: the evaluation harness.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
