//! Function symbols of an ELF binary, by demangled Rust path.
//!
//! Pure: it reads bytes, never the kernel. Legacy (`_ZN…17h<hash>E`) and v0 (`_R…`) manglings are
//! both reduced to one normalized path with no hash, no crate disambiguator and legacy-style
//! closure names, so a probe table entry matches every build of the same source.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

/// A function the binary defines.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionSymbol {
    /// Normalized demangled path, e.g. `temporalio_sdk_core::worker::Worker::initiate_shutdown`.
    pub path: String,
    /// The name as stored in the symbol table.
    pub mangled: String,
    /// Virtual address of the first instruction.
    pub address: u64,
    pub size: u64,
    /// Offset of the first instruction in the file: what a uprobe attaches to.
    pub file_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("not an ELF file we can read: {0}")]
    Parse(#[from] object::Error),
    #[error(
        "the binary has no symbol table (it was stripped); build the worker without \
         `strip = \"symbols\"` (e.g. `strip = \"debuginfo\"` or `strip = false` in [profile.release])"
    )]
    Stripped,
}

/// Every function symbol of one binary, indexed by normalized path.
#[derive(Debug, Default)]
pub struct SymbolIndex {
    by_path: HashMap<String, Vec<FunctionSymbol>>,
    count: usize,
}

impl SymbolIndex {
    /// Reads `.symtab` (and `.dynsym`) of an ELF image.
    pub fn from_elf(data: &[u8]) -> Result<Self, SymbolError> {
        let file = object::File::parse(data)?;
        let sections: Vec<_> = file.sections().collect();
        // Without `.symtab` only exported symbols remain, and sdk-core exports none.
        if file.section_by_name(".symtab").is_none() {
            return Err(SymbolError::Stripped);
        }
        let mut index = SymbolIndex::default();
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            if symbol.kind() != SymbolKind::Text || !symbol.is_definition() {
                continue;
            }
            let Ok(mangled) = symbol.name() else { continue };
            let Some(section) = symbol
                .section_index()
                .and_then(|i| sections.iter().find(|s| s.index() == i))
            else {
                continue;
            };
            if section.kind() != SectionKind::Text {
                continue;
            }
            let Some((file_start, _)) = section.file_range() else {
                continue;
            };
            let Some(delta) = symbol.address().checked_sub(section.address()) else {
                continue;
            };
            index.insert(FunctionSymbol {
                path: normalize(mangled),
                mangled: mangled.to_string(),
                address: symbol.address(),
                size: symbol.size(),
                file_offset: file_start + delta,
            });
        }
        Ok(index)
    }

    fn insert(&mut self, symbol: FunctionSymbol) {
        let entries = self.by_path.entry(symbol.path.clone()).or_default();
        // .symtab and .dynsym often list the same function.
        if !entries.iter().any(|e| e.address == symbol.address) {
            entries.push(symbol);
            self.count += 1;
        }
    }

    /// Every function with exactly this normalized path (several monomorphizations can share one).
    pub fn find(&self, path: &str) -> &[FunctionSymbol] {
        self.by_path.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// How many functions have a path starting with `prefix` (e.g. `temporalio_sdk_core::`).
    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        self.by_path
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, v)| v.len())
            .sum()
    }

    /// Every function.
    pub fn iter(&self) -> impl Iterator<Item = &FunctionSymbol> {
        self.by_path.values().flatten()
    }

    /// Number of distinct function symbols.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl FromIterator<FunctionSymbol> for SymbolIndex {
    fn from_iter<I: IntoIterator<Item = FunctionSymbol>>(symbols: I) -> Self {
        let mut index = Self::default();
        for symbol in symbols {
            index.insert(symbol);
        }
        index
    }
}

