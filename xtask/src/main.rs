//! `cargo xtask`: set-up, builds, tests, layout generation and the demo, in one place so that the
//! README's two commands and CI do exactly the same thing.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dist;
mod fixture;
mod fresh;
mod layouts;
mod matrix;
mod setup;
mod soak;

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
    /// Regenerate observer/layouts.json from DWARF builds of the sample worker, and record the
    /// digests of the inputs it was made from in observer/layouts.inputs.json.
    GenLayouts {
        /// Fail if the committed table differs from what the generator produces. Rebuilds only
        /// when an input changed since the table was generated.
        #[arg(long)]
        check: bool,
        /// With --check: rebuild and compare even when no input changed.
        #[arg(long, requires = "check")]
        force: bool,
    },
    /// Measure what observing costs the worker (throughput, CPU, probe cost, the observer's own
    /// CPU and memory) against an unobserved worker, in one run; prints the README's table.
    Bench {
        /// Workflows per configuration and round.
        #[arg(long, default_value_t = 400)]
        runs: usize,
        /// Rounds; each runs every configuration once, alternating.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Records the user-space pipeline benchmark replays per round (no kernel).
        #[arg(long, default_value_t = 1_000_000)]
        pipeline_events: usize,
        /// Only the user-space pipeline benchmark: no kernel, no server, no worker.
        #[arg(long)]
        pipeline: bool,
        /// The sample workers to run (comma-separated: rust, python, typescript).
        #[arg(long, value_delimiter = ',', default_value = "rust,python,typescript")]
        workers: Vec<String>,
    },
    /// Build the sample worker in every variant users ship (default release, fat LTO, full
    /// debug info, debug info stripped, symbols stripped, nightly with v0 mangling) and run the
    /// end-to-end accuracy check on each; prints the table the README shows.
    Matrix {
        /// Only these variants (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Prove the README's two commands on a fresh machine: build a clean Debian 12 root
    /// (mmdebstrap), give it rustup's toolchains read-only, an empty cargo home and a clean clone
    /// of HEAD, then run inside it the demo (under tmux, until it shows live values, then
    /// Ctrl-C) and `cargo xtask test`. Prints the minutes each step took. Takes about an hour.
    FreshCheck(fresh::Args),
    /// Make what a user installs without a Rust toolchain, under target/dist/: the bundle
    /// temporal-observer-VERSION-x86_64-linux.tar.gz (binary, deployment files, licenses of
    /// what it links), the Debian package (lintian-clean) and the container image (podman, from
    /// a base made here: no registry). With --check, install and run each one (a bare Debian 12
    /// root, `apt install` in a clean one, the image as the DaemonSet runs it) and check what it
    /// observes against the Temporal server. Takes about 10 minutes (20 with --check).
    Dist(dist::Args),
    /// Feed mutated real inputs to the observer's resolution and decoding paths for a while:
    /// the sample worker's executables (release, fat LTO, and full debug info for the DWARF
    /// reader), the Python and TypeScript bridge libraries, the recorded session's probe
    /// records, and the bridges' protobuf messages.
    /// Prints inputs run, outcomes, panics (inputs saved under target/fuzz-crashes/) and the
    /// worst time and heap per input; fails on any panic. `cargo xtask test` runs a short pass.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Targets (comma-separated: resolve, bridges, records, messages).
        #[arg(long, default_value = "resolve,bridges,records,messages")]
        targets: String,
        /// Seed of the mutations, in hex; a run is repeated by its seed.
        #[arg(long)]
        seed: Option<String>,
    },
    /// A steady mixed workload while the worker is restarted and the observer is killed and
    /// restarted at random moments (seeded, printed); then every start and end each observer
    /// life reported is checked against the server's record (none twice, none wrong, none
    /// missing where a run was wholly observed), and the observer's RSS and open runs are
    /// printed as sampled. `cargo xtask test` runs three minutes of it.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Seed of the chaos, in hex (default: from the clock, printed).
        #[arg(long)]
        seed: Option<String>,
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
        Task::GenLayouts { check, force } => setup::run().and_then(|()| layouts::run(check, force)),
        Task::Bench {
            runs,
            rounds,
            pipeline_events,
            pipeline,
            workers,
        } => setup::run().and_then(|()| build()).and_then(|()| {
            let settings = bench::Settings {
                runs,
                rounds,
                pipeline_events,
                workers,
            };
            if pipeline {
                bench::run_pipeline_only(&settings, &paths().root)
            } else {
                bench::run(&settings, &paths().root)
            }
        }),
        Task::Matrix { only } => setup::run()
            .and_then(|()| build())
            .and_then(|()| matrix::run(&only)),
        Task::FreshCheck(args) => fresh::run(&args),
        Task::Dist(args) => dist::run(&args),
        Task::Soak { minutes, seed } => setup::run().and_then(|()| build()).and_then(|()| {
            let seed = match seed {
                Some(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                    .with_context(|| format!("--seed {hex}: not a hexadecimal number"))?,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1),
            };
            soak::run(&soak::Settings { minutes, seed })
        }),
        Task::Fuzz {
            minutes,
            targets,
            seed,
        } => setup::run().and_then(|()| build()).and_then(|()| {
            // The fat-LTO executable is mutated beside the release one, and a build with DWARF
            // so that the layout reader is fuzzed too.
            matrix::make_variant("lto")?;
            fixture::build_worker(None, "debug-info")?;
            let mut command = cargo();
            command
                .current_dir(&paths().root)
                .args(["test", "--release", "-p", "e2e", "--test", "fuzz"])
                .args(["--", "--nocapture", "--test-threads=1"])
                .env("FUZZ_SECONDS", (minutes * 60).to_string())
                .env("FUZZ_TARGETS", targets)
                .env("FUZZ_WITH_DWARF", "1");
            if let Some(seed) = seed {
                command.env("FUZZ_SEED", seed);
            }
            sh(&mut command)
        }),
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

