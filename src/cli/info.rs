//! `ringbit info`.
//!
//! Layer: edge.

use std::process::ExitCode;

/// Arguments of `ringbit info`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ringbit info` is not implemented yet")
}
