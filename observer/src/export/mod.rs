//! The metric set: the instruments lifecycle updates are recorded into, one meter provider
//! feeding [`otlp`] (push) and [`prometheus`] (scrape), and a [`mirror`] of every value in
//! memory that [`text`] prints (`--print-metrics`) exactly as exported. Resource attributes
//! (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, and the observed process's own) say where
//! the numbers come from; `workflow_type` is the only metric attribute.

mod mirror;
mod otlp;
mod prometheus;
mod text;

pub use mirror::{Mirror, Snapshot};
pub use otlp::http_metrics_url;
pub use prometheus::Scrape;
pub use text::format_snapshot;

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _, UpDownCounter},
};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, resource::EnvResourceDetector};

use crate::lifecycle::{EndState, Update};

/// Histogram bucket bounds of `compozy_temporal_workflow_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Names of the contract's instruments.
pub mod name {
    pub const STARTED: &str = "compozy_temporal_workflow_started_total";
    pub const COMPLETED: &str = "compozy_temporal_workflow_completed_total";
    pub const FAILED: &str = "compozy_temporal_workflow_failed_total";
    pub const CANCELED: &str = "compozy_temporal_workflow_canceled_total";
    pub const TIMED_OUT: &str = "compozy_temporal_workflow_timed_out_total";
    pub const CONTINUED_AS_NEW: &str = "compozy_temporal_workflow_continued_as_new_total";
    pub const DURATION: &str = "compozy_temporal_workflow_duration_seconds";
    pub const WORKERS_RUNNING: &str = "compozy_temporal_workers_running_total";
    pub const WORKERS_CONFIGURED: &str = "compozy_temporal_workers_configured_total";
    pub const EVENTS_LOST: &str = "temporal_observer_events_lost_total";
    pub const READ_FAULTS: &str = "temporal_observer_read_faults_total";
    pub const PROBES_ATTACHED: &str = "temporal_observer_probes_attached";
    pub const TARGETS_OBSERVED: &str = "temporal_observer_targets_observed";
    pub const RUNS_TRACKED: &str = "temporal_observer_runs_tracked";
    pub const RUNS_DROPPED: &str = "temporal_observer_runs_dropped_total";
    pub const RUNS_EXPIRED: &str = "temporal_observer_runs_expired_total";
    pub const RUNS_AFFECTED: &str = "temporal_observer_runs_affected_by_loss_total";
    pub const RECORDS_TRUNCATED: &str = "temporal_observer_records_truncated_total";
    pub const MESSAGES_INCOMPLETE: &str = "temporal_observer_messages_incomplete_total";
    pub const RECORDS_UNVERIFIED: &str = "temporal_observer_records_unverified_total";
    pub const LAYOUT_REJECTED: &str = "temporal_observer_layout_rejected_total";
}

/// A counter fed from a cumulative total: each report adds what is new since the last.
#[derive(Debug)]
struct Cumulative {
    counter: Counter<u64>,
    reported: u64,
}

impl Cumulative {
    fn report(&mut self, total: u64) {
        self.counter.add(total.saturating_sub(self.reported), &[]);
        self.reported = self.reported.max(total);
    }
}

/// One counter per exclusive end state.
const END_INSTRUMENTS: [(EndState, &str, &str); 5] = [
    (EndState::Completed, name::COMPLETED, "Runs completed"),
    (
        EndState::Failed,
        name::FAILED,
        "Runs failed, not by a timeout",
    ),
    (EndState::Canceled, name::CANCELED, "Runs canceled"),
    (EndState::TimedOut, name::TIMED_OUT, "Runs that timed out"),
    (
        EndState::ContinuedAsNew,
        name::CONTINUED_AS_NEW,
        "Runs continued as new",
    ),
];

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

impl Transport {
    /// The names OTEL_EXPORTER_OTLP_PROTOCOL and `--otlp-protocol` accept.
    pub const NAMES: [&'static str; 2] = ["grpc", "http/protobuf"];
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!(
                "{other:?} is not a supported OTLP protocol; use `grpc` or `http/protobuf`"
            )),
        }
    }
}

