//! `temporal-observer layout BINARY`: the layout derived from a binary's own DWARF.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::{
    arguments::{self, BuildArguments},
    layout::{TargetLayout, dwarf::DwarfSections},
    probes,
    symbols::SymbolIndex,
    versions,
};

#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// A worker binary built with debug info for sdk-core and its protos.
    pub binary: PathBuf,
    /// Also record where the probe functions take their arguments in this build, under this
    /// profile name (the table keeps one such record per profile).
    #[arg(long)]
    pub build: Option<String>,
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
    let mut layout = TargetLayout::from_dwarf(&types, &sdk_core, &rustc)?;
    if let Some(build) = &args.build {
        let symbols = SymbolIndex::from_elf(&image)?;
        let functions = arguments::read(&symbols, &types, probes::probe_functions())?;
        anyhow::ensure!(
            !functions.is_empty(),
            "the DWARF describes none of the probe functions"
        );
        layout.arguments = vec![BuildArguments {
            build: build.clone(),
            functions,
        }];
    }
    println!("{}", serde_json::to_string_pretty(&layout)?);
    Ok(())
}
