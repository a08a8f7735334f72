//! Which register holds each parameter of a probed function at its first instruction.
//!
//! Register use of Rust's internal functions is not an ABI: under LTO, arguments that a function
//! does not use are dropped and the others move. So, like layouts, it is read from DWARF: the
//! target's own when it has it, otherwise the shipped table, which `cargo xtask gen-layouts`
//! fills from DWARF builds of the sample worker in each release profile. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    layout::dwarf::{DwarfError, DwarfTypes, EntryLocation, Param},
    symbols::SymbolIndex,
};

/// Where one parameter is at entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamAt {
    /// Argument register, counted in x86-64 System V order (0 = rdi, 1 = rsi, ... 5 = r9).
    pub register: u8,
    /// The register holds the parameter's address (a by-value struct passed by reference),
    /// not the parameter itself.
    pub indirect: bool,
}

/// A function's parameters that sit in argument registers at entry, by name.
pub type Params = BTreeMap<String, ParamAt>;

/// The entry parameters of every probe function present in one build of the sample worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildArguments {
    /// The sample worker's profile they were read from (`release`, `lto`).
    pub build: String,
    pub functions: BTreeMap<String, Params>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgumentsError {
    #[error(transparent)]
    Dwarf(#[from] DwarfError),
    #[error("`{0}` has copies whose parameters sit in different registers")]
    Inconsistent(String),
    #[error(
        "the binary has no DWARF for sdk-core's functions and its build matches no build in the \
         table (probe functions present: {present}; the table knows: {known}). Build the worker \
         with debug info for sdk-core (see README, \"Builds\"), or add its profile to the table"
    )]
    UnknownBuild { present: String, known: String },
    #[error(
        "the table's builds {0} have the same probe functions as this binary but disagree on \
         their registers; build the worker with debug info for sdk-core"
    )]
    Ambiguous(String),
}

/// The x86-64 argument register a DWARF register number names, if it is one.
fn argument_register(dwarf_register: u16) -> Option<u8> {
    match dwarf_register {
        5 => Some(0), // rdi
        4 => Some(1), // rsi
        1 => Some(2), // rdx
        2 => Some(3), // rcx
        8 => Some(4), // r8
        9 => Some(5), // r9
        _ => None,
    }
}

/// Keeps the parameters that an entry probe can read.
pub fn from_dwarf_params(params: &[Param]) -> Params {
    params
        .iter()
        .filter_map(|p| {
            let (register, indirect) = match p.at_entry {
                EntryLocation::Register(r) => (argument_register(r)?, false),
                EntryLocation::PointedToBy(r) => (argument_register(r)?, true),
                EntryLocation::Elsewhere => return None,
            };
            Some((p.name.clone(), ParamAt { register, indirect }))
        })
        .collect()
}

/// The entry parameters of each of `functions` that the binary's DWARF describes.
pub fn read<'f>(
    symbols: &SymbolIndex,
    types: &DwarfTypes<'_>,
    functions: impl IntoIterator<Item = &'f str>,
) -> Result<BTreeMap<String, Params>, ArgumentsError> {
    let mut out = BTreeMap::new();
    for function in functions {
        for symbol in symbols.find(function) {
            let Some(params) = types.params_at(symbol.address)? else {
                continue;
            };
            let params = from_dwarf_params(&params);
            match out.get(function) {
                Some(seen) if *seen != params => {
                    return Err(ArgumentsError::Inconsistent(function.to_string()));
                }
                Some(_) => {}
                None => {
                    out.insert(function.to_string(), params);
                }
            }
        }
    }
    Ok(out)
}

/// Which of `functions` the binary has.
pub fn present<'f>(
    symbols: &SymbolIndex,
    functions: impl IntoIterator<Item = &'f str>,
) -> BTreeSet<String> {
    functions
        .into_iter()
        .filter(|f| !symbols.find(f).is_empty())
        .map(str::to_string)
        .collect()
}

/// For a binary without DWARF: the table's build with exactly the binary's set of probe
/// functions. Which functions LTO inlines away tells the builds apart; builds with the same set
/// must agree on every register, or the binary is refused rather than guessed at.
pub fn select<'a>(
    builds: &'a [BuildArguments],
    present: &BTreeSet<String>,
) -> Result<&'a BuildArguments, ArgumentsError> {
    let matching: Vec<&BuildArguments> = builds
        .iter()
        .filter(|b| b.functions.keys().cloned().collect::<BTreeSet<_>>() == *present)
        .collect();
    match matching.as_slice() {
        [] => Err(ArgumentsError::UnknownBuild {
            present: present.iter().cloned().collect::<Vec<_>>().join(", "),
            known: if builds.is_empty() {
                "none".into()
            } else {
                builds
                    .iter()
                    .map(|b| b.build.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
        [first, rest @ ..] => {
            if rest.iter().all(|b| b.functions == first.functions) {
                Ok(first)
            } else {
                Err(ArgumentsError::Ambiguous(
                    matching
                        .iter()
                        .map(|b| b.build.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, at_entry: EntryLocation) -> Param {
        Param {
            name: name.into(),
            at_entry,
        }
    }

    #[test]
    fn dwarf_registers_map_to_argument_order() {
        let params = from_dwarf_params(&[
            param("completion", EntryLocation::PointedToBy(4)),
            param("reason", EntryLocation::Register(2)),
            param("self", EntryLocation::Register(5)),
            param("spilled", EntryLocation::Elsewhere),
            param("callee_saved", EntryLocation::Register(3)),
        ]);
        assert_eq!(
            params,
            Params::from([
                (
                    "completion".into(),
                    ParamAt {
                        register: 1,
                        indirect: true
                    }
                ),
                (
                    "reason".into(),
                    ParamAt {
                        register: 3,
                        indirect: false
                    }
                ),
                (
                    "self".into(),
                    ParamAt {
                        register: 0,
                        indirect: false
                    }
                ),
            ])
        );
    }

    fn build(name: &str, functions: &[(&str, u8)]) -> BuildArguments {
        BuildArguments {
            build: name.into(),
            functions: functions
                .iter()
                .map(|(f, r)| {
                    (
                        f.to_string(),
                        Params::from([(
                            "x".to_string(),
                            ParamAt {
                                register: *r,
                                indirect: false,
                            },
                        )]),
                    )
                })
                .collect(),
        }
    }

    fn set(functions: &[&str]) -> BTreeSet<String> {
        functions.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn the_build_with_the_same_functions_is_selected() {
        let builds = [
            build("release", &[("a", 0), ("inlined_by_lto", 1)]),
            build("lto", &[("a", 2)]),
        ];
        assert_eq!(select(&builds, &set(&["a"])).expect("lto").build, "lto");
        assert_eq!(
            select(&builds, &set(&["a", "inlined_by_lto"]))
                .expect("release")
                .build,
            "release"
        );
        let unknown = select(&builds, &set(&["b"])).expect_err("no such build");
        assert!(unknown.to_string().contains("release, lto"), "{unknown}");
    }

    #[test]
    fn builds_that_look_alike_but_disagree_are_refused() {
        let agree = [build("one", &[("a", 0)]), build("two", &[("a", 0)])];
        assert!(select(&agree, &set(&["a"])).is_ok());
        let disagree = [build("one", &[("a", 0)]), build("two", &[("a", 1)])];
        assert!(matches!(
            select(&disagree, &set(&["a"])),
            Err(ArgumentsError::Ambiguous(_))
        ));
    }
}
