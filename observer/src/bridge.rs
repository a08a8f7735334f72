//! SDK bridges: sdk-core built into a shared library that a language runtime loads (the Python
//! SDK's `temporal_sdk_bridge*.so`, the TypeScript SDK's `@temporalio/core-bridge/…/index.node`).
//! What such a library is, which versions it carries (from the package installed next to it,
//! since the library names none), where its C-ABI wrappers are, and what a runtime's file
//! exports. Pure but for reading the package's files: paths and bytes in, facts out.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::symbols::{FunctionSymbol, SymbolIndex};

/// The language runtime that loads a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Python,
    Node,
}

impl Runtime {
    /// `process.runtime.name` as OpenTelemetry's conventions spell it.
    pub fn otel_name(self) -> &'static str {
        match self {
            Self::Python => "cpython",
            Self::Node => "nodejs",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Python => "Python",
            Self::Node => "Node.js",
        })
    }
}

impl Runtime {
    /// The bridge file as users know it, for messages.
    pub fn bridge_file(self) -> &'static str {
        match self {
            Self::Python => "temporalio's temporal_sdk_bridge*.so",
            Self::Node => "@temporalio/core-bridge's index.node",
        }
    }

    /// Whether an executable of this name is this runtime's interpreter.
    pub fn runs(self, exe_name: &str) -> bool {
        match self {
            Self::Python => exe_name.starts_with("python"),
            Self::Node => exe_name == "node" || exe_name.starts_with("nodejs"),
        }
    }
}

/// The runtime a mapped file's name says it is a bridge for, if it is one.
pub fn bridge_runtime(path: &Path) -> Option<Runtime> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with("temporal_sdk_bridge") && name.contains(".so") {
        return Some(Runtime::Python);
    }
    // A native module (`*.node`) inside the `@temporalio/core-bridge` package, wherever the
    // package manager put it (npm, yarn, pnpm's `.pnpm/…/node_modules/@temporalio/…`).
    (name.ends_with(".node") && core_bridge_dir(path).is_some()).then_some(Runtime::Node)
}

/// The `@temporalio/core-bridge` package directory a file is in.
fn core_bridge_dir(path: &Path) -> Option<&Path> {
    path.ancestors().find(|dir| {
        dir.file_name().is_some_and(|n| n == "core-bridge")
            && dir
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "@temporalio")
    })
}

/// The versions installed with a bridge of this runtime.
pub fn installed(runtime: Runtime, library: &Path) -> Installed {
    match runtime {
        Runtime::Python => installed_python(library),
        Runtime::Node => installed_node(library),
    }
}

/// The SDK package a bridge came with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Package {
    /// e.g. `temporalio` (PyPI).
    pub name: String,
    pub version: String,
    /// The file the version was read from.
    pub source: PathBuf,
}

/// What the files installed next to a bridge say about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub package: Option<Package>,
    /// sdk-core's version, from the lock file the package ships with the bridge's source.
    pub sdk_core: Option<String>,
}

/// Reads the versions installed with the Python bridge at `library`
/// (`…/site-packages/temporalio/bridge/temporal_sdk_bridge*.so`): the wheel's
/// `temporalio-*.dist-info/METADATA`, and the `Cargo.lock` it ships next to the library.
pub fn installed_python(library: &Path) -> Installed {
    let bridge_dir = library.parent();
    let sdk_core = bridge_dir
        .and_then(|dir| std::fs::read_to_string(dir.join("Cargo.lock")).ok())
        .and_then(|lock| locked_version(&lock, "temporalio-sdk-core"));
    let site_packages = bridge_dir.and_then(Path::parent).and_then(Path::parent);
    let package = site_packages.and_then(|dir| {
        let entries = std::fs::read_dir(dir).ok()?;
        entries.filter_map(Result::ok).find_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            if !(name.starts_with("temporalio-") && name.ends_with(".dist-info")) {
                return None;
            }
            let source = entry.path().join("METADATA");
            let metadata = std::fs::read_to_string(&source).ok()?;
            let (name, version) = metadata_name_version(&metadata)?;
            Some(Package {
                name,
                version,
                source,
            })
        })
    });
    Installed { package, sdk_core }
}

