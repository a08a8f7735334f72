//! `temporal-observer attach --pid PID`: attach to one worker, rebuild its runs' lifecycles and
//! export the metric set. Also the flags `attach` and `watch` share.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum, builder::TypedValueParser as _};

use crate::{
    export::{ExportSettings, Transport},
    kernel::KernelSettings,
    lifecycle::{DEFAULT_IDLE_EXPIRY_SECS, Limits},
    plan, privileges,
    session::{self, Format, SessionConfig},
    target::Target,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    /// One line per event: time, pid, tid, probe, fields.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// PID of the worker process.
    #[arg(long)]
    pub pid: u32,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Detach after this many seconds (default: until Ctrl-C, SIGTERM, or the worker exits).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Also write every probe record and tick to FILE, to replay the session without a kernel
    /// (for bug reports and benchmarks).
    #[arg(long, value_name = "FILE")]
    pub record_to: Option<PathBuf>,
}

/// The settings of observing one process, shared by `attach` and `watch`.
#[derive(Clone, Debug, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Clone, Debug, Args)]
pub struct OutputArgs {
    /// Print every event the probes report, one per line, on stdout.
    #[arg(long, help_heading = "Output")]
    pub print_events: bool,
    /// Print every lifecycle update (run started, run ended with its duration, worker running)
    /// as it is recorded, one per line, on stdout.
    #[arg(long, help_heading = "Output")]
    pub print_updates: bool,
    /// Print the table of metric values every N seconds and at exit, on stdout.
    #[arg(long, value_name = "SECS", help_heading = "Output")]
    pub print_metrics: Option<u64>,
    /// Format of --print-events and --print-updates.
    #[arg(long, value_enum, default_value_t = EventFormat::Text, help_heading = "Output")]
    pub format: EventFormat,
}

#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// OTLP endpoint [default: OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT, else localhost:4318 for
    /// http/protobuf, localhost:4317 for grpc].
    #[arg(long, value_name = "URL", help_heading = "Export")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport [default: OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL, else http/protobuf]
    /// [possible values: grpc, http/protobuf].
    #[arg(
        long,
        value_name = "PROTOCOL",
        help_heading = "Export",
        value_parser = clap::builder::PossibleValuesParser::new(Transport::NAMES)
            .try_map(|name| name.parse::<Transport>()),
    )]
    pub otlp_protocol: Option<Transport>,
    /// How often metrics are exported [default: OTEL_METRIC_EXPORT_INTERVAL, else 60000].
    #[arg(long, value_name = "MS", help_heading = "Export")]
    pub metric_export_interval_ms: Option<u64>,
    /// Do not export over OTLP (print, or serve Prometheus scrapes, only).
    #[arg(long, help_heading = "Export")]
    pub no_export: bool,
    /// Also serve the metrics for Prometheus to scrape, at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", help_heading = "Export")]
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// Workers this instance is configured to run, for compozy_temporal_workers_configured_total
    /// [default: the number of distinct workers seen].
    #[arg(long, value_name = "N", help_heading = "Export")]
    pub configured_workers: Option<i64>,
}

#[derive(Clone, Debug, Args)]
pub struct LifecycleArgs {
    /// Open runs kept in memory at most; past it the least recently active is forgotten (and
    /// counted in temporal_observer_runs_dropped_total).
    #[arg(long, default_value_t = Limits::default().max_open_runs, help_heading = "Lifecycle")]
    pub max_open_runs: usize,
    /// How long after a run's deadline it is counted as timed out by the server.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        help_heading = "Lifecycle"
    )]
    pub timeout_grace_ms: u64,
    /// How long a run without a deadline may go without any news before it is forgotten
    /// (counted in temporal_observer_runs_expired_total). The server tells the worker nothing
    /// when it terminates a run (a client's terminate, a reset, a parent's close policy): such a
    /// run has no end state and would stay open. A run that waits longer than this for a signal
    /// still counts its end when it comes, without a duration.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_IDLE_EXPIRY_SECS,
        help_heading = "Lifecycle"
    )]
    pub idle_run_expiry_secs: u64,
}

