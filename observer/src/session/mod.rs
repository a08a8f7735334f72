//! Observing one process, from attaching its plan to detaching: the ring buffer drained into the
//! [`Pipeline`] (pure, in `pipeline`), on timers and when the kernel wakes us, until the process
//! exits or a [`StopReason`] arrives; then the last values are exported. `attach` runs one
//! session, `watch` one per worker.

mod catch_up;
mod output;
mod pipeline;
pub mod recording;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

pub use output::{Format, Printer, print_table};
pub use pipeline::{NullSink, Pipeline, Sink};

use crate::{
    events::{self, Clock},
    export::{ExportSettings, Health, Metrics},
    kernel::{AttachCandidate, Attachment, KernelCounters, KernelSettings},
    lifecycle::{Limits, Update},
    plan::Plan,
    probes::Lifetime,
    target::{Probed, Target, WORKER_THREAD},
    verify::{Verification, Verifier},
};

/// How one process is observed: what `attach` and `watch` set from their flags, and what is
/// known about the process.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub print_events: bool,
    pub print_updates: bool,
    /// Print the table of values this often, and at exit.
    pub print_metrics: Option<Duration>,
    pub format: Format,
    pub export: ExportSettings,
    /// Workers configured for this process, if the operator says.
    pub configured_workers: Option<i64>,
    pub limits: Limits,
    pub kernel: KernelSettings,
    /// How often the ring buffer is drained when the kernel has not woken us.
    pub drain_interval: Duration,
    /// Where to record the session's inputs, if anywhere.
    pub record_to: Option<PathBuf>,
    /// Resource attributes that tell this process's metrics apart (container, pod).
    pub resource: Vec<(String, String)>,
    /// What made `watch` look at the process, and when (CLOCK_MONOTONIC): to report how long
    /// attaching took.
    pub noticed: Option<Noticed>,
}

/// The kernel event that made `watch` look at a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Noticed {
    pub monotonic_ns: u64,
    /// e.g. `its exec`.
    pub event: &'static str,
}

/// Why a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
    /// `--duration-secs` passed.
    DurationPassed,
    /// The observed process exited.
    TargetExited,
    /// The observed process exec'd another program: the probes sit on the old file.
    Execd,
    /// Whoever could stop the session is gone.
    Abandoned,
    /// The live records fit none of the candidate layouts.
    LayoutRejected,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Interrupted => "interrupted",
            Self::Terminated => "terminated",
            Self::DurationPassed => "the requested duration passed",
            Self::TargetExited => "the worker exited",
            Self::Execd => "the process exec'd a new program",
            Self::Abandoned => "stopped",
            Self::LayoutRejected => "its records fit none of the candidate layouts",
        })
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves with why to stop: one of
/// them arrived, or `duration` passed.
pub fn stop_requested(
    duration: Option<Duration>,
) -> std::io::Result<impl Future<Output = StopReason>> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => StopReason::Interrupted,
            _ = sigterm.recv() => StopReason::Terminated,
            () = deadline => StopReason::DurationPassed,
        }
    })
}

