//! The plan for one binary: its versions, the probe family that observes it, the point each
//! probe uses in it, the registers that point's inputs are in, and the layout of sdk-core's data
//! where the family reads structs. Pure: it works on the probed file's bytes (and, for a bridge,
//! what is installed next to it), the probe tables and the shipped layout table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    arguments::{self, ArgumentsError, Params},
    bridge::{self, Runtime},
    layout::{
        self, LayoutError, TargetLayout,
        dwarf::{DwarfSections, DwarfTypes},
        niche::NicheRule,
    },
    probes::{self, Family, Input, Lifetime, ProbePoint, ProbeSpec, Via},
    symbols::{FunctionSymbol, SymbolError, SymbolIndex},
    target::{Probed, Target},
    verify::Verification,
    versions::{self, BinaryVersions},
};

/// Where a layout came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// The target's own DWARF.
    Dwarf,
    /// A row of the layout table, generated from a build by this rustc; with `niches`, its
    /// offsets with the tag values re-placed by that niche rule (`layout::niche`).
    Table {
        sdk_core: String,
        rustc: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        niches: Option<NicheRule>,
    },
    /// None is needed: the probes read encoded messages, not structs.
    NotNeeded,
}

impl std::fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dwarf => f.write_str("the binary's DWARF"),
            Self::Table {
                sdk_core,
                rustc,
                niches,
            } => {
                write!(f, "the table's row for sdk-core {sdk_core} + rustc {rustc}")?;
                match niches {
                    Some(rule) => write!(f, " with its tags re-placed by {rule}"),
                    None => Ok(()),
                }
            }
            Self::NotNeeded => {
                f.write_str("none needed (the probes read protobuf messages, not structs)")
            }
        }
    }
}

/// One way the binary may be laid out: a layout, where it and the registers came from, and the
/// argument registers of each planned probe under it (in the order of [`Plan::probes`]).
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    #[serde(skip)]
    pub layout: TargetLayout,
    pub layout_source: LayoutSource,
    pub arguments_source: ArgumentsSource,
    pub registers: Vec<[u8; 2]>,
    /// Other rows that say exactly the same (merged into this candidate), by rustc (and niche
    /// rule, for a re-placed row).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub same_as: Vec<String>,
}

impl Candidate {
    /// How logs and errors name it.
    pub fn label(&self) -> String {
        let same = if self.same_as.is_empty() {
            String::new()
        } else {
            format!(" (= {})", self.same_as.join(", "))
        };
        format!(
            "{}{same}, argument registers from {}",
            self.layout_source, self.arguments_source
        )
    }

    /// What the records are decided with.
    pub fn for_verifier(&self) -> crate::verify::Candidate {
        crate::verify::Candidate {
            label: self.label(),
            layout: self.layout.clone(),
        }
    }
}

impl LayoutSource {
    /// The name of a merged row: `rustc 1.96.0`, or with the rule it was re-placed by.
    fn short(&self) -> String {
        match self {
            Self::Table {
                rustc,
                niches: None,
                ..
            } => format!("rustc {rustc}"),
            Self::Table {
                rustc,
                niches: Some(_),
                ..
            } => format!("rustc {rustc} re-placed"),
            other => other.to_string(),
        }
    }
}

/// Where the argument registers came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgumentsSource {
    /// The target's own DWARF.
    Dwarf,
    /// The shipped table's entry for this build profile.
    Table { build: String },
    /// The calling convention: every input is at a C-ABI point or a return slot.
    CallingConvention,
}

/// A probe, the point chosen for this binary, every function it attaches to there, and the
/// argument registers of its inputs.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedProbe {
    pub spec: ProbeSpec,
    pub point: ProbePoint,
    pub functions: Vec<FunctionSymbol>,
    /// For a gated point ([`probes::Hook::Gated`]): the runtime function hooked inside the gate,
    /// found in the process (`None` for a file resolved without one).
    pub callee: Option<Callee>,
}