pub fn cargo() -> Command {
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

/// The Kubernetes API version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

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
    // The deployment manifests against Kubernetes' own schemas, unknown fields rejected.
    sh(Command::new(setup::kubernetes_validate()?)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(
            ["configmap.yaml", "daemonset.yaml"].map(|f| p.root.join("deploy/kubernetes").join(f)),
        ))?;
    sh(cargo().current_dir(&p.root).args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Not a default test target (gen-layouts runs it), so --all-targets leaves it out.
    sh(cargo().current_dir(&p.root).args([
        "clippy",
        "--release",
        "-p",
        "e2e",
        "--test",
        "layout_builds",
        "--",
        "-D",
        "warnings",
    ]))?;
    build()?;
    // The fat-LTO variant, whose probe plan differs most from the default's, is checked end to
    // end on every run (`cargo xtask matrix` checks them all); so is the nightly worker, the
    // one toolchain held out below.
    matrix::make_variant("lto")?;
    let (nightly, nightly_rustc) = matrix::make_hold_out("hold-out-1.97")?;
    // The shipped layout table must be exactly what the generator makes of its inputs.
    layouts::run(true, false)?;
    // End-to-end tests share the machine's two cores with a dev server and a worker: one at a time.
    sh(cargo()
        .current_dir(&p.root)
        .env("TEMPORAL_CLI", setup::temporal_cli()?)
        .args(["test", "--release", "--workspace", "--", "--test-threads=1"]))?;
    // The workspace run holds rustc 1.95 out of the table; this holds out nightly's 1.97, the
    // only row of its niche rule, so its worker is read through re-placed rows.
    sh(cargo()
        .current_dir(&p.root)
        .env("TEMPORAL_CLI", setup::temporal_cli()?)
        .env("E2E_HOLD_OUT_BIN", &nightly)
        .env("E2E_HOLD_OUT_RUSTC", nightly_rustc)
        .args([
            "test",
            "--release",
            "-p",
            "e2e",
            "--test",
            "any_rustc",
            "a_worker_of_a_held_out_rustc",
        ]))?;
    // A short run of the benchmark, so that it keeps working (its numbers mean little here).
    sh(Command::new(std::env::current_exe()?)
        .env("TEMPORAL_CLI", setup::temporal_cli()?)
        .args([
            "bench",
            "--runs",
            "40",
            "--rounds",
            "1",
            "--pipeline-events",
            "100000",
        ]))?;
    // Three minutes of the soak, its chaos seeded from the clock (printed, to repeat).
    sh(Command::new(std::env::current_exe()?)
        .env("TEMPORAL_CLI", setup::temporal_cli()?)
        .args(["soak", "--minutes", "3"]))?;
    eprintln!("xtask: all checks and tests passed");
    Ok(())
}
