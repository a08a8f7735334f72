//! From a target binary to everything needed to observe it: versions, probe plan, layout.
//! Pure: it works on the executable's bytes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    arguments::{self, ArgumentsError, Params},
    layout::{
        self, LayoutError, TargetLayout,
        dwarf::{DwarfSections, DwarfTypes},
    },
    probes::{self, Choice, PlanError, PlannedProbe},
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

/// Where the argument registers came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgumentsSource {
    /// The target's own DWARF.
    Dwarf,
    /// The shipped table's entry for this build profile.
    Table { build: String },
}

#[derive(Debug)]
pub struct Resolved {
    pub versions: BinaryVersions,
    pub plan: Vec<PlannedProbe>,
    pub layout: TargetLayout,
    pub layout_source: LayoutSource,
    pub arguments_source: ArgumentsSource,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Arguments(#[from] ArgumentsError),
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
    let choices = probes::choose(&symbols, versions.sdk_core.as_deref())?;
    let sections = DwarfSections::load(image).ok();
    let types = sections.as_ref().and_then(|s| s.types().ok());
    let (layout, layout_source) = layout_for(types.as_ref(), &versions, table)?;
    let (params, arguments_source) = arguments_for(&symbols, types.as_ref(), &layout, &choices)?;
    let no_params = Params::new();
    let plan = choices
        .into_iter()
        .map(|choice| {
            let registers = probes::registers(
                &choice.point,
                params.get(choice.point.function).unwrap_or(&no_params),
            )?;
            Ok(PlannedProbe {
                spec: choice.spec,
                point: choice.point,
                functions: choice.functions,
                registers,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(Resolved {
        versions,
        plan,
        layout,
        layout_source,
        arguments_source,
    })
}

impl Resolved {
    /// Lifecycle facts this binary's plan cannot see, or sees only in part, and why.
    pub fn not_covered(&self) -> Vec<String> {
        not_covered(&self.plan)
    }
}

/// What a plan misses: probes without any point in the binary, and the caveats of second-choice
/// points.
pub fn not_covered(plan: &[PlannedProbe]) -> Vec<String> {
    let mut out = Vec::new();
    for spec in probes::PROBES {
        match plan.iter().find(|p| p.spec.id == spec.id) {
            None => out.push(format!(
                "{}: not seen ({} is not in this binary)",
                spec.yields,
                spec.points
                    .iter()
                    .map(|p| p.function)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            Some(planned) => {
                if let Some(caveat) = planned.point.caveat {
                    out.push(format!("{}: {caveat}", spec.name));
                }
            }
        }
    }
    out
}

/// The chosen functions' entry parameters: from the binary's DWARF when it describes all of
/// them, else from the table's build with the same set of probe functions.
pub fn arguments_for(
    symbols: &SymbolIndex,
    types: Option<&DwarfTypes<'_>>,
    layout: &TargetLayout,
    choices: &[Choice],
) -> Result<(BTreeMap<String, Params>, ArgumentsSource), ArgumentsError> {
    if let Some(types) = types {
        let read = arguments::read(symbols, types)?;
        if choices.iter().all(|c| read.contains_key(c.point.function)) {
            return Ok((read, ArgumentsSource::Dwarf));
        }
    }
    let build = arguments::select(&layout.arguments, &arguments::present(symbols))?;
    Ok((
        build.functions.clone(),
        ArgumentsSource::Table {
            build: build.build.clone(),
        },
    ))
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
    types: Option<&DwarfTypes<'_>>,
    versions: &BinaryVersions,
    table: &str,
) -> Result<(TargetLayout, LayoutSource), LayoutError> {
    let sdk_core = versions.sdk_core.as_deref().unwrap_or("unknown");
    let rustc = versions.rustc.as_deref().unwrap_or("unknown");
    if let Some(types) = types {
        match TargetLayout::from_dwarf(types, sdk_core, rustc) {
            Ok(mut layout) => {
                // The table's per-build registers still serve a binary whose DWARF lacks them.
                if let (Some(sdk_core), Some(rustc)) = (&versions.sdk_core, &versions.rustc)
                    && let Ok(entry) = layout::from_table(table, sdk_core, rustc)
                {
                    layout.arguments = entry.arguments;
                }
                return Ok((layout, LayoutSource::Dwarf));
            }
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