/// A C function of the language runtime, in the file of the process that exports it.
#[derive(Clone, Debug, Serialize)]
pub struct Callee {
    /// The path uprobes attach through (`/proc/PID/exe`, or a library under `/proc/PID/root`).
    pub file: std::path::PathBuf,
    pub symbol: FunctionSymbol,
}

/// Everything needed to observe one binary.
impl std::fmt::Display for ArgumentsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dwarf => f.write_str("the binary's DWARF"),
            Self::Table { build } => write!(f, "the shipped table ({build} build)"),
            Self::CallingConvention => f.write_str(
                "the calling convention (C-ABI points and return slots; no DWARF needed)",
            ),
        }
    }
}

#[derive(Debug)]
pub struct Plan {
    pub versions: BinaryVersions,
    /// The probes that observe this kind of target.
    pub family: Family,
    /// The probes to attach, each at the point chosen for this binary.
    pub probes: Vec<PlannedProbe>,
    /// The layouts (with registers) the binary may have: exactly one unless `verification` is
    /// [`Verification::Live`].
    pub candidates: Vec<Candidate>,
    /// Whether the live records must pick one of them.
    pub verification: Verification,
    /// What the binary itself said about its layout (for `inspect` and the logs).
    pub evidence: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error(
        "this is not a Temporal Rust worker: no sdk-core function is in its symbol table \
         ({symbols} symbols read)"
    )]
    NotAWorker { symbols: usize },
    #[error(
        "this is not a Temporal Rust worker: it has no symbol table and nothing of sdk-core in it"
    )]
    NotAWorkerWithoutSymbols,
    #[error(
        "the binary has no symbol table (it was stripped), but it links sdk-core{0}: build the worker \
         without `strip = \"symbols\"` (use `strip = \"debuginfo\"` or `strip = false`)"
    )]
    StrippedWorker(String),
    #[error(
        "this binary links sdk-core{version} but lacks functions the observer needs: {missing}. \
         This sdk-core version or build is not supported yet"
    )]
    MissingRequired { version: String, missing: String },
    #[error(
        "cannot tell which `{via}` serves `{function}`: {found} of them do (exactly one must). \
         This build of the bridge is not supported yet"
    )]
    Wrapper {
        function: &'static str,
        via: &'static str,
        found: usize,
    },
    #[error(
        "cannot tell where `{function}` takes its {input}: {why}. Build the worker with debug \
         info for sdk-core (see README, \"Builds\"), or add this build to the layout table"
    )]
    Registers {
        function: &'static str,
        input: String,
        why: String,
    },
    #[error(
        "PID {pid} ({exe_name}) loaded the TypeScript SDK bridge, but neither its executable nor \
         any of its libraries exports `{callee}` ({searched} files searched): this is not a Node.js \
         build the observer can read completions from"
    )]
    CalleeMissing {
        callee: &'static str,
        pid: u32,
        exe_name: String,
        searched: usize,
    },
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error("PID {pid} exited while its plan was made")]
    Exited { pid: u32 },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Arguments(#[from] ArgumentsError),
}

impl PlanError {
    /// The binary is no Temporal worker at all (as opposed to one that cannot be observed).
    pub fn is_not_a_worker(&self) -> bool {
        matches!(
            self,
            Self::NotAWorker { .. } | Self::NotAWorkerWithoutSymbols
        )
    }
}

/// Resolves the probed file of a process: its executable, or the bridge library it loaded.
pub fn resolve_target(target: &Target) -> Result<Plan, PlanError> {
    match &target.probed {
        Probed::Executable => resolve(&target.image),
        // The package next to the library, as the process sees it (its mount namespace).
        Probed::Library { runtime, .. } => {
            let installed = bridge::installed(*runtime, &target.attach_path());
            let mut plan = resolve_bridge(*runtime, &target.image, &installed)?;
            for probe in &mut plan.probes {
                if let Some((callee, _)) = probe.point.hook.callee() {
                    probe.callee = Some(find_callee(target, callee)?);
                }
            }
            Ok(plan)
        }
    }
}

