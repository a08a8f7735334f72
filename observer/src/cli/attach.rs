//! `temporal-observer attach --pid PID`: attach to one worker, rebuild its runs' lifecycles and
//! export the metric set.

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::{Args, ValueEnum};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    events::{self, Clock, Event, EventBody},
    export::{self, ExportConfig, Health, Metrics, Transport},
    kernel::{Attachment, KernelCounters, KernelSettings},
    layout::TargetLayout,
    lifecycle::{Engine, Limits, Update},
    plan::{self, Plan},
    privileges,
    target::{Target, WORKER_THREAD},
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
    /// OTLP transport [default: OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL, else http/protobuf].
    #[arg(long, value_enum, help_heading = "Export")]
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

async fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    let target = Target::open(args.pid)?;
    let resolved = plan::resolve(&target.image).with_context(|| {
        format!(
            "PID {} ({}) cannot be observed",
            target.pid, target.exe_name
        )
    })?;
    log_plan(&target, &resolved);
    privileges::check()?;
    let (stop_tx, stop) = tokio::sync::watch::channel(None);
    let requested = stop_requested(args.duration_secs)?;
    tokio::spawn(async move {
        let _ = stop_tx.send(Some(requested.await));
    });
    observe(target, resolved, &Session::new(&args.session), stop).await
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves with why to stop: one of
/// them arrived, or `duration_secs` passed.
pub fn stop_requested(
    duration_secs: Option<u64>,
) -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        let deadline = async {
            match duration_secs {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => "interrupted",
            _ = sigterm.recv() => "terminated",
            () = deadline => "the requested duration passed",
        }
    })
}

/// What is logged about a plan before attaching it.
pub fn log_plan(target: &Target, resolved: &Plan) {
    info!(
        "PID {} ({}): sdk-core {}, rustc {}, layout from {}, argument registers from {}",
        target.pid,
        target.exe_name,
        resolved.versions.sdk_core.as_deref().unwrap_or("?"),
        resolved.versions.rustc.as_deref().unwrap_or("?"),
        resolved.layout_source,
        resolved.arguments_source,
    );
    for planned in &resolved.probes {
        info!(
            "PID {}: probe {}: {} ({} location(s))",
            target.pid,
            planned.spec.name,
            planned.point.function,
            planned.functions.len()
        );
    }
    for fact in resolved.not_covered() {
        warn!("PID {}: not covered: {fact}", target.pid);
    }
}

/// How one process is observed: the settings `attach` and `watch` share, and the resource
/// attributes that tell this process's metrics apart.
#[derive(Clone, Debug)]
pub struct Session {
    pub args: SessionArgs,
    pub resource: Vec<(String, String)>,
    /// When the process exec'd (CLOCK_MONOTONIC), to report how long attaching took.
    pub exec_monotonic_ns: Option<u64>,
}

impl Session {
    pub fn new(args: &SessionArgs) -> Self {
        Self {
            args: args.clone(),
            resource: Vec::new(),
            exec_monotonic_ns: None,
        }
    }
}

