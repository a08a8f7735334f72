//! The pure core of a session: ring-buffer records in, decoded events and lifecycle updates out
//! to the sinks. No I/O and no clock of its own: the caller says what time it is and what the
//! kernel counted, so recorded records replay to exactly the same values.

use std::collections::BTreeMap;

use observer_common::{EventHeader, kind};

use crate::{
    events::{self, Clock, Event, read_record},
    export::Health,
    kernel::KernelCounters,
    lifecycle::{Engine, Limits, Update},
    probes,
    reassembly::{Assembled, Reassembly},
    verify::{Admit, Verifier},
};

use super::catch_up::RunningWorkers;

/// Where a session's results go: the metric instruments, printers, a test's collector. Every
/// method has a default that ignores what it is given.
pub trait Sink {
    /// A decoded probe event.
    fn event(&mut self, _event: &Event) {}
    /// A lifecycle update.
    fn update(&mut self, _update: &Update) {}
    /// Workers configured for this process: the operator's number, else the distinct workers
    /// seen so far (sent when it changes).
    fn workers_configured(&mut self, _workers: i64) {}
    /// The observer's own health, cumulative.
    fn health(&mut self, _health: &Health) {}
    /// The end of a batch (a drain, a tick): a good moment to write out.
    fn flush(&mut self) {}
}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {}

/// Two sinks, each given everything.
impl<A: Sink, B: Sink> Sink for (A, B) {
    fn event(&mut self, event: &Event) {
        self.0.event(event);
        self.1.event(event);
    }

    fn update(&mut self, update: &Update) {
        self.0.update(update);
        self.1.update(update);
    }

    fn workers_configured(&mut self, workers: i64) {
        self.0.workers_configured(workers);
        self.1.workers_configured(workers);
    }

    fn health(&mut self, health: &Health) {
        self.0.health(health);
        self.1.health(health);
    }

    fn flush(&mut self) {
        self.0.flush();
        self.1.flush();
    }
}

/// Decoded events flow through here, to the lifecycle engine and the sinks.
pub struct Pipeline<S> {
    /// Which candidate layout the records are decoded with, once the records decided it.
    verifier: Verifier,
    clock: Clock,
    engine: Engine,
    sink: S,
    configured_workers: Option<i64>,
    /// Records per probe name.
    per_probe: BTreeMap<&'static str, u64>,
    undecodable: u64,
    /// Message chunks being put back together.
    reassembly: Reassembly,
    /// Messages longer than the kernel's cap, and messages some chunk of which was lost or
    /// unreadable: never decoded.
    messages_truncated: u64,
    messages_incomplete: u64,
    /// Bytes of the whole messages read.
    message_bytes: u64,
    workers_seen: usize,
    probes_attached: i64,
    /// Kernel-side lost records seen so far; an increase marks the open runs.
    lost_seen: u64,
    /// The workers named so far, for a probe attached only until they all are.
    running_workers: RunningWorkers,
}

