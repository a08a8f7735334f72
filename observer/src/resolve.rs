//! From a target binary to everything needed to observe it: versions, probe plan, layout.
//! Pure: it works on the executable's bytes.

use serde::Serialize;

use crate::{
    layout::{self, LayoutError, TargetLayout, dwarf::DwarfSections},
    probes::{self, PlanError, PlannedProbe},
    symbols::{SymbolError, SymbolIndex},
    versions::{self, BinaryVersions},
};

/// Where a layout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// The target's own DWARF.
    Dwarf,
    /// The table shipped with the observer.
    Table,
}

#[derive(Debug)]
pub struct Resolved {
    pub versions: BinaryVersions,
    pub plan: Vec<PlannedProbe>,
    pub layout: TargetLayout,
    pub layout_source: LayoutSource,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(
        "this is not a Temporal Rust worker: it has no symbol table and nothing of sdk-core in it"
    )]
    NotAWorker,
    #[error(
        "the binary has no symbol table (it was stripped), but it links sdk-core{0}: build the worker \
         without `strip = \"symbols\"` (use `strip = \"debuginfo\"` or `strip = false`)"
    )]
    StrippedWorker(String),
}

/// Resolves a binary against the probe table and the shipped layout table.
pub fn resolve(image: &[u8]) -> Result<Resolved, ResolveError> {
    resolve_with_table(image, layout::SHIPPED_TABLE)
}

pub fn resolve_with_table(image: &[u8], table: &str) -> Result<Resolved, ResolveError> {
    let versions = versions::detect(image);
    let symbols = symbols(image, &versions)?;
    let plan = probes::plan(&symbols, versions.sdk_core.as_deref())?;
    let (layout, layout_source) = layout_for(image, &versions, table)?;
    Ok(Resolved {
        versions,
        plan,
        layout,
        layout_source,
    })
}

/// The binary's function symbols; without a symbol table, the refusal says whether it is a
/// stripped worker (sdk-core's version survives `strip`) or no worker at all.
pub fn symbols(image: &[u8], versions: &BinaryVersions) -> Result<SymbolIndex, ResolveError> {
    SymbolIndex::from_elf(image).map_err(|e| match (e, &versions.sdk_core) {
        (SymbolError::Stripped, Some(v)) => ResolveError::StrippedWorker(format!(" {v}")),
        (SymbolError::Stripped, None) => ResolveError::NotAWorker,
        (e, _) => e.into(),
    })
}

/// The target's DWARF when it describes sdk-core's types, else the table entry for its versions.
pub fn layout_for(
    image: &[u8],
    versions: &BinaryVersions,
    table: &str,
) -> Result<(TargetLayout, LayoutSource), LayoutError> {
    let sdk_core = versions.sdk_core.as_deref().unwrap_or("unknown");
    let rustc = versions.rustc.as_deref().unwrap_or("unknown");
    if let Ok(sections) = DwarfSections::load(image)
        && let Ok(types) = sections.types()
    {
        match TargetLayout::from_dwarf(&types, sdk_core, rustc) {
            Ok(layout) => return Ok((layout, LayoutSource::Dwarf)),
            Err(e) => log::debug!("DWARF present but not usable for layouts: {e}"),
        }
    }
    let sdk_core = versions
        .sdk_core
        .as_deref()
        .ok_or(LayoutError::UnknownVersion { what: "sdk-core" })?;
    let rustc = versions
        .rustc
        .as_deref()
        .ok_or(LayoutError::UnknownVersion { what: "rustc" })?;
    Ok((
        layout::from_table(table, sdk_core, rustc)?,
        LayoutSource::Table,
    ))
}
