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

/// For a binary without DWARF: the table's builds that may be the binary's, with the registers
/// of the binary's probe functions. A build with exactly the binary's set of probe functions is
/// the strongest static evidence there is (which functions LTO inlined away tells the builds
/// apart), so those are taken when there are any (`exact`); else every build that has all of
/// the binary's functions (one that lost a probed function, as sdk-core 0.11 did), for the live
/// records to verify. Builds that give the same registers are one; builds that disagree are
/// each a candidate.
pub fn matching(
    builds: &[BuildArguments],
    present: &BTreeSet<String>,
) -> Result<(Vec<BuildArguments>, bool), ArgumentsError> {
    let functions = |b: &BuildArguments| b.functions.keys().cloned().collect::<BTreeSet<_>>();
    let exact: Vec<&BuildArguments> = builds.iter().filter(|b| functions(b) == *present).collect();
    let (chosen, is_exact) = if exact.is_empty() {
        let covering: Vec<&BuildArguments> = builds
            .iter()
            .filter(|b| functions(b).is_superset(present))
            .collect();
        (covering, false)
    } else {
        (exact, true)
    };
    if chosen.is_empty() {
        return Err(ArgumentsError::UnknownBuild {
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
        });
    }
    let mut out: Vec<BuildArguments> = Vec::new();
    for build in chosen {
        let restricted = BuildArguments {
            build: build.build.clone(),
            functions: build
                .functions
                .iter()
                .filter(|(f, _)| present.contains(*f))
                .map(|(f, p)| (f.clone(), p.clone()))
                .collect(),
        };
        if !out.iter().any(|o| o.functions == restricted.functions) {
            out.push(restricted);
        }
    }
    Ok((out, is_exact))
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

    fn names(found: &(Vec<BuildArguments>, bool)) -> (Vec<&str>, bool) {
        (found.0.iter().map(|b| b.build.as_str()).collect(), found.1)
    }

    #[test]
    fn the_build_with_the_same_functions_is_taken() {
        let builds = [
            build("release", &[("a", 0), ("inlined_by_lto", 1)]),
            build("lto", &[("a", 2)]),
        ];
        let lto = matching(&builds, &set(&["a"])).expect("lto");
        assert_eq!(names(&lto), (vec!["lto"], true));
        let release = matching(&builds, &set(&["a", "inlined_by_lto"])).expect("release");
        assert_eq!(names(&release), (vec!["release"], true));
        let unknown = matching(&builds, &set(&["b"])).expect_err("no such build");
        assert!(unknown.to_string().contains("release, lto"), "{unknown}");
    }

    #[test]
    fn without_an_exact_build_every_covering_build_is_a_candidate() {
        // The binary lost `gone` (a newer sdk-core): builds that have all of its functions are
        // candidates, with the registers of its functions only.
        let builds = [
            build("release", &[("a", 0), ("b", 1), ("gone", 2)]),
            build("other", &[("a", 3), ("b", 1), ("gone", 2)]),
            build("lto", &[("a", 0), ("gone", 2)]),
        ];
        let found = matching(&builds, &set(&["a", "b"])).expect("covering builds");
        assert_eq!(names(&found), (vec!["release", "other"], false));
        assert!(found.0.iter().all(|b| !b.functions.contains_key("gone")));
    }

    #[test]
    fn builds_that_agree_are_one_candidate_and_builds_that_disagree_are_two() {
        let agree = [build("one", &[("a", 0)]), build("two", &[("a", 0)])];
        assert_eq!(
            names(&matching(&agree, &set(&["a"])).expect("one")),
            (vec!["one"], true)
        );
        let disagree = [build("one", &[("a", 0)]), build("two", &[("a", 1)])];
        assert_eq!(
            names(&matching(&disagree, &set(&["a"])).expect("two")),
            (vec!["one", "two"], true)
        );
    }
}