/// Where and how the values go, as the operator set it.
#[derive(Clone, Debug, Default)]
pub struct ExportSettings {
    /// Overrides `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`.
    pub endpoint: Option<String>,
    /// Overrides `OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL`.
    pub transport: Option<Transport>,
    /// Overrides `OTEL_METRIC_EXPORT_INTERVAL`.
    pub interval: Option<Duration>,
    /// Push over OTLP (otherwise only the other outputs see the values).
    pub otlp: bool,
    /// Serve `GET /metrics` in the Prometheus text format on this address.
    pub prometheus: Option<std::net::SocketAddr>,
}

/// What the resource attributes say about the observed process.
#[derive(Clone, Copy, Debug)]
struct Process<'a> {
    pid: u32,
    /// `service.name` defaults to it.
    executable: &'a str,
    /// More attributes of this process (container, Kubernetes pod); they win over
    /// `OTEL_RESOURCE_ATTRIBUTES`, which describes the observer's own environment.
    resource: &'a [(String, String)],
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("{var}={value:?} is not a supported OTLP protocol; use `grpc` or `http/protobuf`")]
    Protocol { var: &'static str, value: String },
    #[error("cannot set up the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("cannot listen for Prometheus scrapes on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The instruments, and the mirror of their values.
#[derive(Debug)]
pub struct Metrics {
    provider: Option<SdkMeterProvider>,
    started: Counter<u64>,
    ends: [(EndState, &'static str, Counter<u64>); 5],
    duration: Histogram<f64>,
    workers_running: UpDownCounter<i64>,
    workers_configured: Gauge<i64>,
    events_lost: Cumulative,
    read_faults: Cumulative,
    probes_attached: Gauge<i64>,
    targets_observed: Gauge<i64>,
    runs_tracked: Gauge<i64>,
    runs_dropped: Cumulative,
    runs_expired: Cumulative,
    runs_affected: Cumulative,
    records_truncated: Cumulative,
    messages_incomplete: Cumulative,
    records_unverified: Cumulative,
    layouts_rejected: Cumulative,
    mirror: Mirror,
}

impl Metrics {
    /// Sets up the pipelines the configuration asks for: OTLP push, Prometheus pull, or neither
    /// (the in-memory mirror always). Must run inside a multi-threaded tokio runtime (gRPC).
    pub fn new(
        config: &ExportSettings,
        pid: u32,
        executable: &str,
        resource_attributes: &[(String, String)],
    ) -> Result<Self, ExportError> {
        let process = Process {
            pid,
            executable,
            resource: resource_attributes,
        };
        let mut builder = SdkMeterProvider::builder().with_resource(resource(process));
        if config.otlp {
            builder = otlp::add_reader(builder, config)?;
        }
        if let Some(addr) = config.prometheus {
            builder = prometheus::serve(builder, addr)?;
        }
        let provider = builder.build();
        let meter = provider.meter("temporal-observer");
        Ok(Self::with_meter(&meter, Some(provider)))
    }

    /// Instruments read by an in-process Prometheus registry and nothing else: the whole export
    /// path but the network (the pipeline benchmark).
    pub fn scraped() -> Result<(Self, Scrape), ExportError> {
        let (builder, scrape) = prometheus::add_reader(SdkMeterProvider::builder())?;
        let provider = builder.build();
        let meter = provider.meter("temporal-observer");
        Ok((Self::with_meter(&meter, Some(provider)), scrape))
    }

    /// Instruments that record nothing anywhere but the in-memory mirror (for tests).
    pub fn in_memory() -> Self {
        let provider = SdkMeterProvider::builder().build();
        let meter = provider.meter("temporal-observer");
        Self::with_meter(&meter, None)
    }

    fn with_meter(meter: &Meter, provider: Option<SdkMeterProvider>) -> Self {
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        let cumulative = |name: &'static str, description: &'static str| Cumulative {
            counter: counter(name, description),
            reported: 0,
        };
        Self {
            started: counter(
                name::STARTED,
                "Runs whose first workflow task ran (not replayed)",
            ),
            ends: END_INSTRUMENTS
                .map(|(state, name, description)| (state, name, counter(name, description))),
            duration: meter
                .f64_histogram(name::DURATION)
                .with_unit("s")
                .with_description("Seconds from a run's start to its end")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            workers_running: meter
                .i64_up_down_counter(name::WORKERS_RUNNING)
                .with_description("sdk-core workers running in observed processes")
                .build(),
            workers_configured: meter
                .i64_gauge(name::WORKERS_CONFIGURED)
                .with_description("Workers configured per observed instance")
                .build(),
            events_lost: cumulative(
                name::EVENTS_LOST,
                "Probe records lost because the ring buffer was full",
            ),
            read_faults: cumulative(
                name::READ_FAULTS,
                "Reads of the target's memory that failed",
            ),
            probes_attached: meter.i64_gauge(name::PROBES_ATTACHED).build(),
            targets_observed: meter.i64_gauge(name::TARGETS_OBSERVED).build(),
            runs_tracked: meter.i64_gauge(name::RUNS_TRACKED).build(),
            runs_dropped: cumulative(
                name::RUNS_DROPPED,
                "Open runs forgotten because of the memory cap",
            ),
            runs_expired: cumulative(
                name::RUNS_EXPIRED,
                "Open runs without a deadline forgotten after --idle-run-expiry-secs without news: \
                 runs the server closed without telling the worker (terminated, or reset)",
            ),
            runs_affected: cumulative(
                name::RUNS_AFFECTED,
                "Runs open while probe records were lost (no timeout is inferred for them)",
            ),
            records_truncated: cumulative(
                name::RECORDS_TRUNCATED,
                "Messages longer than --max-message-bytes, not read (the open runs count as affected)",
            ),
            messages_incomplete: cumulative(
                name::MESSAGES_INCOMPLETE,
                "Messages that lost a chunk, not read (the open runs count as affected)",
            ),
            records_unverified: cumulative(
                name::RECORDS_UNVERIFIED,
                "Probe records not counted because no candidate layout was verified for them",
            ),
            layouts_rejected: cumulative(
                name::LAYOUT_REJECTED,
                "Targets no longer observed: their live records fit none of the candidate layouts",
            ),
            mirror: Mirror::default(),
            provider,
        }
    }

    /// Records one lifecycle update.
    pub fn record(&self, update: &Update) {
        self.mirror
            .update(|snapshot| self.record_into(update, snapshot));
    }

    fn record_into(&self, update: &Update, snapshot: &mut Snapshot) {
        match update {
            Update::RunStarted { workflow_type, .. } => {
                self.started
                    .add(1, &[KeyValue::new("workflow_type", workflow_type.clone())]);
                *snapshot
                    .counters
                    .entry(name::STARTED)
                    .or_default()
                    .entry(workflow_type.clone())
                    .or_default() += 1;
            }
            Update::RunEnded {
                workflow_type,
                end,
                duration_seconds,
                ..
            } => {
                let attributes = [KeyValue::new("workflow_type", workflow_type.clone())];
                if let Some((_, name, counter)) =
                    self.ends.iter().find(|(state, _, _)| state == end)
                {
                    counter.add(1, &attributes);
                    *snapshot
                        .counters
                        .entry(name)
                        .or_default()
                        .entry(workflow_type.clone())
                        .or_default() += 1;
                }
                if let Some(seconds) = duration_seconds {
                    self.duration.record(*seconds, &attributes);
                    let entry = snapshot.durations.entry(workflow_type.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += seconds;
                }
            }
            Update::WorkersRunning { delta } => {
                self.workers_running.add(*delta, &[]);
                snapshot.workers_running += delta;
            }
        }
    }

    pub fn set_workers_configured(&self, value: i64) {
        self.workers_configured.record(value, &[]);
        self.mirror.update(|s| s.workers_configured = value);
    }

    /// The observer's own health. Kernel counters are cumulative; the deltas are exported.
    pub fn record_health(&mut self, health: &Health) {
        self.events_lost.report(health.events_lost);
        self.read_faults.report(health.read_faults);
        self.runs_dropped.report(health.runs_dropped);
        self.runs_expired.report(health.runs_expired);
        self.runs_affected.report(health.runs_affected);
        self.records_truncated.report(health.records_truncated);
        self.messages_incomplete.report(health.messages_incomplete);
        self.records_unverified.report(health.records_unverified);
        self.layouts_rejected.report(health.layouts_rejected);
        self.probes_attached.record(health.probes_attached, &[]);
        self.targets_observed.record(health.targets_observed, &[]);
        self.runs_tracked.record(health.runs_tracked, &[]);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.mirror.snapshot()
    }

    /// A handle on the in-memory copy of the values, which stays valid however the instruments
    /// are moved.
    pub fn mirror(&self) -> Mirror {
        self.mirror.clone()
    }

    /// Exports what is left and stops the pipeline. Blocking: call it off the async threads.
    pub fn shutdown(&mut self) -> Result<(), String> {
        match self.provider.take() {
            Some(provider) => provider.shutdown().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// What the observer knows about its own health, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub events_lost: u64,
    pub read_faults: u64,
    /// Messages longer than the kernel's cap.
    pub records_truncated: u64,
    /// Messages that lost a chunk.
    pub messages_incomplete: u64,
    pub runs_dropped: u64,
    /// Open runs forgotten after the idle expiry.
    pub runs_expired: u64,
    pub runs_affected: u64,
    pub probes_attached: i64,
    pub targets_observed: i64,
    pub runs_tracked: i64,
    /// Records never counted because the target's layout was not (or could not be) verified.
    pub records_unverified: u64,
    /// Targets whose candidate layouts the live records all contradicted.
    pub layouts_rejected: u64,
}

/// Resource attributes: where the numbers come from, never metric attributes.
fn resource(config: Process<'_>) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let defaults = [
        KeyValue::new("service.name", config.executable.to_string()),
        // One instance per observed process: two workers' counts never share a series.
        KeyValue::new("service.instance.id", format!("{host}/{}", config.pid)),
        KeyValue::new("process.pid", i64::from(config.pid)),
        KeyValue::new("process.executable.name", config.executable.to_string()),
        KeyValue::new("host.name", host.to_string()),
    ];
    // Later sources win: OTEL_RESOURCE_ATTRIBUTES over the defaults, the process's own
    // attributes over both, OTEL_SERVICE_NAME over all.
    let mut builder = Resource::builder_empty()
        .with_attributes(defaults)
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_attributes(
            config
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
    if let Ok(service) = std::env::var("OTEL_SERVICE_NAME")
        && !service.trim().is_empty()
    {
        builder = builder.with_service_name(service);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::EndState;

    #[test]
    fn updates_reach_the_mirror_per_workflow_type() {
        let metrics = Metrics::in_memory();
        metrics.record(&Update::RunStarted {
            run_id: "r".into(),
            workflow_type: "A".into(),
        });
        metrics.record(&Update::RunStarted {
            run_id: "r".into(),
            workflow_type: "A".into(),
        });
        metrics.record(&Update::RunEnded {
            run_id: "r".into(),
            workflow_type: "A".into(),
            end: EndState::TimedOut,
            duration_seconds: Some(1.5),
        });
        metrics.record(&Update::WorkersRunning { delta: 1 });
        metrics.set_workers_configured(3);
        let s = metrics.snapshot();
        assert_eq!(s.counters[name::STARTED]["A"], 2);
        assert_eq!(s.counters[name::TIMED_OUT]["A"], 1);
        assert!(!s.counters.contains_key(name::FAILED));
        assert_eq!(s.durations["A"], (1, 1.5));
        assert_eq!((s.workers_running, s.workers_configured), (1, 3));
        let table = format_snapshot(&s);
        assert!(table.contains("workers running: 1"), "{table}");
    }
}