/// Observes one resolved worker process until it exits or `stop` says why to stop, then
/// detaches and exports its last values.
pub async fn observe(
    mut target: Target,
    resolved: Plan,
    session: &Session,
    mut stop: tokio::sync::watch::Receiver<Option<&'static str>>,
) -> anyhow::Result<()> {
    // The executable's bytes (tens of MB) and its symbol table were only needed to resolve it;
    // give the freed heap back to the system rather than keep it as resident memory.
    target.image = Vec::new();
    // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
    unsafe { libc::malloc_trim(0) };
    let Session {
        args:
            SessionArgs {
                output,
                export: export_args,
                lifecycle,
                kernel,
            },
        resource,
        exec_monotonic_ns,
    } = session;
    let metrics = Metrics::new(&ExportConfig {
        endpoint: export_args.otlp_endpoint.clone(),
        transport: export_args.otlp_protocol,
        interval: export_args
            .metric_export_interval_ms
            .map(Duration::from_millis),
        pid: target.pid,
        executable: target.exe_name.clone(),
        otlp: !export_args.no_export,
        prometheus: export_args.prometheus_listen,
        resource: resource.clone(),
    })?;
    if let Some(n) = export_args.configured_workers {
        metrics.set_workers_configured(n);
    }
    let kernel_layout = resolved.layout.kernel_layout()?;
    let settings = KernelSettings {
        ring_buffer_bytes: kernel.ring_buffer_bytes,
        wakeup_bytes: kernel.wakeup_bytes,
    };
    let mut attachment = match Attachment::attach(
        &target.exe_link,
        target.pid,
        &resolved.probes,
        &kernel_layout,
        settings,
    ) {
        Ok(attachment) => attachment,
        // The uprobe error (ESRCH, ENOENT) would not say why.
        Err(_) if !target.is_alive() => anyhow::bail!(
            "PID {} ({}) exited while the observer was attaching to it",
            target.pid,
            target.exe_name
        ),
        Err(e) => return Err(e.into()),
    };
    let latency = exec_monotonic_ns
        .map(|exec| {
            let ms = (events::monotonic_now_ns().saturating_sub(exec)) as f64 / 1e6;
            format!(" ({ms:.1} ms after its exec)")
        })
        .unwrap_or_default();
    info!(
        "attached {} probes to PID {}{latency}; Ctrl-C detaches",
        attachment.attached, target.pid
    );

    let ring = attachment.take_ring_buffer()?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until `ring`
    // (and with it the `RingBuf`) is dropped below.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let limits = Limits {
        max_open_runs: lifecycle.max_open_runs.max(1),
        timeout_grace_nanos: i128::from(lifecycle.timeout_grace_ms) * 1_000_000,
        ..Limits::default()
    };
    let mut pipeline = Pipeline {
        print_events: output.print_events,
        print_updates: output.print_updates,
        format: output.format,
        configured_workers: export_args.configured_workers,
        layout: resolved.layout.clone(),
        clock: Clock::now(),
        engine: Engine::new(limits),
        metrics,
        per_probe: BTreeMap::new(),
        undecodable: 0,
        workers_seen: 0,
        attached: attachment.attached as i64,
        lost_seen: 0,
    };
    // A start probe that only sees creations misses the workers already running: count them.
    if resolved
        .probes
        .iter()
        .any(|p| p.point.count_existing_workers)
    {
        let running = target.threads_named(WORKER_THREAD);
        info!("{running} worker(s) already running (counted from their {WORKER_THREAD} threads)");
        let mut updates = Vec::new();
        pipeline.engine.on_existing_workers(running, &mut updates);
        pipeline.apply(updates, Vec::new());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(kernel.drain_interval_ms.max(1)));
    let mut status_at = Instant::now() + Duration::from_secs(10);
    let mut health_at = Instant::now();
    let mut table_at = output
        .print_metrics
        .map(|s| (Instant::now() + Duration::from_secs(s), s));
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                pipeline.drain(ring.get_mut());
                if !target.is_alive() {
                    break "the worker exited";
                }
                // Once a second: server-enforced timeouts (a scan of the open runs) and health.
                if Instant::now() >= health_at {
                    health_at = Instant::now() + Duration::from_secs(1);
                    let counters = attachment.counters().ok();
                    pipeline.tick(wall_now(), counters);
                    pipeline.health(counters, 1);
                }
                if let Some((at, every)) = table_at.filter(|(at, _)| Instant::now() >= *at) {
                    table_at = Some((at + Duration::from_secs(every.max(1)), every));
                    pipeline.print_table();
                }
                if !output.print_events && Instant::now() >= status_at {
                    status_at = Instant::now() + Duration::from_secs(10);
                    info!("PID {}: {}", target.pid, pipeline.summary(attachment.counters().ok()));
                }
            }
            changed = stop.changed() => {
                // A dropped sender means whoever could stop us is gone: stop too.
                let reason = match changed {
                    Ok(()) => *stop.borrow(),
                    Err(_) => Some("stopped"),
                };
                if let Some(reason) = reason {
                    break reason;
                }
            }
        }
    };
    pipeline.drain(ring.get_mut());
    let counters = attachment.counters().ok();
    pipeline.tick(wall_now(), counters);
    if reason == "the worker exited" {
        pipeline.process_exit();
    }
    pipeline.health(counters, if reason == "the worker exited" { 0 } else { 1 });
    info!(
        "PID {}: {reason}; {}",
        target.pid,
        pipeline.summary(counters)
    );
    if let Some(lost) = counters.map(|c| c.events_lost).filter(|lost| *lost > 0) {
        warn!(
            "{lost} events were lost because the ring buffer was full; raise --ring-buffer-bytes"
        );
    }
    drop(ring);
    drop(attachment);
    info!("detached from PID {}", target.pid);
    if output.print_metrics.is_some() {
        pipeline.print_table();
    }
    // The last values are exported before exit; the exporter blocks, so off the async threads.
    let mut metrics = pipeline.metrics;
    let flushed = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("the final metric export failed: {e}"),
        Err(e) => warn!("the final metric export did not finish: {e}"),
    }
    Ok(())
}

fn wall_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Decoded events flow through here: printed, fed to the lifecycle engine, recorded.
struct Pipeline {
    print_events: bool,
    print_updates: bool,
    format: EventFormat,
    configured_workers: Option<i64>,
    layout: TargetLayout,
    clock: Clock,
    engine: Engine,
    metrics: Metrics,
    per_probe: BTreeMap<&'static str, u64>,
    undecodable: u64,
    workers_seen: usize,
    attached: i64,
    /// Kernel-side lost records seen so far; an increase marks the open runs.
    lost_seen: u64,
}