/// Demangles a symbol name into the normalized path the probe table uses.
///
/// - the legacy hash (`::h0123…`) and v0 crate disambiguators (`[1a2b…]`) are dropped
///   (`rustc-demangle`'s alternate format);
/// - v0 closures `{closure#0}` become legacy `{{closure}}`;
/// - a v0 inherent impl `<path::Type>::method` becomes `path::Type::method`, as legacy has it.
///
/// A name that is not Rust-mangled is returned unchanged.
pub fn normalize(mangled: &str) -> String {
    let demangled = format!("{:#}", rustc_demangle::demangle(mangled));
    let mut out = String::with_capacity(demangled.len());
    let mut rest = demangled.as_str();
    while let Some(start) = rest.find("{closure#") {
        out.push_str(&rest[..start]);
        out.push_str("{{closure}}");
        rest = match rest[start..].find('}') {
            Some(end) => &rest[start + end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    strip_inherent_impl_brackets(&out)
}

/// `<a::B>::c` -> `a::B::c`, but `<a::B as T>::c` stays as it is.
fn strip_inherent_impl_brackets(path: &str) -> String {
    if !path.starts_with('<') {
        return path.to_string();
    }
    let mut depth = 0usize;
    for (i, ch) in path.char_indices() {
        match ch {
            '<' => depth += 1,
            '>' => {
                depth -= 1;
                if depth == 0 {
                    let inner = &path[1..i];
                    let after = &path[i + 1..];
                    if inner.contains(" as ") || !after.starts_with("::") {
                        return path.to_string();
                    }
                    return format!("{inner}{after}");
                }
            }
            _ => {}
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_lose_their_hash() {
        assert_eq!(
            normalize(
                "_ZN19temporalio_sdk_core6worker8workflow19validate_completion17h0123456789abcdefE"
            ),
            "temporalio_sdk_core::worker::workflow::validate_completion"
        );
        // Another build of the same function: another hash, the same path.
        assert_eq!(
            normalize(
                "_ZN19temporalio_sdk_core6worker8workflow19validate_completion17hfedcba9876543210E"
            ),
            "temporalio_sdk_core::worker::workflow::validate_completion"
        );
    }

    #[test]
    fn legacy_closures_and_methods() {
        assert_eq!(
            normalize(
                "_ZN19temporalio_sdk_core6worker6Worker17initiate_shutdown17h1111111111111111E"
            ),
            "temporalio_sdk_core::worker::Worker::initiate_shutdown"
        );
        assert_eq!(
            normalize("_ZN3foo3bar28_$u7b$$u7b$closure$u7d$$u7d$17h2222222222222222E"),
            "foo::bar::{{closure}}"
        );
    }

    // Names below are what rustc emitted for the same source with each mangling scheme.
    #[test]
    fn v0_names_match_legacy_paths() {
        let pairs = [
            (
                "_RNvMNtCsdcvmhZZjVFY_19temporalio_sdk_core6workerNtB2_6Worker17initiate_shutdown",
                "_ZN19temporalio_sdk_core6worker6Worker17initiate_shutdown17h50e48b9196bc1ee2E",
                "temporalio_sdk_core::worker::Worker::initiate_shutdown",
            ),
            (
                "_RNvNtNtCsdcvmhZZjVFY_19temporalio_sdk_core6worker8workflow12with_closure",
                "_ZN19temporalio_sdk_core6worker8workflow12with_closure17h660b9ea5c78ac622E",
                "temporalio_sdk_core::worker::workflow::with_closure",
            ),
            (
                "_RNCNvNtNtCsdcvmhZZjVFY_19temporalio_sdk_core6worker8workflow12with_closure0B7_",
                "_ZN19temporalio_sdk_core6worker8workflow12with_closure28_$u7b$$u7b$closure$u7d$$u7d$17h60bc42f3fb6a4d22E",
                "temporalio_sdk_core::worker::workflow::with_closure::{{closure}}",
            ),
        ];
        for (v0, legacy, path) in pairs {
            assert_eq!(normalize(v0), path, "v0 {v0}");
            assert_eq!(normalize(legacy), path, "legacy {legacy}");
        }
    }

    /// A small ELF with one text section and symbols in both manglings.
    fn synthetic_elf(symbols: &[(&str, u64)], with_symtab: bool) -> Vec<u8> {
        use object::write::{Object as WObject, Symbol, SymbolSection};
        let mut obj = WObject::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = obj.section_id(object::write::StandardSection::Text);
        obj.append_section_data(text, &[0xc3; 0x100], 16);
        if with_symtab {
            for (name, value) in symbols {
                obj.add_symbol(Symbol {
                    name: name.as_bytes().to_vec(),
                    value: *value,
                    size: 8,
                    kind: SymbolKind::Text,
                    scope: object::SymbolScope::Linkage,
                    weak: false,
                    section: SymbolSection::Section(text),
                    flags: object::SymbolFlags::None,
                });
            }
        }
        obj.write().expect("write synthetic ELF")
    }

    #[test]
    fn index_finds_both_manglings_with_file_offsets() {
        let elf = synthetic_elf(
            &[
                (
                    "_ZN19temporalio_sdk_core6worker6Worker17initiate_shutdown17h50e48b9196bc1ee2E",
                    0x10,
                ),
                (
                    "_RNvMNtCsdcvmhZZjVFY_19temporalio_sdk_core6workerNtB2_6Worker17initiate_shutdown",
                    0x20,
                ),
                (
                    "_RNvNtNtCsdcvmhZZjVFY_19temporalio_sdk_core6worker8workflow12with_closure",
                    0x30,
                ),
            ],
            true,
        );
        let index = SymbolIndex::from_elf(&elf).expect("parse");
        let found = index.find("temporalio_sdk_core::worker::Worker::initiate_shutdown");
        assert_eq!(found.len(), 2);
        let file = object::File::parse(&*elf).expect("parse");
        let text = file.section_by_name(".text").expect("text");
        let (text_offset, _) = text.file_range().expect("range");
        let mut offsets: Vec<u64> = found.iter().map(|s| s.file_offset).collect();
        offsets.sort();
        assert_eq!(offsets, vec![text_offset + 0x10, text_offset + 0x20]);
        assert_eq!(index.count_with_prefix("temporalio_sdk_core::"), 3);
        assert!(
            index
                .find("temporalio_sdk_core::worker::Worker::new")
                .is_empty()
        );
    }

    /// What `strip = "symbols"` leaves: the same ELF without `.symtab` and `.strtab`.
    fn strip(elf: &[u8]) -> Vec<u8> {
        let mut builder = object::build::elf::Builder::read(elf).expect("read ELF");
        for symbol in builder.symbols.iter_mut() {
            symbol.delete = true;
        }
        for section in builder.sections.iter_mut() {
            if matches!(section.name.as_slice(), b".symtab" | b".strtab") {
                section.delete = true;
            }
        }
        let mut out = Vec::new();
        builder.write(&mut out).expect("write ELF");
        out
    }

    #[test]
    fn a_binary_without_symbols_is_reported_stripped() {
        let elf = synthetic_elf(&[("_ZN3foo3bar17h0123456789abcdefE", 0x10)], true);
        assert!(SymbolIndex::from_elf(&elf).is_ok());
        assert!(matches!(
            SymbolIndex::from_elf(&strip(&elf)),
            Err(SymbolError::Stripped)
        ));
    }

    #[test]
    fn trait_impls_and_plain_names_are_kept() {
        assert_eq!(
            strip_inherent_impl_brackets("<a::B as c::D>::e"),
            "<a::B as c::D>::e"
        );
        assert_eq!(normalize("main"), "main");
        assert_eq!(normalize("memcpy"), "memcpy");
    }
}