/// What is logged about a plan before attaching it.
pub fn log_plan(target: &Target, plan: &Plan) {
    let package = plan
        .versions
        .package
        .as_ref()
        .map(|p| format!("{} {}, ", p.name, p.version))
        .unwrap_or_default();
    info!(
        "PID {} ({}, probes in {}): {package}sdk-core {}, rustc {}; reads {}",
        target.pid,
        target.exe_name,
        target.probed_name(),
        plan.versions.sdk_core.as_deref().unwrap_or("?"),
        plan.versions.rustc.as_deref().unwrap_or("?"),
        plan.family,
    );
    match plan.verification {
        Verification::Live => {
            info!(
                "PID {}: no layout is known for certain; {} candidate(s), each read live until \
                 the records pick exactly one (nothing counts before that):",
                target.pid,
                plan.candidates.len()
            );
            for (i, candidate) in plan.candidates.iter().enumerate() {
                info!("PID {}:   candidate {i}: {}", target.pid, candidate.label());
            }
        }
        Verification::Certain | Verification::Off => {
            if let Some(candidate) = plan.candidates.first() {
                info!("PID {}: layout from {}", target.pid, candidate.label());
            }
        }
    }
    for planned in &plan.probes {
        info!(
            "PID {}: probe {}: {} ({} location(s))",
            target.pid,
            planned.spec.name,
            planned.point.function,
            planned.functions.len()
        );
    }
    for fact in plan.not_covered() {
        warn!("PID {}: not covered: {fact}", target.pid);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(transparent)]
    Attach(#[from] crate::kernel::AttachError),
    #[error("PID {pid} ({exe}) exited while the observer was attaching to it")]
    ExitedDuringAttach { pid: u32, exe: String },
    #[error(
        "--max-message-bytes {max_message} needs a ring buffer of at least twice that: raise \
         --ring-buffer-bytes (now {ring}) or lower --max-message-bytes"
    )]
    RingTooSmall { max_message: u64, ring: u32 },
    #[error("polling the ring buffer: {0}")]
    Poll(std::io::Error),
    #[error("waiting on the ring buffer: {0}")]
    Wait(std::io::Error),
    #[error(transparent)]
    Recording(#[from] recording::RecordingError),
    #[error(
        "PID {pid} ({exe}, sdk-core {sdk_core}, rustc {rustc}) is no longer observed: {rejection}. \
         Nothing was counted from records that did not fit. Build the worker with debug info for \
         sdk-core, or add a layout-table row for this rustc (`cargo xtask gen-layouts`); if the \
         layout came from the binary's own DWARF or its exact row, please report it with a \
         recording (`attach --record-to FILE`)"
    )]
    LayoutRejected {
        pid: u32,
        exe: String,
        sdk_core: String,
        rustc: String,
        rejection: crate::verify::Rejection,
    },
}

/// The metric instruments as a sink of the pipeline.
impl Sink for Metrics {
    fn update(&mut self, update: &Update) {
        self.record(update);
    }

    fn workers_configured(&mut self, workers: i64) {
        self.set_workers_configured(workers);
    }

    fn health(&mut self, health: &Health) {
        self.record_health(health);
    }
}

/// Records what the pipeline is fed, beside it. The first write error stops the recording (a
/// half-written frame ends it) and is logged once.
struct Recording(Option<recording::Recorder>);

impl Recording {
    fn write(&mut self, input: &recording::Input) {
        self.with(|r| r.write(input));
    }

    /// A ring-buffer record; nothing is copied when the session is not recorded.
    fn record(&mut self, bytes: &[u8]) {
        self.with(|r| r.write_record(bytes));
    }

    fn with(
        &mut self,
        write: impl FnOnce(&mut recording::Recorder) -> Result<(), recording::RecordingError>,
    ) {
        if let Some(recorder) = &mut self.0
            && let Err(e) = write(recorder)
        {
            warn!("recording the session failed, and stops here: {e}");
            self.0 = None;
        }
    }

    fn finish(&mut self) {
        if let Some(mut recorder) = self.0.take()
            && let Err(e) = recorder.flush()
        {
            warn!("recording the session failed: {e}");
        }
    }
}