/// Reads the versions installed with the TypeScript bridge at `library`
/// (`…/@temporalio/core-bridge/releases/<target>/index.node`): the package's `package.json`
/// (only if it names `@temporalio/core-bridge`) and the `Cargo.lock` it ships with the
/// bridge's source, both in the package's directory.
pub fn installed_node(library: &Path) -> Installed {
    const PACKAGE: &str = "@temporalio/core-bridge";
    let Some(root) = core_bridge_dir(library) else {
        return Installed::default();
    };
    let source = root.join("package.json");
    let package = std::fs::read_to_string(&source)
        .ok()
        .and_then(|text| package_name_version(&text))
        .filter(|(name, _)| name == PACKAGE)
        .map(|(name, version)| Package {
            name,
            version,
            source,
        });
    if package.is_none() {
        return Installed::default();
    }
    let sdk_core = std::fs::read_to_string(root.join("Cargo.lock"))
        .ok()
        .and_then(|lock| locked_version(&lock, "temporalio-sdk-core"));
    Installed { package, sdk_core }
}

/// `name` and `version` of an npm `package.json`.
pub fn package_name_version(package_json: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(package_json).ok()?;
    let field = |key: &str| value.get(key)?.as_str().map(str::to_string);
    Some((field("name")?, field("version")?))
}

/// `Name:` and `Version:` of a Python package's core metadata.
pub fn metadata_name_version(metadata: &str) -> Option<(String, String)> {
    let field = |key: &str| {
        metadata
            .lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    Some((field("Name:")?, field("Version:")?))
}

/// The version of package `name` in a `Cargo.lock`.
pub fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return version.strip_suffix('"').map(str::to_string);
        }
    }
    None
}

/// The dynamic loader an executable names (`PT_INTERP`), e.g. `/lib64/ld-linux-x86-64.so.2`.
pub fn interpreter(executable: &[u8]) -> Option<PathBuf> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(executable).ok()?;
    let endian = elf.endian();
    elf.elf_program_headers().iter().find_map(|header| {
        let interp = header.interpreter(endian, executable).ok()??;
        let text = std::str::from_utf8(interp).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\0')))
    })
}

/// The function the dynamic loader calls each time it has changed the set of loaded libraries,
/// for debuggers (glibc's `r_brk`). A uprobe there sees every `dlopen` of a process.
pub const LOADER_HOOK: &str = "_dl_debug_state";

/// The file offset of [`LOADER_HOOK`] in a dynamic loader (it is exported, so it survives
/// `strip`).
pub fn loader_hook_offset(loader: &[u8]) -> Option<u64> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(loader).ok()?;
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(LOADER_HOOK) && s.is_definition())?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (file_start, _) = section.file_range()?;
    Some(file_start + symbol.address().checked_sub(section.address())?)
}

/// The functions among `candidates` whose code refers to `target`: calls it, jumps to it, or
/// takes its address (`lea reg, [rip + disp]`), as a C-ABI wrapper does with the Rust function
/// it wraps. `image` is the file the symbols' `file_offset`s point into.
pub fn wrappers_of<'a>(
    image: &[u8],
    candidates: &'a [FunctionSymbol],
    target: u64,
) -> Vec<&'a FunctionSymbol> {
    candidates
        .iter()
        .filter(|f| {
            let start = usize::try_from(f.file_offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(f.size).unwrap_or(0));
            image
                .get(start..end)
                .is_some_and(|code| refers_to(code, f.address, target))
        })
        .collect()
}

/// Whether x86-64 code at `address` holds a rip-relative `call`/`jmp rel32` or a
/// `lea r64, [rip + disp32]` whose target is `target`. A byte scan, not a disassembly: a match
/// inside another instruction's bytes is possible but needs the exact 32-bit displacement, and
/// the caller requires exactly one wrapper to match.
pub fn refers_to(code: &[u8], address: u64, target: u64) -> bool {
    let hits = |at: usize, len: usize| -> bool {
        let Some(disp) = code.get(at + len - 4..at + len) else {
            return false;
        };
        let disp = i32::from_le_bytes([disp[0], disp[1], disp[2], disp[3]]);
        let next = address.wrapping_add((at + len) as u64);
        next.wrapping_add_signed(i64::from(disp)) == target
    };
    (0..code.len()).any(|i| match code[i] {
        0xe8 | 0xe9 => hits(i, 5),
        0x48 | 0x4c => {
            code.get(i + 1) == Some(&0x8d)
                && code.get(i + 2).is_some_and(|modrm| modrm & 0xc7 == 0x05)
                && hits(i, 7)
        }
        _ => false,
    })
}

