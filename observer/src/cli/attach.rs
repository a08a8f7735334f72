//! `temporal-observer attach --pid PID`: attach to one worker and stream its events.

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
    events::{self, Clock, Event},
    layout::TargetLayout,
    privileges,
    probes::{Attachment, KernelSettings},
    resolve::{self, LayoutSource},
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
    /// Print every event the probes report, one per line, on stdout.
    #[arg(long)]
    pub print_events: bool,
    /// Format of --print-events.
    #[arg(long, value_enum, default_value_t = EventFormat::Text)]
    pub format: EventFormat,
    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = 1 << 20, value_parser = parse_ring_size)]
    pub ring_buffer_bytes: u32,
    /// Wake the observer once this many bytes of events wait; below that it drains every
    /// --drain-interval-ms. Waking on every event would slow the worker's threads.
    #[arg(long, default_value_t = 64 * 1024)]
    pub wakeup_bytes: u64,
    /// How often to drain the ring buffer when it is not full enough to wake us.
    #[arg(long, default_value_t = 100)]
    pub drain_interval_ms: u64,
    /// Detach after this many seconds (default: until Ctrl-C, SIGTERM, or the worker exits).
    #[arg(long)]
    pub duration_secs: Option<u64>,
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let value: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if value < 4096 || !value.is_power_of_two() {
        return Err(format!("{value} is not a power of two of at least 4096"));
    }
    Ok(value)
}

pub fn run(args: &AttachArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(attach(args))
}

async fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    let target = Target::open(args.pid)?;
    let resolved = resolve::resolve(&target.image).with_context(|| {
        format!(
            "PID {} ({}) cannot be observed",
            target.pid, target.exe_name
        )
    })?;
    info!(
        "PID {} ({}): sdk-core {}, rustc {}, layout from {}",
        target.pid,
        target.exe_name,
        resolved.versions.sdk_core.as_deref().unwrap_or("?"),
        resolved.versions.rustc.as_deref().unwrap_or("?"),
        match resolved.layout_source {
            LayoutSource::Dwarf => "the binary's DWARF",
            LayoutSource::Table => "the shipped table",
        }
    );
    for planned in &resolved.plan {
        match planned.functions.as_slice() {
            [] => warn!(
                "probe {}: {} is not in this binary; {} will not be seen",
                planned.spec.name, planned.spec.function, planned.spec.yields
            ),
            functions => info!(
                "probe {}: {} ({} location(s))",
                planned.spec.name,
                planned.spec.function,
                functions.len()
            ),
        }
    }
    privileges::check()?;
    let kernel_layout = resolved.layout.kernel_layout()?;
    let settings = KernelSettings {
        ring_buffer_bytes: args.ring_buffer_bytes,
        wakeup_bytes: args.wakeup_bytes,
    };
    let mut attachment = Attachment::attach(
        &target.exe_link,
        target.pid,
        &resolved.plan,
        &kernel_layout,
        settings,
    )?;
    info!(
        "attached {} probes to PID {}; Ctrl-C detaches",
        attachment.attached, target.pid
    );

    let ring = attachment.take_ring_buffer()?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until `ring`
    // (and with it the `RingBuf`) is dropped below.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let mut sink = Sink::new(
        args.print_events.then_some(args.format),
        resolved.layout.clone(),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(args.drain_interval_ms.max(1)));
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = args
        .duration_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut status_at = Instant::now() + Duration::from_secs(10);

    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                sink.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                sink.drain(ring.get_mut());
                if !target.is_alive() {
                    break "the worker exited";
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break "the requested duration passed";
                }
                if !args.print_events && Instant::now() >= status_at {
                    status_at = Instant::now() + Duration::from_secs(10);
                    info!("{}", sink.summary(attachment.counters().ok()));
                }
            }
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
        }
    };
    sink.drain(ring.get_mut());
    let counters = attachment.counters().ok();
    info!("{reason}; {}", sink.summary(counters));
    if let Some(lost) = counters.map(|c| c.events_lost).filter(|lost| *lost > 0) {
        warn!(
            "{lost} events were lost because the ring buffer was full; raise --ring-buffer-bytes"
        );
    }
    drop(ring);
    drop(attachment);
    info!("detached from PID {}", target.pid);
    Ok(())
}

/// Where decoded events go: stdout when printing, counts always.
struct Sink {
    format: Option<EventFormat>,
    layout: TargetLayout,
    clock: Clock,
    per_probe: BTreeMap<&'static str, u64>,
    undecodable: u64,
}

impl Sink {
    fn new(format: Option<EventFormat>, layout: TargetLayout) -> Self {
        Self {
            format,
            layout,
            clock: Clock::now(),
            per_probe: BTreeMap::new(),
            undecodable: 0,
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(item) = ring.next() {
            match events::decode(&item, &self.layout, &self.clock) {
                Ok(event) => {
                    *self.per_probe.entry(probe_name(&event)).or_default() += 1;
                    let line = match self.format {
                        Some(EventFormat::Text) => events::format_text(&event),
                        Some(EventFormat::Json) => {
                            serde_json::to_string(&event).unwrap_or_default()
                        }
                        None => continue,
                    };
                    // A closed stdout (e.g. `| head`) must not kill the observer mid-detach.
                    let _ = writeln!(out, "{line}");
                }
                Err(e) => {
                    self.undecodable += 1;
                    warn!("dropping an undecodable record: {e}");
                }
            }
        }
        let _ = out.flush();
    }

    fn summary(&self, counters: Option<crate::probes::KernelCounters>) -> String {
        let seen: Vec<String> = self
            .per_probe
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let kernel = counters
            .map(|c| format!("lost={} read_faults={}", c.events_lost, c.read_faults))
            .unwrap_or_else(|| "kernel counters unavailable".into());
        format!(
            "events: {} ({kernel}, undecodable={})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(" ")
            },
            self.undecodable
        )
    }
}

fn probe_name(event: &Event) -> &'static str {
    match event.body {
        events::EventBody::Activation { .. } => "activation",
        events::EventBody::Completion { .. } => "completion",
        events::EventBody::Eviction { .. } => "eviction",
        events::EventBody::WorkerShutdown { .. } => "worker_shutdown",
        events::EventBody::WorkerStart { .. } => "worker_start",
    }
}
