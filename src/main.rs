//! The `lode` binary: `lode serve` runs every component in one process.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("lode: the server is not wired yet")
}