/// The runtime's exported C function `name`, in the process's executable or a library it maps.
fn find_callee(target: &Target, name: &'static str) -> Result<Callee, PlanError> {
    let files = target.runtime_files();
    let mut unreadable = None;
    for file in &files {
        let opened = match std::fs::File::open(file) {
            Ok(opened) => opened,
            // A library unmapped since the maps were read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                unreadable.get_or_insert_with(|| crate::target::classify(target.pid, file, e));
                continue;
            }
        };
        // Only the dynamic symbols are read, not the whole (large) executable.
        let cache = object::ReadCache::new(opened);
        if let Some(symbol) = bridge::exported_function(&cache, name) {
            return Ok(Callee {
                file: file.clone(),
                symbol,
            });
        }
    }
    if !target.is_alive() {
        return Err(PlanError::Exited { pid: target.pid });
    }
    if let Some(error) = unreadable {
        return Err(PlanError::Target(error));
    }
    Err(PlanError::CalleeMissing {
        callee: name,
        pid: target.pid,
        exe_name: target.exe_name.clone(),
        searched: files.len(),
    })
}

/// Resolves a file by what it is: an SDK bridge (by its name and place), else a Rust SDK
/// worker. A bridge's runtime functions are in the process that loads it, so they are not
/// resolved here (`callee` stays empty).
pub fn resolve_file(path: &std::path::Path, image: &[u8]) -> Result<Plan, PlanError> {
    match bridge::bridge_runtime(path) {
        Some(runtime) => resolve_bridge(runtime, image, &bridge::installed(runtime, path)),
        None => resolve(image),
    }
}

/// Resolves an SDK bridge library: its runtime's message probes, at C-ABI points and return
/// slots; no layout.
pub fn resolve_bridge(
    runtime: Runtime,
    image: &[u8],
    installed: &bridge::Installed,
) -> Result<Plan, PlanError> {
    let mut versions = versions::detect(image);
    versions.sdk_core = versions.sdk_core.or_else(|| installed.sdk_core.clone());
    versions.package = installed.package.clone();
    let symbols = symbols(image, &versions)?;
    let family = match runtime {
        Runtime::Python => Family::PythonMessages,
        Runtime::Node => Family::TypeScriptMessages,
    };
    let choices = choose(&symbols, image, family, versions.sdk_core.as_deref())?;
    let registers = registers_of(&choices, &BTreeMap::new())?;
    Ok(Plan {
        versions,
        family,
        probes: planned(choices),
        candidates: vec![Candidate {
            layout: TargetLayout::default(),
            layout_source: LayoutSource::NotNeeded,
            arguments_source: ArgumentsSource::CallingConvention,
            registers,
            same_as: Vec::new(),
        }],
        verification: Verification::Off,
        evidence: Vec::new(),
    })
}

/// The chosen points, to attach.
fn planned(choices: Vec<Choice>) -> Vec<PlannedProbe> {
    choices
        .into_iter()
        .map(|choice| PlannedProbe {
            spec: choice.spec,
            point: choice.point,
            functions: choice.functions,
            callee: None,
        })
        .collect()
}

/// The registers of each chosen point's inputs, from its function's parameters.
fn registers_of(
    choices: &[Choice],
    params: &BTreeMap<String, Params>,
) -> Result<Vec<[u8; 2]>, PlanError> {
    choices
        .iter()
        .map(|c| {
            registers(
                &c.point,
                params.get(c.point.function).unwrap_or(&Params::new()),
            )
        })
        .collect()
}

/// Resolves a Rust SDK worker against the probe table and the layout table in use (the
/// shipped one unless `--layout-table` gave another).
pub fn resolve(image: &[u8]) -> Result<Plan, PlanError> {
    resolve_with_table(image, layout::active_table())
}