impl Pipeline {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut updates = Vec::new();
        let mut lines = Vec::new();
        while let Some(item) = ring.next() {
            match events::decode(&item, &self.layout, &self.clock) {
                Ok(event) => {
                    *self.per_probe.entry(probe_name(&event)).or_default() += 1;
                    if self.print_events {
                        lines.push(self.render(&event, events::format_text));
                    }
                    self.engine.on_event(&event, &mut updates);
                }
                Err(e) => {
                    self.undecodable += 1;
                    warn!("dropping an undecodable record: {e}");
                }
            }
        }
        self.apply(updates, lines);
    }

    /// Infers server-enforced timeouts, after marking the open runs if records were lost since
    /// the last tick (a lost end must not become an inferred timeout).
    fn tick(&mut self, now: i128, counters: Option<KernelCounters>) {
        if let Some(lost) = counters
            .map(|c| c.events_lost)
            .filter(|lost| *lost > self.lost_seen)
        {
            self.lost_seen = lost;
            self.engine.on_loss();
        }
        let mut updates = Vec::new();
        self.engine.on_tick(now, &mut updates);
        self.apply(updates, Vec::new());
    }

    fn process_exit(&mut self) {
        let mut updates = Vec::new();
        self.engine.on_process_exit(&mut updates);
        self.apply(updates, Vec::new());
    }

    fn apply(&mut self, updates: Vec<Update>, mut lines: Vec<String>) {
        for update in &updates {
            self.metrics.record(update);
            if self.print_updates {
                lines.push(self.render(update, format_update));
            }
        }
        if self.configured_workers.is_none() && self.engine.workers_seen() != self.workers_seen {
            self.workers_seen = self.engine.workers_seen();
            self.metrics
                .set_workers_configured(self.workers_seen as i64);
        }
        if !lines.is_empty() {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for line in lines {
                // A closed stdout (e.g. `| head`) must not kill the observer mid-detach.
                let _ = writeln!(out, "{line}");
            }
            let _ = out.flush();
        }
    }

    fn render<T: serde::Serialize>(&self, item: &T, text: fn(&T) -> String) -> String {
        match self.format {
            EventFormat::Text => text(item),
            EventFormat::Json => serde_json::to_string(item).unwrap_or_default(),
        }
    }

    fn health(&mut self, counters: Option<KernelCounters>, targets: i64) {
        let counters = counters.unwrap_or_default();
        self.metrics.record_health(&Health {
            events_lost: counters.events_lost,
            read_faults: counters.read_faults,
            runs_dropped: self.engine.dropped_runs(),
            runs_affected: self.engine.affected_runs(),
            probes_attached: if targets > 0 { self.attached } else { 0 },
            targets_observed: targets,
            runs_tracked: self.engine.open_runs() as i64,
        });
    }

    fn print_table(&self) {
        use std::io::IsTerminal as _;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        // On a terminal the table is redrawn in place; piped, each table follows the last.
        let refresh = if out.is_terminal() && !self.print_events && !self.print_updates {
            "\x1b[2J\x1b[H"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{refresh}{}",
            export::format_snapshot(&self.metrics.snapshot())
        );
        let _ = out.flush();
    }

    fn summary(&self, counters: Option<KernelCounters>) -> String {
        let seen: Vec<String> = self
            .per_probe
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let kernel = counters
            .map(|c| format!("lost={} read_faults={}", c.events_lost, c.read_faults))
            .unwrap_or_else(|| "kernel counters unavailable".into());
        format!(
            "events: {} ({kernel}, undecodable={}); runs open: {}",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(" ")
            },
            self.undecodable,
            self.engine.open_runs(),
        )
    }
}

fn format_update(update: &Update) -> String {
    match update {
        Update::RunStarted { workflow_type } => {
            format!("run_started workflow_type={workflow_type}")
        }
        Update::RunEnded {
            run_id,
            workflow_type,
            end,
            duration_seconds,
        } => format!(
            "run_ended run_id={run_id} workflow_type={workflow_type} end={} duration_s={}",
            serde_json::to_value(end)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            duration_seconds
                .map(|d| format!("{d:.3}"))
                .unwrap_or_else(|| "unknown".into())
        ),
        Update::WorkersRunning { delta } => format!("workers_running delta={delta:+}"),
    }
}

fn probe_name(event: &Event) -> &'static str {
    match event.body {
        EventBody::Activation { .. } => "activation",
        EventBody::Completion { .. } => "completion",
        EventBody::Eviction { .. } => "eviction",
        EventBody::WorkerShutdown { .. } => "worker_shutdown",
        EventBody::WorkerStart { .. } => "worker_start",
        EventBody::Task { .. } => "task",
    }
}
