//! `cargo xtask gen-layouts`: the shipped layout table, generated from DWARF builds of the sample
//! worker, and the record of the inputs it was generated from.
//!
//! Regenerating the table takes four full builds of the sample worker (about 40 minutes on two
//! cores). Its output depends only on its inputs: the fixture's sources and lock file, the
//! generator's code and the toolchains. So `observer/layouts.inputs.json` records a digest
//! of each input, written together with the table; the check compares digests first and rebuilds
//! only when an input changed. A changed input never passes silently: the check then regenerates
//! the table and fails unless the table is unchanged *and* the record is brought up to date.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    cargo,
    fixture::{DEBIAN, NIGHTLY, build_worker, rustc_of},
    paths, sh,
};

/// The sample worker's builds the layout table is generated from, as (rustup toolchain, fixture
/// profile, name of the user-facing profile it stands for): each is that profile with DWARF
/// added for sdk-core and its protos (debug info does not change the code).
const LAYOUT_BUILDS: &[(Option<&str>, &str, &str)] = &[
    (None, "layout-gen", "release"),
    (None, "lto-layout-gen", "lto"),
    (Some(NIGHTLY), "layout-gen", "release"),
    (Some(DEBIAN), "layout-gen", "release"),
];

/// Files and directories (from the repository root) whose content decides the table: what is
/// built (the fixture and the crate it links from this repository), the code that reads the
/// builds (`temporal-observer layout`, and the merge below), and the checks that can only run
/// on the DWARF builds, with the code they check (the plan picks DWARF over the table). A test
/// checks that each exists.
pub const INPUTS: &[&str] = &[
    "tests/fixtures/worker/Cargo.toml",
    "tests/fixtures/worker/Cargo.lock",
    "tests/fixtures/worker/src",
    "tests/ground-truth",
    "observer/src/cli/layout.rs",
    "observer/src/layout",
    "observer/src/arguments.rs",
    "observer/src/probes",
    "observer/src/symbols.rs",
    "observer/src/versions.rs",
    "observer-common/src/lib.rs",
    "observer/src/plan.rs",
    "tests/tests/layout_builds.rs",
    "xtask/src/fixture.rs",
    "xtask/src/layouts.rs",
];

/// The crates the generator's reading and writing depend on: their versions in the workspace's
/// `Cargo.lock` are an input too (a new gimli could read DWARF differently).
const GENERATOR_CRATES: &[&str] = &["gimli", "object", "rustc-demangle", "serde", "serde_json"];

const TABLE: &str = "observer/layouts.json";
const RECORD: &str = "observer/layouts.inputs.json";
/// The record's entry for the table it was written with: a hand edit of the table is caught.
const TABLE_KEY: &str = "output: observer/layouts.json";

/// `cargo xtask gen-layouts [--check]`.
pub fn run(check: bool, force: bool) -> anyhow::Result<()> {
    let root = paths().root;
    let inputs = digests(&root)?;
    let recorded = read_record(&root.join(RECORD));
    let table_now = std::fs::read(root.join(TABLE)).unwrap_or_default();
    let table_recorded = recorded.as_ref().and_then(|r| r.get(TABLE_KEY)).cloned();
    let recorded = recorded.map(|mut r| {
        r.remove(TABLE_KEY);
        r
    });
    let table_untouched =
        table_recorded.as_deref() == Some(hex(&Sha256::digest(&table_now)).as_str());
    if check && !force && recorded.as_ref() == Some(&inputs) && table_untouched {
        eprintln!(
            "xtask: {TABLE} was generated from exactly these inputs ({} of them, digest {}); \
             not rebuilding it (`cargo xtask gen-layouts --check --force` does)",
            inputs.len(),
            &overall(&inputs)[..12]
        );
        return Ok(());
    }
    if check && !force {
        let mut why = changed(recorded.as_ref(), &inputs);
        if !table_untouched {
            why.push(format!("{TABLE} itself is not the file that was generated"));
        }
        eprintln!(
            "xtask: {} since {TABLE} was generated; regenerating it to compare (four builds of \
             the sample worker)",
            why.join(", ")
        );
    }
    let rendered = generate(&root)?;
    let current = std::fs::read_to_string(root.join(TABLE)).unwrap_or_default();
    if check {
        ensure!(
            rendered == current,
            "{TABLE} differs from what the generator produces; run `cargo xtask gen-layouts` \
             and commit {TABLE} and {RECORD}"
        );
        check_dwarf_builds(&root)?;
        ensure!(
            recorded.as_ref() == Some(&inputs) && table_untouched,
            "{TABLE} matches the generator, but {RECORD} does not record these inputs, so every \
             check would rebuild it; run `cargo xtask gen-layouts` and commit {RECORD}"
        );
        eprintln!("xtask: {TABLE} matches the generator");
    } else {
        std::fs::write(root.join(TABLE), &rendered)?;
        check_dwarf_builds(&root)?;
        let mut record = inputs.clone();
        record.insert(TABLE_KEY.into(), hex(&Sha256::digest(rendered.as_bytes())));
        std::fs::write(root.join(RECORD), render_record(&record)?)?;
        eprintln!("xtask: wrote {TABLE} and {RECORD}");
    }
    Ok(())
}