pub fn resolve_with_table(image: &[u8], table: &str) -> Result<Plan, PlanError> {
    let versions = versions::detect(image);
    let symbols = symbols(image, &versions)?;
    let choices = choose(
        &symbols,
        image,
        Family::Structs,
        versions.sdk_core.as_deref(),
    )?;
    let sections = DwarfSections::load(image).ok();
    let types = sections.as_ref().and_then(|s| s.types().ok());
    let (layouts, verification) = layout_candidates(types.as_ref(), &versions, table)?;
    let mut evidence = vec![format!(
        "rustc {} (from the binary's .comment), sdk-core {}; {}",
        versions.rustc.as_deref().unwrap_or("unknown"),
        versions.sdk_core.as_deref().unwrap_or("unknown"),
        match (&layouts[..], verification) {
            ([(_, LayoutSource::Dwarf)], _) => "its DWARF describes sdk-core's types".to_string(),
            (_, Verification::Certain) => "the table has a row for exactly this pair".to_string(),
            (layouts, _) => {
                let replaced = layouts
                    .iter()
                    .filter(|(_, s)| {
                        matches!(
                            s,
                            LayoutSource::Table {
                                niches: Some(_),
                                ..
                            }
                        )
                    })
                    .count();
                format!(
                    "no DWARF and no row for this rustc: the {} row(s) of this sdk-core release \
                     line are candidates, and {replaced} more with their tags re-placed by the \
                     other niche rule",
                    layouts.len() - replaced
                )
            }
        }
    )];
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut refused = None;
    let mut verification = verification;
    for (layout, layout_source) in layouts {
        // A row without a build of this binary's shape is no candidate (static evidence).
        let (builds, certain) = match arguments_for(&symbols, types.as_ref(), &layout, &choices) {
            Ok((builds, certain)) => {
                if !certain {
                    verification = Verification::Live;
                }
                (builds, certain)
            }
            Err(e) => {
                evidence.push(format!("{layout_source}: not a candidate: {e}"));
                refused.get_or_insert(e.into());
                continue;
            }
        };
        for (params, arguments_source) in builds {
            let registers = match registers_of(&choices, &params) {
                Ok(registers) => registers,
                Err(e) => {
                    evidence.push(format!(
                        "{layout_source} with registers from {arguments_source}: not a \
                         candidate: {e}"
                    ));
                    refused.get_or_insert(e);
                    continue;
                }
            };
            if let ArgumentsSource::Table { build } = &arguments_source {
                evidence.push(format!(
                    "{layout_source}: its `{build}` build has {} this binary's probe functions, \
                     so its registers for them are a candidate",
                    if certain { "exactly" } else { "all of" }
                ));
            }
            let candidate = Candidate {
                layout: layout.clone(),
                layout_source: layout_source.clone(),
                arguments_source,
                registers,
                same_as: Vec::new(),
            };
            match candidates.iter_mut().find(|c| reads_alike(c, &candidate)) {
                Some(same) => {
                    // Two builds of one row that agree are one candidate, and say nothing new.
                    if candidate.layout_source != same.layout_source {
                        evidence.push(format!(
                            "{}: reads every field as {} does (one candidate)",
                            candidate.layout_source, same.layout_source
                        ));
                        same.same_as.push(candidate.layout_source.short());
                    }
                }
                None => candidates.push(candidate),
            }
        }
    }
    if candidates.len() > 1 {
        verification = Verification::Live;
    }
    if candidates.is_empty() {
        return Err(
            refused.unwrap_or(PlanError::Layout(LayoutError::UnknownVersion {
                what: "sdk-core",
            })),
        );
    }
    if verification == Verification::Live && candidates.len() > 1 {
        let functions: Vec<&FunctionSymbol> = choices.iter().flat_map(|c| &c.functions).collect();
        let layouts: Vec<&TargetLayout> = candidates.iter().map(|c| &c.layout).collect();
        let found = crate::verify::code_constants(image, &functions, &layouts);
        for (candidate, found) in candidates.iter().zip(found) {
            for (what, value, function) in found {
                evidence.push(format!(
                    "{}: the code of {function} loads {value:#x}, its value of {what} (the \
                     other candidates' differs; a hint, the live records decide)",
                    candidate.layout_source
                ));
            }
        }
    }
    if candidates.len() > observer_common::MAX_CANDIDATES {
        evidence.push(format!(
            "{} candidate layouts; only the first {} are tried",
            candidates.len(),
            observer_common::MAX_CANDIDATES
        ));
        candidates.truncate(observer_common::MAX_CANDIDATES);
    }
    Ok(Plan {
        versions,
        family: Family::Structs,
        probes: planned(choices),
        candidates,
        verification,
        evidence,
    })
}

