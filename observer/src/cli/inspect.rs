//! `temporal-observer inspect`: what the observer would do with a binary, before attaching.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{
    bridge::Package,
    layout::TargetLayout,
    plan::{self, ArgumentsSource, LayoutSource, Plan, PlanError, PlannedProbe},
    probes::{self, Family, Hook, Input, Via},
    symbols::FunctionSymbol,
    target::Target,
    verify::{self, Verification},
    versions,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["binary", "pid"]))]
pub struct InspectArgs {
    /// A worker binary, or an SDK bridge read with the package installed next to it: Python's
    /// `…/temporalio/bridge/temporal_sdk_bridge*.so`, TypeScript's
    /// `…/@temporalio/core-bridge/releases/<target>/index.node`.
    pub binary: Option<PathBuf>,
    /// Or the PID of a running worker: its executable (/proc/PID/exe), or the bridge a
    /// python or node process loaded (/proc/PID/maps).
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub binary: String,
    pub rustc: Option<String>,
    pub sdk_core: Option<String>,
    /// The SDK package a bridge was installed with.
    pub package: Option<Package>,
    pub build_id: Option<String>,
    /// What the probes read.
    pub family: Option<Family>,
    /// `legacy`, `v0`, or `none` (no sdk-core symbol).
    pub mangling: &'static str,
    /// Where the layout comes from (the first candidate's, when the live records decide).
    pub layout_source: Option<LayoutSource>,
    /// Where the probe functions' argument registers come from (likewise).
    pub arguments_source: Option<ArgumentsSource>,
    /// Whether the layout is known for certain or is picked by the live records.
    pub verification: Option<Verification>,
    /// The candidate layouts (one when it is known for certain).
    pub candidates: Vec<plan::Candidate>,
    /// What the binary itself says about its layout, before any record.
    pub static_evidence: Vec<String>,
    /// What the first records are checked for, when they decide.
    pub verified_live: Vec<&'static str>,
    /// The probes that would be attached, each at the point chosen for this binary.
    pub probes: Vec<ProbeReport>,
    /// Lifecycle facts the observer cannot see in this binary, or sees only in part, and why.
    pub not_covered: Vec<String>,
    /// Why this binary cannot be observed; `None` when it can.
    pub refused: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub name: &'static str,
    pub function: &'static str,
    /// The C-ABI wrapper of `function` the probe attaches to, if not to `function` itself.
    pub via: Option<Via>,
    pub hook: Hook,
    /// For a gated hook: the runtime function read inside the gate, where it was found.
    pub callee: Option<Location>,
    /// The file `callee` is in.
    pub callee_file: Option<String>,
    /// Each input and the register it is read from, e.g. `completion (by reference) in rsi`.
    pub inputs: Vec<String>,
    pub required: bool,
    pub yields: &'static str,
    pub locations: Vec<Location>,
}

#[derive(Debug, Serialize)]
pub struct Location {
    pub symbol: String,
    pub address: u64,
    pub file_offset: u64,
}

impl From<&FunctionSymbol> for Location {
    fn from(f: &FunctionSymbol) -> Self {
        Self {
            symbol: f.mangled.clone(),
            address: f.address,
            file_offset: f.file_offset,
        }
    }
}

const REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

fn describe_inputs(planned: &PlannedProbe, registers: [u8; 2]) -> Vec<String> {
    let of_callee = planned
        .point
        .hook
        .callee()
        .map(|(callee, _)| format!(" of {callee}"))
        .unwrap_or_default();
    planned
        .point
        .inputs
        .iter()
        .zip(registers)
        .filter_map(|(input, register)| {
            let register = REGISTERS.get(usize::from(register)).unwrap_or(&"?");
            match input {
                Input::None => None,
                Input::Address(name) => Some(format!("address of `{name}` in {register}")),
                Input::Value(name) => Some(format!("`{name}` in {register}")),
                Input::ReturnSlot => Some(format!("return slot in {register}, read on return")),
                Input::CArgument(_) => Some(format!(
                    "argument in {register}{of_callee} (calling convention)"
                )),
            }
        })
        .collect()
}

/// `legacy`, `v0`, or `none` for a binary without a probe function.
fn mangling_of(symbol: Option<&FunctionSymbol>) -> &'static str {
    match symbol {
        Some(f) if f.mangled.starts_with("_R") => "v0",
        Some(_) => "legacy",
        None => "none",
    }
}

