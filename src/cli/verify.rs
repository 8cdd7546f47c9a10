//! `ringbit verify`.
//!
//! Layer: edge.

use std::process::ExitCode;

/// Arguments of `ringbit verify`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ringbit verify` is not implemented yet")
}