/// The checks that need the DWARF builds (`tests/tests/layout_builds.rs`): the table is what
/// their DWARF says, debug info does not change the code (against the builds users ship, made
/// here too), and a worker with DWARF is read through it. Run against the table on disk.
fn check_dwarf_builds(root: &Path) -> anyhow::Result<()> {
    for profile in ["release", "lto"] {
        build_worker(None, profile)?;
    }
    sh(cargo().current_dir(root).args([
        "test",
        "--release",
        "-p",
        "e2e",
        "--test",
        "layout_builds",
    ]))
}

/// Builds the sample worker in each of [`LAYOUT_BUILDS`] and derives the table with
/// temporal-observer's own DWARF reader: struct layouts (the same in every profile, which is
/// checked) and, per profile, where the probed functions take their arguments.
fn generate(root: &Path) -> anyhow::Result<String> {
    let observer = paths().observer;
    sh(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "observer"]))?;
    let mut generated: Vec<Value> = Vec::new();
    for (toolchain, profile, build) in LAYOUT_BUILDS {
        let with_dwarf = build_worker(*toolchain, profile)?;
        let output = Command::new(&observer)
            .arg("layout")
            .arg(&with_dwarf)
            .args(["--build", build])
            .stderr(Stdio::inherit())
            .output()
            .context("running temporal-observer layout")?;
        ensure!(output.status.success(), "temporal-observer layout failed");
        let entry: Value = serde_json::from_slice(&output.stdout)?;
        merge_entry(&mut generated, entry)?;
    }
    let current = std::fs::read_to_string(root.join(TABLE)).unwrap_or_else(|_| "[]".into());
    let mut table: Vec<Value> = serde_json::from_str(&current)?;
    table.retain(|e| !generated.iter().any(|g| same_pair(e, g)));
    table.extend(generated);
    table.sort_by_key(pair);
    Ok(serde_json::to_string_pretty(&table)? + "\n")
}

/// A digest of every input: each of [`INPUTS`] by content, and each toolchain by `rustc -vV`.
pub fn digests(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for input in INPUTS {
        let path = root.join(input);
        ensure!(
            path.exists(),
            "{input}, an input of the layout table, does not exist; update INPUTS in \
             xtask/src/layouts.rs"
        );
        out.insert(input.to_string(), digest_files(root, input)?);
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    out.insert(
        format!("Cargo.lock: {}", GENERATOR_CRATES.join(", ")),
        hex(&Sha256::digest(
            locked_versions(&lock, GENERATOR_CRATES).as_bytes(),
        )),
    );
    let fixtures = paths().fixtures;
    let toolchains = LAYOUT_BUILDS.iter().map(|(t, _, _)| *t);
    let mut seen = Vec::new();
    for toolchain in toolchains {
        if seen.contains(&toolchain) {
            continue;
        }
        seen.push(toolchain);
        let mut rustc = rustc_of(toolchain, &fixtures)?;
        let version = rustc.arg("-vV").output().context("running rustc -vV")?;
        ensure!(version.status.success(), "rustc -vV failed");
        let name = format!("toolchain {}", toolchain.unwrap_or("default"));
        out.insert(name, hex(&Sha256::digest(&version.stdout)));
    }
    Ok(out)
}

/// The `[[package]]` entries of `crates` in a lock file, as `name version` lines.
fn locked_versions(lock: &str, crates: &[&str]) -> String {
    let mut out = String::new();
    for package in lock.split("[[package]]") {
        let field = |key: &str| {
            package.lines().find_map(|l| {
                l.strip_prefix(key).map(|v| {
                    v.trim()
                        .trim_start_matches("= ")
                        .trim_matches('"')
                        .to_string()
                })
            })
        };
        if let (Some(name), Some(version)) = (field("name "), field("version "))
            && crates.contains(&name.as_str())
        {
            out.push_str(&format!("{name} {version}\n"));
        }
    }
    out
}

/// The digest of an input: the files git tracks under it (all files when this is no git
/// checkout), by relative path and content, in order.
fn digest_files(root: &Path, input: &str) -> anyhow::Result<String> {
    let tracked = Command::new("git")
        .current_dir(root)
        // Untracked files too: a new module made before its first commit is an input already,
        // and a record without it would not match the committed tree.
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            input,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let path = root.join(input);
    let mut files: Vec<PathBuf> = match tracked {
        Some(output) if !output.stdout.is_empty() => output
            .stdout
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| root.join(String::from_utf8_lossy(f).as_ref()))
            .collect(),
        _ => {
            let mut files = Vec::new();
            collect_files(&path, &mut files)?;
            files
        }
    };
    files.sort();
    digest_of(&path, &files)
}

