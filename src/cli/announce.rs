//! `ringbit announce`.
//!
//! Layer: edge.

use std::process::ExitCode;

/// Arguments of `ringbit announce`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ringbit announce` is not implemented yet")
}