impl<S> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("per_probe", &self.per_probe)
            .field("undecodable", &self.undecodable)
            .field("open_runs", &self.engine.open_runs())
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Pipeline<S> {
    pub fn new(
        verifier: Verifier,
        clock: Clock,
        limits: Limits,
        configured_workers: Option<i64>,
        probes_attached: i64,
        sink: S,
    ) -> Self {
        let mut pipeline = Self {
            verifier,
            clock,
            engine: Engine::new(limits),
            sink,
            configured_workers,
            per_probe: BTreeMap::new(),
            undecodable: 0,
            reassembly: Reassembly::default(),
            messages_truncated: 0,
            messages_incomplete: 0,
            message_bytes: 0,
            workers_seen: 0,
            probes_attached,
            lost_seen: 0,
            running_workers: RunningWorkers::default(),
        };
        if let Some(n) = configured_workers {
            pipeline.sink.workers_configured(n);
        }
        pipeline
    }

    /// The sink, once the session is over.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// One record from the ring buffer.
    pub fn record(&mut self, bytes: &[u8]) {
        let is_chunk = read_record::<EventHeader>(bytes, 0)
            .is_ok_and(|header| header.kind == kind::MESSAGE_CHUNK);
        if is_chunk {
            self.chunk(bytes);
            return;
        }
        match self.verifier.admit(bytes) {
            Admit::Now(candidate) => {
                let decoded = events::decode(bytes, self.verifier.layout(candidate), &self.clock);
                self.decoded(decoded);
            }
            Admit::Decided {
                chosen,
                records,
                lost,
            } => {
                // Records dropped for room while undecided held some run's news: as if lost.
                if lost {
                    self.engine.on_loss();
                }
                for record in records {
                    let decoded =
                        events::decode(&record, self.verifier.layout(chosen), &self.clock);
                    self.decoded(decoded);
                }
            }
            // The session reports a rejection, with the target's versions.
            Admit::Held | Admit::Dropped | Admit::Rejected => {}
        }
    }

    /// The decision among the candidate layouts.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The session ends: records still held for an undecided layout are counted as unverified.
    /// Returns where the decision stood, if it was never made.
    pub fn finish_verification(&mut self) -> Option<String> {
        self.verifier.finish()
    }

    /// One chunk of a message: decoded once the message is whole. A message that will never be
    /// whole may have held any run's news, so every open run is treated as affected by loss.
    fn chunk(&mut self, bytes: &[u8]) {
        let mut assembled = Vec::new();
        if let Err(e) = self.reassembly.push(bytes, &mut assembled) {
            self.undecodable += 1;
            log::warn!("dropping an undecodable message chunk: {e}");
        }
        for message in assembled {
            match message {
                Assembled::Whole { header, bytes } => {
                    self.message_bytes += bytes.len() as u64;
                    let decoded = events::decode_message(
                        header,
                        &bytes,
                        self.verifier.layout(0),
                        &self.clock,
                    );
                    // A message that does not decode held some run's news: as if lost.
                    if decoded.is_err() {
                        self.engine.on_loss();
                    }
                    self.decoded(decoded);
                }
                Assembled::Truncated {
                    header,
                    message_len,
                    prefix,
                } => {
                    self.messages_truncated += 1;
                    let run = probes::spec_by_id(header.probe_id)
                        .and_then(|spec| probes::messages::unframe(spec.framing, &prefix))
                        .and_then(probes::messages::run_id_of_prefix);
                    log::warn!(
                        "a message of {message_len} bytes (run {}) is longer than \
                         --max-message-bytes: not read; the open runs are marked as affected",
                        run.as_deref().unwrap_or("unknown")
                    );
                    if let Some(run) = run {
                        self.engine.on_unreadable(&run);
                    }
                    self.engine.on_loss();
                }
                Assembled::Incomplete { .. } => {
                    self.messages_incomplete += 1;
                    log::warn!(
                        "a message lost a chunk (ring buffer full, or unreadable memory): not \
                         read; the open runs are marked as affected"
                    );
                    self.engine.on_loss();
                }
            }
        }
    }

    fn decoded(&mut self, decoded: Result<Event, events::DecodeError>) {
        match decoded {
            Ok(event) => {
                *self.per_probe.entry(event.body.probe_name()).or_default() += 1;
                self.running_workers.on_event(&event);
                self.sink.event(&event);
                let mut updates = Vec::new();
                self.engine.on_event(&event, &mut updates);
                self.apply(&updates);
            }
            Err(e) => {
                self.undecodable += 1;
                log::warn!("dropping an undecodable record: {e}");
            }
        }
    }

    /// The end of a batch of records.
    pub fn flush(&mut self) {
        self.sink.flush();
    }

    /// Once a second and at the end: marks the open runs if records were lost since the last
    /// tick (a lost end must not become an inferred timeout), then infers server-enforced
    /// timeouts.
    pub fn tick(&mut self, now_unix_nanos: i128, counters: Option<KernelCounters>) {
        if let Some(lost) = counters
            .map(|c| c.events_lost)
            .filter(|lost| *lost > self.lost_seen)
        {
            self.lost_seen = lost;
            self.engine.on_loss();
        }
        let mut updates = Vec::new();
        self.engine.on_tick(now_unix_nanos, &mut updates);
        self.apply(&updates);
    }

    /// Reports the observer's health: `targets` is 1 while the process is observed, 0 once it
    /// exited (and then no probes are attached).
    pub fn health(&mut self, counters: Option<KernelCounters>, targets: i64) {
        let counters = counters.unwrap_or_default();
        let health = Health {
            events_lost: counters.events_lost,
            read_faults: counters.read_faults,
            records_truncated: self.messages_truncated,
            messages_incomplete: self.messages_incomplete,
            runs_dropped: self.engine.dropped_runs(),
            runs_expired: self.engine.expired_runs(),
            runs_affected: self.engine.affected_runs(),
            probes_attached: if targets > 0 { self.probes_attached } else { 0 },
            targets_observed: targets,
            runs_tracked: self.engine.open_runs() as i64,
            records_unverified: self.verifier.unverified(),
            layouts_rejected: u64::from(self.verifier.rejection().is_some()),
        };
        self.sink.health(&health);
        self.flush();
    }

    /// `count` workers already ran when the observer attached, and the start probe of this
    /// build fires only when a worker is created.
    pub fn existing_workers(&mut self, count: usize) {
        let mut updates = Vec::new();
        self.engine.on_existing_workers(count, &mut updates);
        self.apply(&updates);
    }

    /// The process exited: its workers stopped.
    pub fn process_exit(&mut self) {
        let mut updates = Vec::new();
        self.engine.on_process_exit(&mut updates);
        self.apply(&updates);
    }

    fn apply(&mut self, updates: &[Update]) {
        for update in updates {
            self.sink.update(update);
        }
        let seen = self.engine.workers_seen();
        if self.configured_workers.is_none() && seen != self.workers_seen {
            self.workers_seen = seen;
            self.sink.workers_configured(seen as i64);
        }
    }

    pub fn open_runs(&self) -> usize {
        self.engine.open_runs()
    }

    /// The workers named so far (see [`RunningWorkers`]).
    pub fn running_workers(&self) -> &RunningWorkers {
        &self.running_workers
    }

    /// Probes were detached (the other candidates' once one is verified, a probe whose work is
    /// done): `attached` stay, exported as the observer's health.
    pub fn probes_attached(&mut self, attached: i64) {
        self.probes_attached = attached;
    }

    /// One line: records per probe, kernel counters, open runs.
    pub fn summary(&self, counters: Option<KernelCounters>) -> String {
        let seen: Vec<String> = self
            .per_probe
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let kernel = counters
            .map(|c| format!("lost={} read_faults={}", c.events_lost, c.read_faults))
            .unwrap_or_else(|| "kernel counters unavailable".into());
        format!(
            "events: {} ({kernel}, undecodable={}, truncated={}, incomplete={}, message_bytes={}); \
             runs open: {}",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(" ")
            },
            self.undecodable,
            self.messages_truncated,
            self.messages_incomplete,
            self.message_bytes,
            self.engine.open_runs(),
        )
    }
}
