//! Checks on the sample worker's DWARF builds (`layout-gen`, `lto-layout-gen`): that the
//! shipped layout table is what their DWARF says, that debug info does not change the code, and
//! that a worker with DWARF is observed through it. These builds exist only when the layout
//! table is generated or its inputs changed, so `cargo xtask gen-layouts` runs this file right
//! after making them (`test = false` in Cargo.toml keeps it out of a plain `cargo test`); when
//! no input changed, the record in `observer/layouts.inputs.json` says they passed for exactly
//! these inputs.

use std::path::PathBuf;

use anyhow::Context as _;
use temporal_observer::{
    arguments,
    layout::{SHIPPED_TABLE, TargetLayout, dwarf::DwarfSections, from_table},
    plan::{ArgumentsSource, LayoutSource, resolve},
    probes,
    symbols::SymbolIndex,
    verify::Verification,
};

fn fixture(profile: &str) -> anyhow::Result<Vec<u8>> {
    let path = fixture_path(profile);
    std::fs::read(&path).with_context(|| {
        format!(
            "missing {} (`cargo xtask gen-layouts` builds it before running these checks)",
            path.display()
        )
    })
}

fn fixture_path(profile: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/worker/target")
        .join(profile)
        .join("sample-worker")
}

#[test]
fn dwarf_of_the_layout_build_gives_exactly_the_shipped_layout() -> anyhow::Result<()> {
    let image = fixture("layout-gen")?;
    let sections = DwarfSections::load(&image)?;
    let types = sections.types()?;
    let from_dwarf = TargetLayout::from_dwarf(&types, "0.10.1", "1.95.0")?;
    let mut shipped = from_table(SHIPPED_TABLE, "0.10.1", "1.95.0")?;
    let shipped_arguments = std::mem::take(&mut shipped.arguments);
    assert_eq!(from_dwarf, shipped);
    // The table's registers for the release build are what this build's DWARF says.
    let symbols = SymbolIndex::from_elf(&image)?;
    let release = shipped_arguments
        .iter()
        .find(|b| b.build == "release")
        .context("the table has no release build")?;
    assert_eq!(
        arguments::read(&symbols, &types, probes::probe_functions())?,
        release.functions
    );
    // And a worker with that DWARF is resolved from it rather than from the table.
    let resolved = resolve(&image)?;
    assert_eq!(resolved.verification, Verification::Certain);
    let [only] = resolved.candidates.as_slice() else {
        anyhow::bail!(
            "{} candidates for a binary with DWARF",
            resolved.candidates.len()
        );
    };
    assert_eq!(only.layout_source, LayoutSource::Dwarf);
    assert_eq!(only.arguments_source, ArgumentsSource::Dwarf);
    Ok(())
}

/// The LTO build's DWARF gives the table's LTO registers and the same layout, and it is the same
/// code as the LTO build users ship.
#[test]
fn the_lto_dwarf_build_gives_the_lto_registers_and_the_same_code() -> anyhow::Result<()> {
    let resolved = resolve(&fixture("lto")?)?;
    let with_dwarf = fixture("lto-layout-gen")?;
    let sections = DwarfSections::load(&with_dwarf)?;
    let types = sections.types()?;
    let symbols = SymbolIndex::from_elf(&with_dwarf)?;
    let mut shipped = from_table(SHIPPED_TABLE, "0.10.1", "1.95.0")?;
    let lto = shipped
        .arguments
        .iter()
        .find(|b| b.build == "lto")
        .context("the table has no lto build")?;
    assert_eq!(
        arguments::read(&symbols, &types, probes::probe_functions())?,
        lto.functions
    );
    shipped.arguments.clear();
    assert_eq!(
        TargetLayout::from_dwarf(&types, "0.10.1", "1.95.0")?,
        shipped
    );
    // The same code with and without DWARF: each probed function has the same size in both.
    for planned in &resolved.probes {
        let f = &planned.functions[0];
        assert_eq!(
            symbols.find(planned.point.function).first().map(|s| s.size),
            Some(f.size),
            "{}",
            f.path
        );
    }
    Ok(())
}

#[test]
fn inspect_reads_a_worker_with_dwarf_from_its_dwarf() -> anyhow::Result<()> {
    let output = std::process::Command::new(e2e::observer_binary()?)
        .args(["inspect", "--output", "json"])
        .arg(fixture_path("layout-gen"))
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert!(output.status.success(), "{report}");
    assert_eq!(report["layout_source"], "dwarf");
    assert_eq!(report["arguments_source"], "dwarf");
    Ok(())
}
