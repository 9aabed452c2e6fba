//! `cargo xtask`: the project's automation, in Rust instead of shell scripts.
fn main() -> anyhow::Result<()> {
    Ok(())
}
