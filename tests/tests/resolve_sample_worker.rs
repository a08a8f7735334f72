//! Symbol, version and layout resolution on the real sample worker binary (no root needed).

use std::path::PathBuf;

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _};
use temporal_observer::{
    layout::{SHIPPED_TABLE, TargetLayout, dwarf::DwarfSections, from_table},
    probes::PROBES,
    resolve::{LayoutSource, resolve},
    symbols::SymbolIndex,
};

fn fixture(profile: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/worker/target")
        .join(profile)
        .join("sample-worker");
    std::fs::read(&path).with_context(|| {
        format!(
            "missing {} (run `cargo xtask test`, which builds it)",
            path.display()
        )
    })
}

#[test]
fn the_release_worker_resolves_every_probe_once_with_the_shipped_layout() -> anyhow::Result<()> {
    let image = fixture("release")?;
    let resolved = resolve(&image)?;
    assert_eq!(resolved.versions.sdk_core.as_deref(), Some("0.10.1"));
    assert_eq!(resolved.versions.rustc.as_deref(), Some("1.95.0"));
    assert_eq!(
        resolved.layout_source,
        LayoutSource::Table,
        "a default release build has no DWARF"
    );
    assert_eq!(resolved.plan.len(), PROBES.len());
    for planned in &resolved.plan {
        assert_eq!(
            planned.functions.len(),
            1,
            "{}: {:?}",
            planned.spec.function,
            planned.functions
        );
        let f = &planned.functions[0];
        assert!(
            f.mangled.starts_with("_ZN") && f.mangled.ends_with('E'),
            "legacy mangling: {}",
            f.mangled
        );
        assert!(f.file_offset > 0 && f.file_offset < image.len() as u64);
    }
    // Each file offset is where the uprobe lands: the bytes there are the bytes the ELF maps at
    // the function's address.
    let elf = object::File::parse(&*image)?;
    for planned in &resolved.plan {
        let f = &planned.functions[0];
        let mapped = elf
            .sections()
            .find_map(|s| {
                let start = s.address();
                (start <= f.address && f.address < start + s.size())
                    .then(|| s.data().ok())
                    .flatten()
                    .map(|d| {
                        let at = (f.address - start) as usize;
                        d[at..at + 16].to_vec()
                    })
            })
            .context("no section holds the function")?;
        let at = f.file_offset as usize;
        assert_eq!(&image[at..at + 16], mapped.as_slice(), "{}", f.path);
    }
    let symbols = SymbolIndex::from_elf(&image)?;
    assert!(symbols.len() > 10_000, "{} symbols", symbols.len());
    Ok(())
}

#[test]
fn dwarf_of_the_layout_build_gives_exactly_the_shipped_layout() -> anyhow::Result<()> {
    let image = fixture("layout-gen")?;
    let sections = DwarfSections::load(&image)?;
    let types = sections.types()?;
    let from_dwarf = TargetLayout::from_dwarf(&types, "0.10.1", "1.95.0")?;
    let shipped = from_table(SHIPPED_TABLE, "0.10.1", "1.95.0")?;
    assert_eq!(from_dwarf, shipped);
    // And a worker with that DWARF is resolved from it rather than from the table.
    assert_eq!(resolve(&image)?.layout_source, LayoutSource::Dwarf);
    Ok(())
}
