//! Building the sample worker, the way the layout table and the build matrix need it: a profile
//! of its crate, by the default or another rustup toolchain. An input of the layout table (see
//! `layouts::INPUTS`): how the builds are made decides what the table says.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::ensure;

use crate::{cargo, paths, sh};

/// The rustup toolchain besides the default that the layout table and the matrix cover: its
/// rustc mangles symbols as v0 and lays out niches differently.
pub const NIGHTLY: &str = "nightly";

/// Where the sample worker built with `profile` (by `toolchain`, default if `None`) lands.
pub fn worker_binary(toolchain: Option<&str>, profile: &str) -> PathBuf {
    let target = paths().fixtures.join("target");
    match toolchain {
        None => target.join(profile).join("sample-worker"),
        Some(t) => target.join(t).join(profile).join("sample-worker"),
    }
}

/// Builds the sample worker with `profile` (by `toolchain`, default if `None`); returns it.
pub fn build_worker(toolchain: Option<&str>, profile: &str) -> anyhow::Result<PathBuf> {
    let fixtures = paths().fixtures;
    let mut command = match toolchain {
        None => cargo(),
        Some(t) => cargo_of(t, &fixtures)?,
    };
    sh(command.current_dir(&fixtures).args([
        "build",
        "--profile",
        profile,
        "--locked",
        "--bin",
        "sample-worker",
    ]))?;
    Ok(worker_binary(toolchain, profile))
}

/// `cargo` of another rustup toolchain (through the rustup proxy), building into its own target
/// directory so that its artifacts never replace the default toolchain's.
pub fn cargo_of(toolchain: &str, fixtures: &Path) -> anyhow::Result<Command> {
    let probe = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .output();
    ensure!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the rustup toolchain `{toolchain}` is missing; the layout table has an entry built by it \
         (v0 mangling). Install it with `rustup toolchain install {toolchain} --profile minimal`"
    );
    let mut command = Command::new("cargo");
    command
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .env("CARGO_TARGET_DIR", fixtures.join("target").join(toolchain));
    Ok(command)
}
