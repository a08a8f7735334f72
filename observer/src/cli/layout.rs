//! `temporal-observer layout BINARY`: the layout derived from a binary's own DWARF.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::{
    layout::{TargetLayout, dwarf::DwarfSections},
    versions,
};

#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// A worker binary built with debug info for sdk-core and its protos.
    pub binary: PathBuf,
}

pub fn run(args: &LayoutArgs) -> anyhow::Result<()> {
    let image = std::fs::read(&args.binary)
        .with_context(|| format!("reading {}", args.binary.display()))?;
    let found = versions::detect(&image);
    let sdk_core = found
        .sdk_core
        .context("cannot tell which sdk-core version this binary links")?;
    let rustc = found
        .rustc
        .context("cannot tell which rustc built this binary (no .comment)")?;
    let sections = DwarfSections::load(&image)?;
    let types = sections.types()?;
    let layout = TargetLayout::from_dwarf(&types, &sdk_core, &rustc)?;
    println!("{}", serde_json::to_string_pretty(&layout)?);
    Ok(())
}
