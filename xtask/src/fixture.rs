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

/// Debian's own rustc (`rustc-web`'s `/usr/bin/rustc`, 1.96), a third compiler that users have:
/// not a rustup toolchain, so the default toolchain's cargo drives it through `RUSTC`.
pub const DEBIAN: &str = "debian";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

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

/// `cargo` of another toolchain (a rustup toolchain through the rustup proxy, or [`DEBIAN`]),
/// building into its own target directory so that its artifacts never replace the default
/// toolchain's.
pub fn cargo_of(toolchain: &str, fixtures: &Path) -> anyhow::Result<Command> {
    if toolchain == DEBIAN {
        ensure!(
            Path::new(DEBIAN_RUSTC).exists(),
            "{DEBIAN_RUSTC} (Debian's rustc, package `rustc-web`) is missing; `cargo xtask setup` \
             installs it"
        );
        let mut command = cargo();
        command
            .env("RUSTC", DEBIAN_RUSTC)
            .env("CARGO_TARGET_DIR", fixtures.join("target").join(toolchain));
        return Ok(command);
    }
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

/// `rustc` of a toolchain (the default if `None`), as the fixture's builds run it.
pub fn rustc_of(toolchain: Option<&str>, fixtures: &Path) -> anyhow::Result<Command> {
    Ok(match toolchain {
        None => {
            let mut c = Command::new("rustc");
            c.current_dir(fixtures);
            c
        }
        Some(DEBIAN) => {
            // Fails with how to install it when it is missing.
            cargo_of(DEBIAN, fixtures)?;
            Command::new(DEBIAN_RUSTC)
        }
        Some(t) => {
            cargo_of(t, fixtures)?;
            let mut c = Command::new("rustup");
            c.args(["run", t, "rustc"]);
            c
        }
    })
}