/// Observes one resolved worker process until it exits or `stop` says why to stop, then
/// detaches and exports its last values.
pub async fn observe(
    mut target: Target,
    plan: Plan,
    config: &SessionConfig,
    mut stop: tokio::sync::watch::Receiver<Option<StopReason>>,
) -> Result<(), SessionError> {
    // The executable's bytes (tens of MB) and its symbol table were only needed to resolve it;
    // give the freed heap back to the system rather than keep it as resident memory.
    target.image = Vec::new();
    // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
    unsafe { libc::malloc_trim(0) };
    let mut resource = config.resource.clone();
    // The worker's runtime. Not `telemetry.sdk.language`: that names the telemetry SDK, which
    // is the observer's (Rust), not the worker's.
    if let Probed::Library { runtime, .. } = &target.probed {
        resource.push((
            "process.runtime.name".to_string(),
            runtime.otel_name().to_string(),
        ));
    }
    let metrics = Metrics::new(&config.export, target.pid, &target.exe_name, &resource)?;
    // A whole message must fit in the ring buffer with room to spare, or it never arrives whole.
    let max_message =
        u64::from(config.kernel.message_chunks) * observer_common::MESSAGE_CHUNK_BYTES as u64;
    if !plan.family.needs_layout() && max_message * 2 > u64::from(config.kernel.ring_buffer_bytes) {
        return Err(SessionError::RingTooSmall {
            max_message,
            ring: config.kernel.ring_buffer_bytes,
        });
    }
    let kernel_layouts = plan
        .candidates
        .iter()
        .map(|c| {
            plan.family
                .needs_layout()
                .then(|| c.layout.kernel_layout())
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let attach_candidates: Vec<AttachCandidate<'_>> = plan
        .candidates
        .iter()
        .zip(&kernel_layouts)
        .map(|(c, layout)| AttachCandidate {
            layout: layout.as_ref(),
            registers: &c.registers,
        })
        .collect();
    let mut attachment = match Attachment::attach(
        &target.attach_path(),
        target.pid,
        &plan.probes,
        &attach_candidates,
        config.kernel,
    ) {
        Ok(attachment) => attachment,
        // The uprobe error (ESRCH, ENOENT) would not say why.
        Err(_) if !target.is_alive() => {
            return Err(SessionError::ExitedDuringAttach {
                pid: target.pid,
                exe: target.exe_name.clone(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let latency = config
        .noticed
        .map(|noticed| {
            let ms = (events::monotonic_now_ns().saturating_sub(noticed.monotonic_ns)) as f64 / 1e6;
            format!(" ({ms:.1} ms after {})", noticed.event)
        })
        .unwrap_or_default();
    let per_candidate = if plan.candidates.len() > 1 {
        format!(" (one set per candidate layout, {})", plan.candidates.len())
    } else {
        String::new()
    };
    info!(
        "attached {} probes{per_candidate} to PID {}{latency}; Ctrl-C detaches",
        attachment.attached, target.pid
    );

    // Reading the binary (symbols, DWARF, the table) took tens of megabytes that are free now.
    return_freed_memory();
    let ring = attachment.take_ring_buffer()?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until `ring`
    // (and with it the `RingBuf`) is dropped below.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.map_err(|e| SessionError::Poll(e.into_parts().1))?;
    let clock = Clock::now();
    let verifier_candidates: Vec<_> = plan.candidates.iter().map(|c| c.for_verifier()).collect();
    let mut recording = Recording(match &config.record_to {
        Some(path) => Some(recording::Recorder::create(
            path,
            &recording::Header {
                abi_version: observer_common::ABI_VERSION,
                pid: target.pid,
                executable: target.exe_name.clone(),
                realtime_minus_monotonic: clock.realtime_minus_monotonic(),
                probes_attached: attachment.attached as i64,
                layout: verifier_candidates
                    .first()
                    .map(|c| c.layout.clone())
                    .unwrap_or_default(),
                candidates: verifier_candidates.clone(),
                verification: plan.verification,
                max_open_runs: config.limits.max_open_runs,
                timeout_grace_nanos: config.limits.timeout_grace_nanos,
                idle_expiry_nanos: config.limits.idle_expiry_nanos,
                configured_workers: config.configured_workers,
            },
        )?),
        None => None,
    });
    let mirror = metrics.mirror();
    let printer = Printer::new(config.print_events, config.print_updates, config.format);
    let mut pipeline = Pipeline::new(
        Verifier::new(verifier_candidates, plan.verification),
        clock,
        config.limits,
        config.configured_workers,
        attachment.attached as i64,
        (metrics, printer),
    );
    // A start probe that only sees creations misses the workers already running: a probe on
    // their polls names them (and goes once it has), or, where there is none, they are counted.
    let attached_at = Instant::now();
    let mut catch_up = plan
        .probes
        .iter()
        .position(|p| p.spec.lifetime == Lifetime::UntilRunningWorkersNamed);
    if plan.probes.iter().any(|p| p.point.count_existing_workers) {
        let running = target.threads_named(WORKER_THREAD);
        match catch_up {
            Some(index) => info!(
                "{running} worker(s) already running: each is named at its next poll ({}), \
                 whose probe is detached once all are",
                plan.probes[index].point.function
            ),
            None => {
                info!(
                    "{running} worker(s) already running (counted from their {WORKER_THREAD} \
                     threads)"
                );
                recording.write(&recording::Input::ExistingWorkers(running));
                pipeline.existing_workers(running);
            }
        }
    } else {
        // No creation probe: the poll probe is the only one that sees workers start.
        catch_up = None;
    }
    let drain = |pipeline: &mut Pipeline<_>,
                 ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
                 recording: &mut Recording| {
        while let Some(item) = ring.next() {
            recording.record(&item);
            pipeline.record(&item);
        }
        pipeline.flush();
    };
    let mut tick = tokio::time::interval(config.drain_interval.max(Duration::from_millis(1)));
    let mut status_at = Instant::now() + Duration::from_secs(10);
    let mut health_at = Instant::now();
    let mut table_at = config.print_metrics.map(|every| Instant::now() + every);
    let redraw = !config.print_events && !config.print_updates;
    let tick_now = |pipeline: &mut Pipeline<_>,
                    recording: &mut Recording,
                    counters: Option<KernelCounters>| {
        let now = wall_now();
        recording.write(&recording::Input::Tick {
            now_unix_nanos: now,
            counters: counters.unwrap_or_default(),
        });
        pipeline.tick(now, counters);
    };
    let probes_attached =
        |pipeline: &mut Pipeline<_>, recording: &mut Recording, attachment: &Attachment| {
            recording.write(&recording::Input::ProbesAttached(attachment.attached));
            pipeline.probes_attached(attachment.attached as i64);
        };
    let health = |pipeline: &mut Pipeline<_>,
                  recording: &mut Recording,
                  counters: Option<KernelCounters>,
                  targets: i64| {
        recording.write(&recording::Input::Health {
            counters: counters.unwrap_or_default(),
            targets,
        });
        pipeline.health(counters, targets);
    };
    let mut losers_detached = false;
    let reason = loop {
        if pipeline.verifier().rejection().is_some() {
            break StopReason::LayoutRejected;
        }
        if !losers_detached
            && plan.verification == Verification::Live
            && let Some(chosen) = pipeline.verifier().chosen_index()
        {
            losers_detached = true;
            let kept = attachment.keep_only(chosen);
            probes_attached(&mut pipeline, &mut recording, &attachment);
            info!(
                "PID {}: layout verified after {} records: {}; {}",
                target.pid,
                pipeline.verifier().checked(),
                plan.candidates[chosen].label(),
                match kept {
                    Ok(()) => format!(
                        "the other candidates' probes are detached ({} probes stay)",
                        attachment.attached
                    ),
                    Err(e) => format!("detaching the other candidates' probes failed: {e}"),
                }
            );
        }
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(SessionError::Wait)?;
                drain(&mut pipeline, guard.get_inner_mut(), &mut recording);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(&mut pipeline, ring.get_mut(), &mut recording);
                if !target.is_alive() {
                    break StopReason::TargetExited;
                }
                // Once a second: server-enforced timeouts (a scan of the open runs) and health.
                if Instant::now() >= health_at {
                    health_at = Instant::now() + Duration::from_secs(1);
                    let counters = attachment.counters().ok();
                    tick_now(&mut pipeline, &mut recording, counters);
                    health(&mut pipeline, &mut recording, counters, 1);
                    // A second in, a worker being created as we attached has its thread.
                    if let Some(index) = catch_up
                        && attached_at.elapsed() >= Duration::from_secs(1)
                        && pipeline
                            .running_workers()
                            .all_named(target.threads_named(WORKER_THREAD))
                    {
                        catch_up = None;
                        let detached = attachment.detach_probe(index);
                        probes_attached(&mut pipeline, &mut recording, &attachment);
                        let function = plan.probes[index].point.function;
                        match detached {
                            Ok(()) => info!(
                                "PID {}: every worker that ran at attach is named ({} by its \
                                 poll); the probe on {function} is detached ({} probes stay)",
                                target.pid,
                                pipeline.running_workers().named(),
                                attachment.attached
                            ),
                            Err(e) => warn!(
                                "PID {}: detaching the probe on {function} failed: {e}",
                                target.pid
                            ),
                        }
                    }
                }
                if let (Some(at), Some(every)) = (table_at, config.print_metrics)
                    && Instant::now() >= at
                {
                    table_at = Some(at + every.max(Duration::from_secs(1)));
                    print_table(&mirror.snapshot(), redraw);
                }
                if !config.print_events && Instant::now() >= status_at {
                    status_at = Instant::now() + Duration::from_secs(10);
                    info!("PID {}: {}", target.pid, pipeline.summary(attachment.counters().ok()));
                    if pipeline.verifier().chosen_index().is_none() {
                        info!(
                            "PID {}: layout not verified yet (nothing counts until it is): {}",
                            target.pid,
                            pipeline.verifier().standing()
                        );
                    }
                }
            }
            changed = stop.changed() => {
                // A dropped sender means whoever could stop us is gone: stop too.
                let reason = match changed {
                    Ok(()) => *stop.borrow(),
                    Err(_) => Some(StopReason::Abandoned),
                };
                if let Some(reason) = reason {
                    break reason;
                }
            }
        }
    };
    drain(&mut pipeline, ring.get_mut(), &mut recording);
    let counters = attachment.counters().ok();
    tick_now(&mut pipeline, &mut recording, counters);
    let exited = reason == StopReason::TargetExited;
    if exited {
        recording.write(&recording::Input::ProcessExit);
        pipeline.process_exit();
    }
    recording.write(&recording::Input::SessionEnd);
    if let Some(standing) = pipeline.finish_verification() {
        warn!(
            "PID {}: the layout was never verified, so nothing was counted: {standing}",
            target.pid
        );
    }
    let observed = !exited && reason != StopReason::LayoutRejected;
    health(&mut pipeline, &mut recording, counters, i64::from(observed));
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
    recording.finish();
    drop(ring);
    drop(attachment);
    info!("detached from PID {}", target.pid);
    let rejection = pipeline.verifier().rejection().cloned();
    let (mut metrics, _) = pipeline.into_sink();
    if config.print_metrics.is_some() {
        print_table(&mirror.snapshot(), redraw);
    }
    // The last values are exported before exit; the exporter blocks, so off the async threads.
    let flushed = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("the final metric export failed: {e}"),
        Err(e) => warn!("the final metric export did not finish: {e}"),
    }
    match rejection {
        Some(rejection) => Err(SessionError::LayoutRejected {
            pid: target.pid,
            exe: target.exe_name.clone(),
            sdk_core: plan.versions.sdk_core.clone().unwrap_or_else(|| "?".into()),
            rustc: plan.versions.rustc.clone().unwrap_or_else(|| "?".into()),
            rejection,
        }),
        None => Ok(()),
    }
}

/// Gives the allocator's free pages back to the kernel. glibc keeps freed heap in the process
/// (22 MB of the observer's 32 MB after resolving a worker, measured); a session runs for weeks.
fn return_freed_memory() {
    // SAFETY: `malloc_trim` only walks the allocator's own free lists; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn wall_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf};

    use ground_truth::{GroundTruth, RunStatus};

    use super::{Sink, recording};
    use crate::{
        export::{Metrics, name},
        lifecycle::Update,
    };

    /// Collects the updates beside the metrics.
    #[derive(Default)]
    struct Updates(Vec<Update>);

    impl Sink for Updates {
        fn update(&mut self, update: &Update) {
            self.0.push(update.clone());
        }
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/recordings")
            .join(name)
    }

    /// The same recording, as a worker without a row for its rustc delivers it: every record
    /// once per candidate (the other niche scheme's row first). The live records pick the
    /// right row, and the values are exactly those of the session read with its own layout.
    #[test]
    fn a_recording_read_through_two_candidates_replays_to_the_same_values() {
        let (header, inputs) =
            recording::read(&fixture("every-end-state.rec")).expect("the recording reads");
        let nightly =
            crate::layout::from_table(crate::layout::SHIPPED_TABLE, "0.10.1", "1.97.0-nightly")
                .expect("row");
        let mut live = header.clone();
        live.candidates = vec![
            crate::verify::Candidate {
                label: "nightly".into(),
                layout: nightly,
            },
            crate::verify::Candidate {
                label: "stable".into(),
                layout: header.layout.clone(),
            },
        ];
        live.verification = crate::verify::Verification::Live;
        let at = std::mem::offset_of!(observer_common::EventHeader, candidate);
        let doubled: Vec<recording::Input> = inputs
            .iter()
            .flat_map(|input| match input {
                recording::Input::Record(bytes) => (0u8..2)
                    .map(|c| {
                        let mut copy = bytes.clone();
                        copy[at] = c;
                        recording::Input::Record(copy)
                    })
                    .collect(),
                other => vec![other.clone()],
            })
            .collect();
        let certain = recording::replay(&header, &inputs, Metrics::in_memory()).snapshot();
        let verified = recording::replay(&live, &doubled, Metrics::in_memory()).snapshot();
        assert!(!certain.counters.is_empty());
        assert_eq!(verified.counters, certain.counters);
        assert_eq!(verified.workers_running, certain.workers_running);
    }

    /// A session recorded from the real sample worker (`attach --record-to`) while the workload
    /// driver ran every end state against a real dev server, replayed without a kernel: every
    /// value equals the server's record of those runs.
    #[test]
    fn a_recorded_session_replays_to_the_servers_record() {
        let (header, inputs) =
            recording::read(&fixture("every-end-state.rec")).expect("the recording reads");
        let truth: GroundTruth = serde_json::from_str(
            &std::fs::read_to_string(fixture("every-end-state.truth.json")).expect("truth"),
        )
        .expect("truth parses");
        let (metrics, updates) =
            recording::replay(&header, &inputs, (Metrics::in_memory(), Updates::default()));
        let snapshot = metrics.snapshot();

        let mut expected: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for run in &truth.runs {
            let end = match (run.status, run.failure_is_timeout) {
                (RunStatus::Completed, _) => name::COMPLETED,
                (RunStatus::Failed, false) => name::FAILED,
                (RunStatus::Canceled, _) => name::CANCELED,
                (RunStatus::Failed, true) | (RunStatus::TimedOut, _) => name::TIMED_OUT,
                (RunStatus::ContinuedAsNew, _) => name::CONTINUED_AS_NEW,
                (other, _) => panic!("run {} is {other:?} on the server", run.run_id),
            };
            for metric in [name::STARTED, end] {
                *expected
                    .entry(metric)
                    .or_default()
                    .entry(run.workflow_type.clone())
                    .or_default() += 1;
            }
        }
        assert_eq!(snapshot.counters, expected);
        assert_eq!(snapshot.workers_running, 1);
        assert_eq!(snapshot.workers_configured, 1);
        // Every run's duration is within 50 ms of the server's close - start.
        let durations: BTreeMap<&str, f64> = updates
            .0
            .iter()
            .filter_map(|u| match u {
                Update::RunEnded {
                    run_id,
                    duration_seconds: Some(d),
                    ..
                } => Some((run_id.as_str(), *d)),
                _ => None,
            })
            .collect();
        assert_eq!(durations.len(), truth.runs.len());
        for run in &truth.runs {
            let server = (run.close_time_unix_nanos - run.start_time_unix_nanos) as f64 / 1e9;
            let seen = durations[run.run_id.as_str()];
            assert!(
                (seen - server).abs() <= 0.050,
                "run {}: {seen} s, the server says {server} s",
                run.run_id
            );
        }
    }
}