/// A function `image` exports by this name (its dynamic symbol table), as a probe target: how
/// a language runtime's C API (Node-API) is found in the executable or library that has it.
/// `image` is the file's bytes, or a `ReadCache` over it (a runtime's executable is large, and
/// only its dynamic symbols are wanted).
pub fn exported_function<'data, R: object::ReadRef<'data>>(
    image: R,
    name: &str,
) -> Option<FunctionSymbol> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(image).ok()?;
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name) && s.is_definition())?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let (file_start, _) = section.file_range()?;
    Some(FunctionSymbol {
        path: name.to_string(),
        mangled: name.to_string(),
        address: symbol.address(),
        size: symbol.size(),
        file_offset: file_start + symbol.address().checked_sub(section.address())?,
    })
}

/// The instances of the generic function `generic` whose type arguments name `function`
/// (as a whole path: not `function_impl`).
pub fn instances_for(symbols: &SymbolIndex, generic: &str, function: &str) -> Vec<FunctionSymbol> {
    instances(symbols, generic)
        .into_iter()
        .filter(|f| {
            f.path.match_indices(function).any(|(at, _)| {
                let before = f.path[..at].chars().next_back();
                let after = f.path[at + function.len()..].chars().next();
                matches!(before, Some('<' | ' ' | ',')) && matches!(after, Some('>' | ',' | ' '))
            })
        })
        .collect()
}

