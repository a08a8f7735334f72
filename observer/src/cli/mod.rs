//! The command line: one file per subcommand.

pub mod attach;
pub mod inspect;
pub mod layout;
pub mod watch;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The async runtime `attach` and `watch` run on. Multi-threaded: the gRPC exporter needs a
/// runtime that keeps running beside the observation loop.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Observe Temporal workers from outside, with eBPF uprobes on the sdk-core code inside them
/// (linked into a Rust worker, or the bridge library of a Python or TypeScript worker). The
/// worker's code is never changed and its memory is only read.
#[derive(Debug, Parser)]
#[command(
    name = "temporal-observer",
    version,
    long_version = env!("TEMPORAL_OBSERVER_LONG_VERSION"),
    propagate_version = true
)]
pub struct Cli {
    /// A layout table to use instead of the one built in: a JSON array of rows as
    /// `cargo xtask gen-layouts` writes them (observer/layouts.json), for example with a row
    /// generated for your own rustc. Without DWARF and without a row for the binary's exact
    /// rustc, every row of its sdk-core is a candidate and the live records pick one.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "TEMPORAL_OBSERVER_LAYOUT_TABLE"
    )]
    pub layout_table: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Applies the options every subcommand shares.
    pub fn apply_global(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.layout_table {
            let table = std::fs::read_to_string(path)
                .with_context(|| format!("reading the layout table {}", path.display()))?;
            crate::layout::use_table(table)
                .with_context(|| format!("the layout table {}", path.display()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to one running worker process and stream what its sdk-core does.
    ///
    /// Needs CAP_SYS_ADMIN (root). Probes are removed when the observer exits,
    /// however it exits.
    Attach(attach::AttachArgs),
    /// Find and follow every Temporal worker on this host (or node): a scan of /proc, then
    /// the kernel's exec and exit events; each worker is attached to as it starts and forgotten
    /// when it exits, with its own OTLP resource (pid, container, Kubernetes pod).
    ///
    /// Needs CAP_SYS_ADMIN and CAP_SYS_PTRACE, and tracefs (mounted if missing).
    Watch(watch::WatchArgs),
    /// Show what the observer would do with a worker binary: versions found, where the struct
    /// layouts come from, every probe point, and what it could not cover. Exits 1 when the binary
    /// cannot be observed. Needs no privileges for a file.
    Inspect(inspect::InspectArgs),
    /// Print the struct layout the observer would use, derived from a binary's DWARF, as JSON.
    ///
    /// `cargo xtask gen-layouts` uses this on a debug build to generate the shipped layout table.
    Layout(layout::LayoutArgs),
}