/// A digest over files' paths relative to `base` and their contents, in the order given.
fn digest_of(base: &Path, files: &[PathBuf]) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(base).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex(&hasher.finalize()))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let entry = entry?.path();
        // A build's output is not an input.
        if entry.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        collect_files(&entry, out)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One digest over all inputs, to show.
fn overall(inputs: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, digest) in inputs {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
    }
    hex(&hasher.finalize())
}

fn read_record(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(value.get("inputs")?.clone()).ok()
}

fn render_record(inputs: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let record = serde_json::json!({
        "about": "Digests of the inputs observer/layouts.json was generated from, written by \
                  `cargo xtask gen-layouts`; `cargo xtask gen-layouts --check` rebuilds the \
                  table only when one of them changed.",
        "inputs": inputs,
    });
    Ok(serde_json::to_string_pretty(&record)? + "\n")
}

/// The names of the inputs that differ from the record.
fn changed(
    recorded: Option<&BTreeMap<String, String>>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let Some(recorded) = recorded else {
        return vec![format!("{RECORD} is missing or unreadable")];
    };
    let mut names: Vec<String> = now
        .iter()
        .filter(|(name, digest)| recorded.get(*name) != Some(digest))
        .map(|(name, _)| name.clone())
        .collect();
    names.extend(
        recorded
            .keys()
            .filter(|name| !now.contains_key(*name))
            .map(|name| format!("{name} (no longer an input)")),
    );
    names
}

fn pair(v: &Value) -> (String, String) {
    (v["sdk_core"].to_string(), v["rustc"].to_string())
}

fn same_pair(a: &Value, b: &Value) -> bool {
    pair(a) == pair(b)
}

/// Adds one build's entry: a new version pair is appended; a known one must have the very same
/// layout, and gains this build's argument registers.
fn merge_entry(table: &mut Vec<Value>, entry: Value) -> anyhow::Result<()> {
    let Some(known) = table.iter_mut().find(|e| same_pair(e, &entry)) else {
        table.push(entry);
        return Ok(());
    };
    let without_arguments = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("arguments");
        }
        v
    };
    if without_arguments(known) != without_arguments(&entry) {
        bail!("two builds of the same sdk-core and rustc disagree on a struct layout");
    }
    let mut builds = known["arguments"].as_array().cloned().unwrap_or_default();
    builds.extend(entry["arguments"].as_array().cloned().unwrap_or_default());
    builds.sort_by_key(|b| b["build"].to_string());
    known["arguments"] = Value::Array(builds);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_exists() {
        let root = paths().root;
        for input in INPUTS {
            assert!(root.join(input).exists(), "{input} is listed but missing");
        }
    }

    #[test]
    fn a_directory_digest_changes_with_any_file_and_ignores_target() {
        let dir = std::env::temp_dir().join(format!("xtask-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::create_dir_all(dir.join("target")).expect("mkdir");
        std::fs::write(dir.join("src/a.rs"), "fn a() {}").expect("write");
        // Not a git checkout: every file below, but what builds put in `target`.
        let digest = || digest_files(&dir, "src").expect("digest");
        let whole = || {
            let mut files = Vec::new();
            collect_files(&dir, &mut files).expect("walk");
            files.sort();
            digest_of(&dir, &files).expect("digest")
        };
        let first = digest();
        let first_whole = whole();
        std::fs::write(dir.join("target/out"), "built").expect("write");
        assert_eq!(whole(), first_whole);
        std::fs::write(dir.join("src/a.rs"), "fn a() { }").expect("write");
        assert_ne!(digest(), first);
        std::fs::rename(dir.join("src/a.rs"), dir.join("src/b.rs")).expect("rename");
        let renamed = digest();
        std::fs::write(dir.join("src/b.rs"), "fn a() {}").expect("write");
        assert_ne!(digest(), renamed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_generators_crates_are_read_from_the_lock_file() {
        let lock = "version = 4\n\n[[package]]\nname = \"gimli\"\nversion = \"0.32.3\"\n\n\
                    [[package]]\nname = \"tokio\"\nversion = \"1.0.0\"\n";
        assert_eq!(locked_versions(lock, GENERATOR_CRATES), "gimli 0.32.3\n");
    }

    #[test]
    fn changed_inputs_are_named() {
        let recorded = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        let now = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "3".to_string()),
            ("c".to_string(), "4".to_string()),
        ]);
        assert_eq!(changed(Some(&recorded), &now), vec!["b", "c"]);
        assert_eq!(changed(None, &now).len(), 1);
    }
}