/// Everything about one binary and its plan (or the refusal, which is part of the report).
pub fn report(name: String, image: &[u8], resolved: Result<Plan, PlanError>) -> Report {
    let found = versions::detect(image);
    let mut report = Report {
        binary: name,
        rustc: found.rustc.clone(),
        sdk_core: found.sdk_core.clone(),
        package: None,
        build_id: found.build_id.clone(),
        family: None,
        mangling: "none",
        layout_source: None,
        arguments_source: None,
        verification: None,
        candidates: Vec::new(),
        static_evidence: Vec::new(),
        verified_live: Vec::new(),
        probes: Vec::new(),
        not_covered: Vec::new(),
        refused: None,
    };
    let plan = match resolved {
        Ok(plan) => plan,
        Err(e) => {
            // A refused worker still shows its mangling, when it has symbols at all.
            if let Ok(symbols) = plan::symbols(image, &found) {
                report.mangling =
                    mangling_of(probes::probe_functions().find_map(|f| symbols.find(f).first()));
            }
            report.refused = Some(e.to_string());
            return report;
        }
    };
    report.mangling = mangling_of(plan.probes.iter().find_map(|p| p.functions.first()));
    report.sdk_core = plan.versions.sdk_core.clone();
    report.package = plan.versions.package.clone();
    report.family = Some(plan.family);
    let first = plan.candidates.first();
    report.layout_source = first.map(|c| c.layout_source.clone());
    report.arguments_source = first.map(|c| c.arguments_source.clone());
    report.verification = Some(plan.verification);
    report.candidates = plan.candidates.clone();
    report.static_evidence = plan.evidence.clone();
    if plan.verification == Verification::Live {
        report.verified_live = verify::RULES.to_vec();
    }
    report.not_covered = plan.not_covered();
    report.probes = plan
        .probes
        .iter()
        .enumerate()
        .map(|(i, planned)| ProbeReport {
            name: planned.spec.name,
            function: planned.point.function,
            via: planned.point.via,
            hook: planned.point.hook,
            callee: planned.callee.as_ref().map(|c| Location::from(&c.symbol)),
            callee_file: planned
                .callee
                .as_ref()
                .map(|c| c.file.display().to_string()),
            inputs: describe_inputs(
                planned,
                first
                    .and_then(|c| c.registers.get(i))
                    .copied()
                    .unwrap_or_default(),
            ),
            required: planned.spec.required,
            yields: planned.spec.yields,
            locations: planned.functions.iter().map(Location::from).collect(),
        })
        .collect();
    if plan.family.needs_layout()
        && let Some(Err(e)) = plan
            .candidates
            .iter()
            .map(|c| TargetLayout::kernel_layout(&c.layout))
            .find(Result::is_err)
    {
        report.refused = Some(e.to_string());
    }
    report
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let report = match (&args.binary, args.pid) {
        (Some(path), _) => {
            let image =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let resolved = plan::resolve_file(path, &image);
            report(path.display().to_string(), &image, resolved)
        }
        (None, Some(pid)) => {
            let target = Target::open(pid)?;
            let resolved = plan::resolve_target(&target);
            let name = format!("PID {pid} ({}: {})", target.exe_name, target.probed_name());
            report(name, &target.image, resolved)
        }
        (None, None) => anyhow::bail!("give a binary or --pid"),
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", render(&report)),
    }
    match &report.refused {
        // The text already says why; the exit status says that it cannot be observed.
        Some(_) => std::process::exit(1),
        None => Ok(()),
    }
}

fn render(r: &Report) -> String {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let mut out = format!("binary:    {}\n", r.binary);
    out.push_str(&format!("rustc:     {}\n", or_unknown(&r.rustc)));
    if let Some(package) = &r.package {
        out.push_str(&format!(
            "package:   {} {} (from {})\n",
            package.name,
            package.version,
            package.source.display()
        ));
    }
    out.push_str(&format!("sdk-core:  {}\n", or_unknown(&r.sdk_core)));
    if let Some(id) = &r.build_id {
        out.push_str(&format!("build id:  {id}\n"));
    }
    out.push_str(&format!("mangling:  {}\n", r.mangling));
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    if let Some(family) = r.family {
        out.push_str(&format!("reads:     {family}\n"));
    }
    if r.verification == Some(Verification::Live) {
        out.push_str(&format!(
            "layout:    not known for certain: {} candidate(s), read live until the first \
             records pick exactly one (nothing counts before that)\n",
            r.candidates.len()
        ));
        for (i, c) in r.candidates.iter().enumerate() {
            out.push_str(&format!("  candidate {i}: {}\n", c.label()));
        }
    } else {
        out.push_str(&format!(
            "layout:    {}\n",
            or_none(r.layout_source.as_ref().map(ToString::to_string))
        ));
        out.push_str(&format!(
            "registers: {}\n",
            or_none(r.arguments_source.as_ref().map(ToString::to_string))
        ));
    }
    for fact in &r.static_evidence {
        out.push_str(&format!("  static evidence: {fact}\n"));
    }
    // Empty unless the records decide.
    for rule in &r.verified_live {
        out.push_str(&format!("  verified live: {rule}\n"));
    }
    if !r.probes.is_empty() {
        out.push_str("probes:\n");
    }
    for p in &r.probes {
        let locations = p
            .locations
            .iter()
            .map(|l| format!("{:#x}", l.file_offset))
            .collect::<Vec<_>>()
            .join(", ");
        let hook = match p.hook {
            Hook::Entry { .. } => "entry",
            Hook::EntryAndReturn { .. } => "entry + return",
            Hook::Gated { .. } => "gate (entry + return)",
        };
        let mut function = match p.via {
            Some(Via::Caller(via)) => format!("{via} (the C-ABI wrapper of {})", p.function),
            Some(Via::InstanceFor(via)) => {
                format!("{via} (its C-ABI instance for {})", p.function)
            }
            None => p.function.to_string(),
        };
        if let Some((callee, _)) = p.hook.callee() {
            let place = match (&p.callee, &p.callee_file) {
                (Some(at), Some(file)) => format!("in {file} at file offset {:#x}", at.file_offset),
                _ => "in the process's runtime (found when attaching to a PID)".to_string(),
            };
            function.push_str(&format!(
                "\n    inside the gate: {callee} {place}, entry + return"
            ));
        }
        out.push_str(&format!(
            "  {:<16} {hook} at file offset {locations}\n    {function}\n    reads: {}\n    yields: {}\n",
            p.name,
            if p.inputs.is_empty() {
                "nothing (the hit is the news)".to_string()
            } else {
                p.inputs.join(", ")
            },
            p.yields
        ));
    }
    for fact in &r.not_covered {
        out.push_str(&format!("not covered: {fact}\n"));
    }
    match &r.refused {
        Some(why) => out.push_str(&format!("verdict:   cannot be observed: {why}\n")),
        None => out.push_str("verdict:   can be observed\n"),
    }
    out
}