/// Two candidates that read every record the same way: the same offsets, tags and registers.
fn reads_alike(a: &Candidate, b: &Candidate) -> bool {
    let facts = |c: &Candidate| TargetLayout {
        sdk_core: String::new(),
        rustc: String::new(),
        arguments: Vec::new(),
        niches: None,
        ..c.layout.clone()
    };
    a.registers == b.registers && facts(a) == facts(b)
}

impl Plan {
    /// Lifecycle facts this binary's plan cannot see, or sees only in part, and why.
    pub fn not_covered(&self) -> Vec<String> {
        not_covered(self.family, &self.probes)
    }
}

/// What a plan misses: probes of its family without any point in the binary, and the caveats
/// of second-choice points.
pub fn not_covered(family: Family, plan: &[PlannedProbe]) -> Vec<String> {
    // The workers running at attach are named by a catch-up probe, or else counted: the
    // counting point's caveat says so, and only when there is no catch-up.
    let catch_up = plan
        .iter()
        .any(|p| p.spec.lifetime == Lifetime::UntilRunningWorkersNamed);
    let counted = plan.iter().any(|p| p.point.count_existing_workers);
    let mut out = Vec::new();
    for spec in family.probes() {
        match plan.iter().find(|p| p.spec.id == spec.id) {
            None if spec.lifetime == Lifetime::UntilRunningWorkersNamed && counted => {}
            Some(planned) if planned.point.count_existing_workers && catch_up => {}
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

/// The entry parameters of each probe function, and where they came from.
pub type BuildRegisters = (BTreeMap<String, Params>, ArgumentsSource);

/// The chosen functions' entry parameters: from the binary's DWARF when it describes all of
/// them (one answer, certain), else from each of the row's builds that may be this binary's
/// (see [`arguments::matching`]); `true` when those are certain: one build with exactly the
/// binary's probe functions.
pub fn arguments_for(
    symbols: &SymbolIndex,
    types: Option<&DwarfTypes<'_>>,
    layout: &TargetLayout,
    choices: &[Choice],
) -> Result<(Vec<BuildRegisters>, bool), ArgumentsError> {
    if let Some(types) = types {
        let read = arguments::read(symbols, types, probes::probe_functions())?;
        if choices.iter().all(|c| read.contains_key(c.point.function)) {
            return Ok((vec![(read, ArgumentsSource::Dwarf)], true));
        }
    }
    let present = arguments::present(symbols, probes::probe_functions());
    let (builds, exact) = arguments::matching(&layout.arguments, &present)?;
    let certain = exact && builds.len() == 1;
    Ok((
        builds
            .into_iter()
            .map(|b| (b.functions, ArgumentsSource::Table { build: b.build }))
            .collect(),
        certain,
    ))
}

/// The binary's function symbols; without a symbol table, the refusal says whether it is a
/// stripped worker (sdk-core's version survives `strip`) or no worker at all.
pub fn symbols(image: &[u8], versions: &BinaryVersions) -> Result<SymbolIndex, PlanError> {
    SymbolIndex::from_elf(image).map_err(|e| match (e, &versions.sdk_core) {
        (SymbolError::Stripped, Some(v)) => PlanError::StrippedWorker(format!(" {v}")),
        (SymbolError::Stripped, None) => PlanError::NotAWorkerWithoutSymbols,
        (e, _) => e.into(),
    })
}

/// The layouts the binary may have: its DWARF when that describes sdk-core's types, or the
/// table's row for its exact sdk-core and rustc (each known for certain); else every row of its
/// sdk-core, for the live records to decide among.
pub fn layout_candidates(
    types: Option<&DwarfTypes<'_>>,
    versions: &BinaryVersions,
    table: &str,
) -> Result<(Vec<(TargetLayout, LayoutSource)>, Verification), LayoutError> {
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
                return Ok((vec![(layout, LayoutSource::Dwarf)], Verification::Certain));
            }
            Err(e) => log::debug!("DWARF present but not usable for layouts: {e}"),
        }
    }
    let sdk_core = versions
        .sdk_core
        .as_deref()
        .ok_or(LayoutError::UnknownVersion { what: "sdk-core" })?;
    let source = |row: &TargetLayout, niches| LayoutSource::Table {
        sdk_core: row.sdk_core.clone(),
        rustc: row.rustc.clone(),
        niches,
    };
    if let Some(rustc) = versions.rustc.as_deref()
        && let Ok(row) = layout::from_table(table, sdk_core, rustc)
    {
        let source = source(&row, None);
        return Ok((vec![(row, source)], Verification::Certain));
    }
    let rows = layout::rows_for(table, sdk_core, versions.rustc.as_deref())?;
    // Each row as generated, then each row re-placed by the niche rules it was not built with:
    // a rustc newer (or older) than every row's may place tags the other way.
    let mut candidates: Vec<(TargetLayout, LayoutSource)> = rows
        .iter()
        .map(|row| (row.clone(), source(row, None)))
        .collect();
    for row in &rows {
        let own = row.niche_rules();
        if own.is_empty() {
            continue;
        }
        for rule in NicheRule::ALL.into_iter().filter(|r| !own.contains(r)) {
            if let Some(replaced) = row.under(rule) {
                candidates.push((replaced, source(row, Some(rule))));
            }
        }
    }
    Ok((candidates, Verification::Live))
}
/// A probe point chosen for this binary, before its registers are known.
#[derive(Clone, Debug)]
pub struct Choice {
    pub spec: ProbeSpec,
    pub point: ProbePoint,
    pub functions: Vec<FunctionSymbol>,
}

