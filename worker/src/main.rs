//! starlightd: the worker daemon. Not built yet: see issue 5.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("starlightd is not built yet (issue 5)")
}