/// Every instance of a generic function: `path` itself and `path::<…>`.
pub fn instances(symbols: &SymbolIndex, path: &str) -> Vec<FunctionSymbol> {
    let generic = format!("{path}::<");
    symbols
        .iter()
        .filter(|f| f.path == path || f.path.starts_with(&generic))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_wheel_metadata_and_the_shipped_lock_file() {
        let site = tempfile::tempdir().expect("tempdir");
        let bridge = site.path().join("temporalio/bridge");
        std::fs::create_dir_all(&bridge).expect("mkdir");
        let library = bridge.join("temporal_sdk_bridge.abi3.so");
        std::fs::write(&library, b"").expect("write");
        std::fs::write(
            bridge.join("Cargo.lock"),
            "[[package]]\nname = \"temporalio-sdk\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"temporalio-sdk-core\"\nversion = \"0.10.0\"\n",
        )
        .expect("write");
        let info = site.path().join("temporalio-1.35.0.dist-info");
        std::fs::create_dir_all(&info).expect("mkdir");
        std::fs::write(
            info.join("METADATA"),
            "Metadata-Version: 2.4\nName: temporalio\nVersion: 1.35.0\n\nVersion: not this\n",
        )
        .expect("write");
        let installed = installed_python(&library);
        assert_eq!(installed.sdk_core.as_deref(), Some("0.10.0"));
        let package = installed.package.expect("a package");
        assert_eq!(
            (package.name.as_str(), package.version.as_str()),
            ("temporalio", "1.35.0")
        );
        assert_eq!(package.source, info.join("METADATA"));
        assert_eq!(
            installed_python(Path::new("/nonexistent/bridge/x.so")),
            Installed::default()
        );
    }

    #[test]
    fn the_loader_hook_is_found_through_this_process_interpreter() {
        let me = std::fs::read("/proc/self/exe").expect("read self");
        let loader = interpreter(&me).expect("a dynamically linked test binary names its loader");
        assert!(
            loader.to_string_lossy().contains("ld-linux"),
            "{}",
            loader.display()
        );
        let image = std::fs::read(&loader).expect("read the loader");
        let offset = loader_hook_offset(&image).expect("glibc's loader exports _dl_debug_state");
        assert!(offset > 0 && offset < image.len() as u64);
        assert_eq!(loader_hook_offset(b"not an ELF file"), None);
    }

    #[test]
    fn node_versions_come_from_the_package_json_and_the_shipped_lock_file() {
        let modules = tempfile::tempdir().expect("tempdir");
        let package = modules.path().join("@temporalio/core-bridge");
        let release = package.join("releases/x86_64-unknown-linux-gnu");
        std::fs::create_dir_all(&release).expect("mkdir");
        let library = release.join("index.node");
        std::fs::write(&library, b"").expect("write");
        std::fs::write(
            package.join("package.json"),
            r#"{"name": "@temporalio/core-bridge", "version": "1.24.0", "dependencies": {"x": "1"}}"#,
        )
        .expect("write");
        std::fs::write(
            package.join("Cargo.lock"),
            "[[package]]\nname = \"temporalio-sdk-core\"\nversion = \"0.7.0\"\n",
        )
        .expect("write");
        let installed = installed(Runtime::Node, &library);
        assert_eq!(installed.sdk_core.as_deref(), Some("0.7.0"));
        let found = installed.package.expect("a package");
        assert_eq!(
            (found.name.as_str(), found.version.as_str()),
            ("@temporalio/core-bridge", "1.24.0")
        );
        assert_eq!(found.source, package.join("package.json"));
        assert_eq!(bridge_runtime(&library), Some(Runtime::Node));
        // Another package's manifest is not the bridge's.
        std::fs::write(
            package.join("package.json"),
            r#"{"name": "my-app", "version": "3.0.0"}"#,
        )
        .expect("write");
        assert_eq!(installed_node(&library), Installed::default());
    }

    #[test]
    fn an_instance_is_found_by_the_function_its_type_arguments_name() {
        let index: SymbolIndex = [
            (1, "neon::sys::fun::call_boxed::<<neon::JsFunction>::new_internal<neon::ModuleContext, bridge::worker::complete, neon::JsPromise>::{{closure}}>"),
            (2, "neon::sys::fun::call_boxed::<<neon::JsFunction>::new_internal<neon::ModuleContext, bridge::worker::complete_impl, neon::JsPromise>::{{closure}}>"),
            (3, "neon::sys::fun::other::<bridge::worker::complete>"),
        ]
        .into_iter()
        .map(|(address, path)| FunctionSymbol {
            path: path.into(),
            mangled: path.into(),
            address,
            size: 1,
            file_offset: address,
        })
        .collect();
        let found = instances_for(
            &index,
            "neon::sys::fun::call_boxed",
            "bridge::worker::complete",
        );
        assert_eq!(found.iter().map(|f| f.address).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn this_process_exports_nothing_and_its_loader_exports_the_hook() {
        let me = std::fs::read("/proc/self/exe").expect("read self");
        assert_eq!(
            exported_function(me.as_slice(), "napi_get_buffer_info"),
            None
        );
        let path = interpreter(&me).expect("a loader");
        let loader = std::fs::read(&path).expect("read the loader");
        let hook = exported_function(loader.as_slice(), LOADER_HOOK).expect("exported");
        assert_eq!(Some(hook.file_offset), loader_hook_offset(&loader));
        // The same through a read cache over the file, as the runtime's files are read.
        let cache = object::ReadCache::new(std::fs::File::open(&path).expect("open the loader"));
        assert_eq!(exported_function(&cache, LOADER_HOOK), Some(hook));
    }

    #[test]
    fn a_bridge_is_known_by_its_file_name() {
        assert_eq!(
            bridge_runtime(Path::new(
                "/x/temporalio/bridge/temporal_sdk_bridge.abi3.so"
            )),
            Some(Runtime::Python)
        );
        assert_eq!(
            bridge_runtime(Path::new("/usr/lib/libpython3.11.so.1.0")),
            None
        );
        assert_eq!(
            bridge_runtime(Path::new(
                "/app/node_modules/.pnpm/@temporalio+core-bridge@1.24.0/node_modules/@temporalio/core-bridge/releases/x86_64-unknown-linux-gnu/index.node"
            )),
            Some(Runtime::Node)
        );
        assert_eq!(
            bridge_runtime(Path::new(
                "/app/node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node"
            )),
            None
        );
    }

    #[test]
    fn a_wrapper_is_found_by_the_address_its_code_takes() {
        // lea rax, [rip + disp] at 0x1000 + 4, pointing at 0x2000; then a call elsewhere.
        let lea_at = 4usize;
        let disp = 0x2000i64 - (0x1000 + lea_at as i64 + 7);
        let mut code = vec![0x90; 4];
        code.extend_from_slice(&[0x48, 0x8d, 0x05]);
        code.extend_from_slice(&(disp as i32).to_le_bytes());
        code.extend_from_slice(&[0xe8, 0, 0, 0, 0, 0xc3]);
        assert!(refers_to(&code, 0x1000, 0x2000));
        assert!(!refers_to(&code, 0x1000, 0x2004));
        // The call at offset 11 targets the next instruction (0x1000 + 16).
        assert!(refers_to(&code, 0x1000, 0x1010));
        let image: Vec<u8> = [vec![0u8; 0x100], code.clone()].concat();
        let wrapper = |address: u64, file_offset: u64| FunctionSymbol {
            path: "w".into(),
            mangled: "w".into(),
            address,
            size: code.len() as u64,
            file_offset,
        };
        let candidates = [wrapper(0x1000, 0x100), wrapper(0x3000, 0x100)];
        let found = wrappers_of(&image, &candidates, 0x2000);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address, 0x1000);
    }
}
