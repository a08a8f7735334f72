//! `cargo xtask`: set-up, builds, tests, layout generation and the demo, in one place so that the
//! README's two commands and CI do exactly the same thing.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};

mod demo;
mod setup;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set-up, demo and test orchestration for temporal-observer"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and the tests need (apt packages, bpf-linker, the Temporal CLI).
    /// Idempotent: a second run installs nothing and says so.
    Setup,
    /// Build temporal-observer (with its eBPF programs) and the sample worker and driver.
    Build,
    /// The main job: attach to a worker (--pid), or with no PID run the self-contained demo: a
    /// dev server, the sample worker, a steady workload, and the observer printing events.
    Run {
        /// PID of a running Rust Temporal worker to attach to.
        #[arg(long)]
        pid: Option<u32>,
        /// Extra arguments for `temporal-observer attach`.
        #[arg(last = true)]
        observer_args: Vec<String>,
    },
    /// Everything CI checks: set-up, formatting, clippy, unit tests, and the end-to-end tests
    /// against a real dev server, worker and kernel.
    Test,
    /// Regenerate observer/layouts.json from a debug build of the sample worker (--check: fail
    /// if the committed table differs from what the generator produces).
    GenLayouts {
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        Task::Run { pid, observer_args } => {
            setup::run()
                .and_then(|()| build())
                .and_then(|()| match pid {
                    Some(pid) => attach(pid, &observer_args),
                    None => demo::run(&paths(), &observer_args),
                })
        }
        Task::Test => test(),
        Task::GenLayouts { check } => setup::run().and_then(|()| gen_layouts(check)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where things are in the repository.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub fixtures: PathBuf,
    pub observer: PathBuf,
}

pub fn paths() -> Paths {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    Paths {
        fixtures: root.join("tests/fixtures/worker"),
        observer: root.join("target/release/temporal-observer"),
        root,
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command, echoing it, and fails if it fails.
pub fn sh(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("running {}", describe(command)))?;
    ensure!(status.success(), "{} failed ({status})", describe(command));
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn build() -> anyhow::Result<()> {
    let p = paths();
    sh(cargo()
        .current_dir(&p.root)
        .args(["build", "--release", "-p", "observer"]))?;
    sh(cargo()
        .current_dir(&p.fixtures)
        .args(["build", "--release", "--locked"]))?;
    Ok(())
}

fn attach(pid: u32, extra: &[String]) -> anyhow::Result<()> {
    let p = paths();
    let mut command = Command::new(&p.observer);
    command.args(["attach", "--pid", &pid.to_string()]);
    if extra.is_empty() {
        command.args(default_observer_args());
    }
    sh(command.args(extra))
}

/// What `run` shows without observer arguments: the live table of metric values, exported too
/// when an OTLP endpoint is configured.
pub fn default_observer_args() -> Vec<String> {
    let mut args = vec!["--print-metrics".to_string(), "2".to_string()];
    let endpoint = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if !endpoint {
        args.push("--no-export".to_string());
    }
    args
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    let p = paths();
    sh(cargo()
        .current_dir(&p.root)
        .args(["fmt", "--all", "--check"]))?;
    sh(cargo()
        .current_dir(p.root.join("observer-ebpf"))
        .args(["fmt", "--check"]))?;
    sh(cargo().current_dir(&p.fixtures).args(["fmt", "--check"]))?;
    sh(cargo().current_dir(&p.root).args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    build()?;
    // The shipped layout table must be exactly what the generator makes of this sdk-core/rustc.
    gen_layouts(true)?;
    // End-to-end tests share the machine's two cores with a dev server and a worker: one at a time.
    sh(cargo()
        .current_dir(&p.root)
        .env("TEMPORAL_CLI", setup::temporal_cli()?)
        .args(["test", "--release", "--workspace", "--", "--test-threads=1"]))?;
    eprintln!("xtask: all checks and tests passed");
    Ok(())
}

/// Builds the sample worker with DWARF for sdk-core and its protos (the fixture's `layout-gen`
/// profile), and derives the layout with temporal-observer's own DWARF reader.
fn gen_layouts(check: bool) -> anyhow::Result<()> {
    let p = paths();
    sh(cargo()
        .current_dir(&p.root)
        .args(["build", "--release", "-p", "observer"]))?;
    sh(cargo().current_dir(&p.fixtures).args([
        "build",
        "--profile",
        "layout-gen",
        "--locked",
        "--bin",
        "sample-worker",
    ]))?;
    let with_dwarf = p.fixtures.join("target/layout-gen/sample-worker");
    let output = Command::new(&p.observer)
        .arg("layout")
        .arg(&with_dwarf)
        .stderr(Stdio::inherit())
        .output()
        .context("running temporal-observer layout")?;
    ensure!(output.status.success(), "temporal-observer layout failed");
    let entry: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let table_path = p.root.join("observer/layouts.json");
    let current = std::fs::read_to_string(&table_path).unwrap_or_else(|_| "[]".into());
    let mut table: Vec<serde_json::Value> = serde_json::from_str(&current)?;
    let key = |v: &serde_json::Value| (v["sdk_core"].to_string(), v["rustc"].to_string());
    table.retain(|e| key(e) != key(&entry));
    table.push(entry);
    table.sort_by_key(key);
    let rendered = serde_json::to_string_pretty(&table)? + "\n";
    if check {
        ensure!(
            rendered == current,
            "observer/layouts.json differs from what the generator produces; run `cargo xtask gen-layouts` and commit it"
        );
        eprintln!("xtask: observer/layouts.json matches the generator");
    } else {
        std::fs::write(&table_path, rendered)?;
        eprintln!(
            "xtask: wrote {} ({} entries)",
            table_path.display(),
            table.len()
        );
    }
    Ok(())
}