/// Picks, for each probe of the family, the first point this binary has. Optional probes
/// without any point are left out; a required one refuses the binary.
pub fn choose(
    symbols: &SymbolIndex,
    image: &[u8],
    family: Family,
    sdk_core_version: Option<&str>,
) -> Result<Vec<Choice>, PlanError> {
    if symbols.count_with_prefix("temporalio_sdk_core::") == 0 {
        return Err(PlanError::NotAWorker {
            symbols: symbols.len(),
        });
    }
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    for spec in family.probes() {
        let mut found = None;
        for point in spec.points {
            let functions = attach_functions(symbols, image, point)?;
            if !functions.is_empty() {
                found = Some(Choice {
                    spec: *spec,
                    point: *point,
                    functions,
                });
                break;
            }
        }
        match found {
            Some(choice) => chosen.push(choice),
            None if spec.required => missing.push(
                spec.points
                    .iter()
                    .map(|p| match p.via {
                        // The function is inlined into its instance: the instance is missing.
                        Some(Via::InstanceFor(generic)) => {
                            format!("`{generic}` instance for {}", p.function)
                        }
                        _ => p.function.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(PlanError::MissingRequired {
            version: sdk_core_version
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            missing: missing.join("; "),
        });
    }
    Ok(chosen)
}

/// The functions a point attaches to in this binary: the function itself, or its one C-ABI
/// wrapper (see [`ProbePoint::via`]).
fn attach_functions(
    symbols: &SymbolIndex,
    image: &[u8],
    point: &ProbePoint,
) -> Result<Vec<FunctionSymbol>, PlanError> {
    let functions = symbols.find(point.function);
    let found: Vec<FunctionSymbol> = match point.via {
        None => return Ok(functions.to_vec()),
        Some(Via::Caller(via)) => {
            let [target] = functions else {
                return Ok(Vec::new());
            };
            let candidates = bridge::instances(symbols, via);
            bridge::wrappers_of(image, &candidates, target.address)
                .into_iter()
                .cloned()
                .collect()
        }
        Some(Via::InstanceFor(generic)) => bridge::instances_for(symbols, generic, point.function),
    };
    match found.len() {
        0 if matches!(point.via, Some(Via::InstanceFor(_))) => Ok(Vec::new()),
        1 => Ok(found),
        n => Err(PlanError::Wrapper {
            function: point.function,
            via: point.via.map(Via::name).unwrap_or_default(),
            found: n,
        }),
    }
}

/// The argument register of each input of a point, from its parameters' entry locations.
pub fn registers(point: &ProbePoint, params: &Params) -> Result<[u8; 2], PlanError> {
    let one = |input: Input| -> Result<u8, PlanError> {
        let fail = |why: String| PlanError::Registers {
            function: point.function,
            input: match input {
                Input::ReturnSlot => "return slot".to_string(),
                Input::Address(name) | Input::Value(name) => format!("parameter `{name}`"),
                Input::None | Input::CArgument(_) => String::new(),
            },
            why,
        };
        match input {
            Input::None => Ok(0),
            Input::CArgument(register) => Ok(register),
            Input::Address(name) => params
                .get(name)
                .map(|at| at.register)
                .ok_or_else(|| fail("it is not in a register at entry".into())),
            Input::Value(name) => match params.get(name) {
                Some(at) if !at.indirect => Ok(at.register),
                Some(_) => Err(fail("it is passed by reference".into())),
                None => Err(fail("it is not in a register at entry".into())),
            },
            // rustc passes a large return value's slot as a hidden first argument.
            Input::ReturnSlot => match params.values().find(|at| at.register == 0) {
                None => Ok(0),
                Some(_) => Err(fail("a parameter takes the first register".into())),
            },
        }
    };
    Ok([one(point.inputs[0])?, one(point.inputs[1])?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arguments::ParamAt;

    #[test]
    fn a_binary_without_sdk_core_is_not_a_worker() {
        let err = choose(&SymbolIndex::default(), &[], Family::Structs, None).expect_err("empty");
        assert!(matches!(err, PlanError::NotAWorker { .. }));
    }

    fn at(register: u8, indirect: bool) -> ParamAt {
        ParamAt { register, indirect }
    }

    fn point(inputs: [Input; 2]) -> ProbePoint {
        ProbePoint {
            function: "f",
            via: None,
            hook: probes::Hook::Entry {
                program: observer_common::program::COMPLETION,
            },
            inputs,
            caveat: None,
            count_existing_workers: false,
        }
    }

    #[test]
    fn registers_come_from_the_named_parameters() {
        let params: Params = [
            ("run_id".to_string(), at(1, true)),
            ("reason".to_string(), at(3, false)),
        ]
        .into();
        let p = point([Input::Address("run_id"), Input::Value("reason")]);
        assert_eq!(registers(&p, &params).expect("both found"), [1, 3]);
    }

    #[test]
    fn a_value_passed_by_reference_or_a_missing_parameter_is_refused() {
        let params: Params = [("reason".to_string(), at(3, true))].into();
        let value = point([Input::Value("reason"), Input::None]);
        assert!(registers(&value, &params).is_err());
        let missing = point([Input::Address("completion"), Input::None]);
        let err = registers(&missing, &params).expect_err("missing");
        assert!(err.to_string().contains("parameter `completion`"), "{err}");
    }

    #[test]
    fn the_return_slot_is_the_first_register_unless_a_parameter_is_there() {
        let slot = point([Input::ReturnSlot, Input::None]);
        let self_in_rsi: Params = [("self".to_string(), at(1, false))].into();
        assert_eq!(registers(&slot, &self_in_rsi).expect("rdi free"), [0, 0]);
        let self_in_rdi: Params = [("self".to_string(), at(0, false))].into();
        assert!(registers(&slot, &self_in_rdi).is_err());
    }
}