#[derive(Clone, Debug, Args)]
pub struct KernelArgs {
    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = 1 << 20, value_parser = parse_ring_size, help_heading = "Kernel")]
    pub ring_buffer_bytes: u32,
    /// Wake the observer once this many bytes of events wait; below that it drains every
    /// --drain-interval-ms. Waking on every event would slow the worker's threads.
    #[arg(long, default_value_t = 64 * 1024, help_heading = "Kernel")]
    pub wakeup_bytes: u64,
    /// How often to drain the ring buffer when it is not full enough to wake us.
    #[arg(long, default_value_t = 100, help_heading = "Kernel")]
    pub drain_interval_ms: u64,
    /// The largest activation or completion read from a bridge (Python workers), in bytes,
    /// rounded up to 4 KiB chunks, at most 4 MiB. A larger message (a big workflow input) is
    /// not read: it is counted in temporal_observer_records_truncated_total and the runs open
    /// at that moment count as affected, never misread. The ring buffer must hold it too.
    #[arg(long, default_value_t = 64 * 1024, value_parser = parse_message_bytes, help_heading = "Kernel")]
    pub max_message_bytes: u32,
}

fn parse_message_bytes(text: &str) -> Result<u32, String> {
    let value: u32 = text.parse().map_err(|e| format!("{e}"))?;
    let ceiling = observer_common::MAX_MESSAGE_CHUNKS * observer_common::MESSAGE_CHUNK_BYTES as u32;
    if value == 0 || value > ceiling {
        return Err(format!("{value} is not between 1 and {ceiling}"));
    }
    Ok(value)
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let value: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if value < 4096 || !value.is_power_of_two() {
        return Err(format!("{value} is not a power of two of at least 4096"));
    }
    Ok(value)
}

pub fn run(args: &AttachArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(attach(args))
}

impl SessionArgs {
    /// The session's settings these flags give, for a process not yet known.
    pub fn config(&self) -> SessionConfig {
        SessionConfig {
            print_events: self.output.print_events,
            print_updates: self.output.print_updates,
            print_metrics: self.output.print_metrics.map(Duration::from_secs),
            format: match self.output.format {
                EventFormat::Text => Format::Text,
                EventFormat::Json => Format::Json,
            },
            export: ExportSettings {
                endpoint: self.export.otlp_endpoint.clone(),
                transport: self.export.otlp_protocol,
                interval: self
                    .export
                    .metric_export_interval_ms
                    .map(Duration::from_millis),
                otlp: !self.export.no_export,
                prometheus: self.export.prometheus_listen,
            },
            configured_workers: self.export.configured_workers,
            limits: Limits {
                max_open_runs: self.lifecycle.max_open_runs.max(1),
                timeout_grace_nanos: i128::from(self.lifecycle.timeout_grace_ms) * 1_000_000,
                idle_expiry_nanos: i128::from(self.lifecycle.idle_run_expiry_secs) * 1_000_000_000,
                ..Limits::default()
            },
            kernel: KernelSettings {
                ring_buffer_bytes: self.kernel.ring_buffer_bytes,
                wakeup_bytes: self.kernel.wakeup_bytes,
                message_chunks: self
                    .kernel
                    .max_message_bytes
                    .div_ceil(observer_common::MESSAGE_CHUNK_BYTES as u32),
            },
            drain_interval: Duration::from_millis(self.kernel.drain_interval_ms),
            record_to: None,
            resource: Vec::new(),
            noticed: None,
        }
    }
}

async fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    let target = Target::open(args.pid)?;
    let plan = plan::resolve_target(&target).with_context(|| {
        format!(
            "PID {} ({}) cannot be observed",
            target.pid, target.exe_name
        )
    })?;
    session::log_plan(&target, &plan);
    privileges::check()?;
    let (stop_tx, stop) = tokio::sync::watch::channel(None);
    let requested = session::stop_requested(args.duration_secs.map(Duration::from_secs))
        .context("installing the signal handlers")?;
    tokio::spawn(async move {
        let _ = stop_tx.send(Some(requested.await));
    });
    let mut config = args.session.config();
    config.record_to = args.record_to.clone();
    session::observe(target, plan, &config, stop).await?;
    Ok(())
}
