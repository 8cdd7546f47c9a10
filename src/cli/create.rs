//! `ringbit create`.
//!
//! Layer: edge.

use std::process::ExitCode;

/// Arguments of `ringbit create`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`ringbit create` is not implemented yet")
}
