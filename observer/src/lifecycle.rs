//! Rebuilds each workflow run's lifecycle from decoded events and turns it into metric updates.
//!
//! Pure and deterministic: events and the current time go in, updates come out. The rules are the
//! metric contract's:
//! - a run starts when its first workflow task runs for real (`InitializeWorkflow`, not replaying)
//!   and that task's completion is handed back successfully; a replay after an eviction or a
//!   restart never starts it again. Counting at the completion, not the activation, keeps a
//!   fleet exact: a worker killed (or a task failing) before it completes its first task does
//!   not count the start that the worker retrying the task counts;
//! - a run ends once: its terminal command is pending until core evicts the run, which it does
//!   after the server accepted the command (`WorkflowExecutionEnding`, or an eviction for room
//!   that was already pending, see [`EvictionReason::confirms_end`]); an eviction that means the
//!   completion failed, or new work for the run, means the server did not take it;
//! - terminal commands that answer a replaying activation (a query on a closed run replays it
//!   entirely) are ignored, and so is anything about a run already ended;
//! - a run the server times out sends nothing: it is ended `timed_out` once its deadline (known
//!   from its first activation) plus a grace period has passed;
//! - a run made by a reset replays the history it was copied from, then runs for real the task
//!   after the reset point, where core gives the workflow a new random seed: that task starts it;
//! - a run the server terminates sends nothing either, and has no end state: without a deadline
//!   to wait for, it is forgotten (and counted) once it has been idle for the expiry;
//! - open runs are bounded: past the cap the least recently active is forgotten and counted.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use crate::events::{
    CompletionStatus, Event, EventBody, EvictionReason, JobKind, Nanos, RunInit, Terminal,
    UUID_DASHES,
};

/// How a run ended; the end states are exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    Completed,
    Failed,
    Canceled,
    TimedOut,
    ContinuedAsNew,
}

/// What the metrics must record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "update", rename_all = "snake_case")]
pub enum Update {
    RunStarted {
        run_id: String,
        workflow_type: String,
    },
    RunEnded {
        run_id: String,
        workflow_type: String,
        end: EndState,
        /// From the run's start (as history records it) to its end; unknown when the observer
        /// never saw the run's first activation.
        duration_seconds: Option<f64>,
    },
    /// A worker started (+1) or stopped (-1) running.
    WorkersRunning { delta: i64 },
}

impl std::fmt::Display for EndState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::TimedOut => "timed_out",
            Self::ContinuedAsNew => "continued_as_new",
        })
    }
}

/// One line per update, as `--print-updates` shows it.
impl std::fmt::Display for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Update::RunStarted {
                run_id,
                workflow_type,
            } => {
                write!(
                    f,
                    "run_started run_id={run_id} workflow_type={workflow_type}"
                )
            }
            Update::RunEnded {
                run_id,
                workflow_type,
                end,
                duration_seconds,
            } => {
                write!(
                    f,
                    "run_ended run_id={run_id} workflow_type={workflow_type} end={end} duration_s="
                )?;
                match duration_seconds {
                    Some(d) => write!(f, "{d:.3}"),
                    None => f.write_str("unknown"),
                }
            }
            Update::WorkersRunning { delta } => write!(f, "workers_running delta={delta:+}"),
        }
    }
}

/// Limits of the engine.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open runs kept at most.
    pub max_open_runs: usize,
    /// Ended run ids remembered, so that late duplicates are ignored.
    pub max_ended_runs: usize,
    /// How long past a run's deadline before the server is taken to have timed it out.
    pub timeout_grace_nanos: Nanos,
    /// How long a run without a deadline may go without any news before it is forgotten: the
    /// server closed it without telling the worker (terminated, or reset into a new run).
    pub idle_expiry_nanos: Nanos,
}

/// Seven days: longer than most runs wait for a signal, short enough that terminated runs do not
/// pile up in the open-run count.
pub const DEFAULT_IDLE_EXPIRY_SECS: u64 = 7 * 24 * 3600;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_open_runs: 100_000,
            max_ended_runs: 100_000,
            timeout_grace_nanos: 2_000_000_000,
            idle_expiry_nanos: Nanos::from(DEFAULT_IDLE_EXPIRY_SECS) * 1_000_000_000,
        }
    }
}

/// A time kept per run: Unix nanoseconds in 64 bits (until the year 2262), half of an event's
/// `Nanos`, because every open run holds four of them.
type Stamp = i64;

fn stamp(nanos: Nanos) -> Stamp {
    nanos.clamp(Stamp::MIN.into(), Stamp::MAX.into()) as Stamp
}

/// A run id as the engine keeps it: a UUID in its canonical text form (what Temporal gives every
/// run) as its 16 bytes, anything else as it came. Every open and every remembered ended run
/// holds one or two, so this is most of the engine's memory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum RunKey {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl RunKey {
    fn new(run_id: &str) -> Self {
        Self::uuid(run_id.as_bytes()).map_or_else(|| Self::Other(run_id.into()), Self::Uuid)
    }

    /// The bytes of a lowercase hyphenated UUID; `None` for any other text (kept as it is, so
    /// that the key gives back exactly the id it was made from).
    fn uuid(text: &[u8]) -> Option<[u8; 16]> {
        let text: &[u8; 36] = text.try_into().ok()?;
        if UUID_DASHES.iter().any(|&i| text[i] != b'-') {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        let mut at = 0;
        for byte in &mut out {
            if UUID_DASHES.contains(&at) {
                at += 1;
            }
            *byte = digit(text[at])? << 4 | digit(text[at + 1])?;
            at += 2;
        }
        Some(out)
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uuid(bytes) => {
                for (i, byte) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            Self::Other(text) => f.write_str(text),
        }
    }
}

/// An optional [`Stamp`] in 8 bytes (`i64::MIN`, 292 years before 1970, stands for none), where
/// an `Option` would take 16: every open run holds three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MaybeStamp(Stamp);

impl MaybeStamp {
    const NONE: Self = Self(Stamp::MIN);

    fn new(value: Option<Stamp>) -> Self {
        value.map_or(Self::NONE, |v| Self(v.max(Stamp::MIN + 1)))
    }

    fn get(self) -> Option<Stamp> {
        (self != Self::NONE).then_some(self.0)
    }
}

impl Default for MaybeStamp {
    fn default() -> Self {
        Self::NONE
    }
}

/// One open run: 56 bytes, most of an open run's cost with its key.
#[derive(Debug, Default)]
struct Run {
    /// Shared by every run of the type (see [`Engine::intern`]).
    workflow_type: Option<Arc<str>>,
    start_unix_nanos: MaybeStamp,
    deadline_unix_nanos: MaybeStamp,
    /// When the terminal command in `pending_end` was handed to core.
    pending_at: Stamp,
    last_active: Stamp,
    /// A terminal command handed to core, awaiting the server's acceptance.
    pending_end: Option<EndState>,
    /// An `InitializeWorkflow` was seen: the run's start counted then, unless it replayed.
    init_seen: bool,
    /// The run's start was counted.
    started: bool,
    /// The run's first task ran for real and its start counts once a completion of it is
    /// handed back successfully (or the run ends first).
    start_pending: bool,
    /// Whether the latest activation replayed history.
    replaying: bool,
    /// Open while records were lost: its end may have been among them, so its deadline passing
    /// proves nothing and no timeout is inferred for it.
    affected_by_loss: bool,
    /// An eviction for a reason that confirms an end came while no end was pending. Where the
    /// eviction probe sees requests (`ManagedRun::request_eviction`), core carries a request
    /// out only once the run has no work left (a replay's further activations come first); if
    /// the terminal completion comes meanwhile, core makes no further request (the waiting
    /// eviction stands in for `WorkflowExecutionEnding`), and the next thing seen of the run
    /// is the workflow code's empty reply to the eviction. Stale where the eviction was
    /// carried out already: harmless, since core then evicts (and is seen evicting) after every
    /// terminal completion before its reply, for the end or for the completion's failure.
    eviction_waiting: bool,
}

impl Run {
    fn pending(&self) -> Option<(EndState, Stamp)> {
        self.pending_end.map(|end| (end, self.pending_at))
    }

    fn set_pending(&mut self, pending: Option<(EndState, Stamp)>) {
        self.pending_end = pending.map(|(end, _)| end);
        self.pending_at = pending.map_or(0, |(_, at)| at);
    }
}

/// The engine's tables hash with foldhash (seeded per process, as hashbrown's default): most of
/// a record's cost here was SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// The lifecycle state of every run of one observed process.
#[derive(Debug, Default)]
pub struct Engine {
    limits: Limits,
    runs: Map<RunKey, Run>,
    /// The open runs ordered by last activity, so that the cap forgets the least recently
    /// active one in O(log n) instead of scanning every run.
    by_activity: BTreeSet<(Stamp, RunKey)>,
    ended: Set<RunKey>,
    ended_order: VecDeque<RunKey>,
    /// The workflow types seen: each run holds its type's one copy.
    types: Set<Arc<str>>,
    workers_running: HashSet<String>,
    workers_seen: HashSet<String>,
    /// Workers found running at attach whose task queue is not known (see
    /// [`Engine::on_existing_workers`]).
    unnamed_running: usize,
    unnamed_seen: usize,
    /// Addresses of workers without a known task queue already asked to shut down: sdk-core
    /// asks one worker more than once, and only the first counts.
    unnamed_shut_down: HashSet<String>,
    dropped_runs: u64,
    expired_runs: u64,
    affected_runs: u64,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Runs currently tracked in memory.
    pub fn open_runs(&self) -> usize {
        self.runs.len()
    }

    /// Open runs forgotten because of the cap.
    pub fn dropped_runs(&self) -> u64 {
        self.dropped_runs
    }

    /// Open runs forgotten after the idle expiry (see [`Limits::idle_expiry_nanos`]).
    pub fn expired_runs(&self) -> u64 {
        self.expired_runs
    }

    /// Runs marked because records were lost while they were open.
    pub fn affected_runs(&self) -> u64 {
        self.affected_runs
    }

    /// Records were lost: every open run may have lost its end, so none of them will be ended by
    /// inference. They still end normally on evidence (their ending eviction).
    pub fn on_loss(&mut self) {
        for run in self.runs.values_mut().filter(|r| !r.affected_by_loss) {
            run.affected_by_loss = true;
            self.affected_runs += 1;
        }
    }

    /// A message about `run_id` could not be read (too long to copy). A run this engine does
    /// not know yet (its first activation was the message) is not observed at all: none of its
    /// later news counts, so it is neither started nor ended here. A known run is marked as
    /// affected, like a run open during a loss.
    pub fn on_unreadable(&mut self, run_id: &str) {
        let key = RunKey::new(run_id);
        match self.runs.get_mut(&key) {
            Some(run) if run.affected_by_loss => {}
            Some(run) => {
                run.affected_by_loss = true;
                self.affected_runs += 1;
            }
            None if self.ended.contains(&key) => {}
            None => {
                self.affected_runs += 1;
                self.remember_ended(key);
            }
        }
    }

    /// Distinct workers seen in this process.
    pub fn workers_seen(&self) -> usize {
        self.workers_seen.len() + self.unnamed_seen
    }

    pub fn workers_running(&self) -> usize {
        self.workers_running.len() + self.unnamed_running
    }

    /// Applies one event.
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<Update>) {
        let now = stamp(event.time_unix_nanos);
        match &event.body {
            EventBody::Activation {
                run_id,
                workflow_type,
                replaying,
                init,
                jobs,
                ..
            } => {
                let key = RunKey::new(run_id);
                if self.ended.contains(&key) {
                    return;
                }
                // Every activation names its run where the probe reads the type with it: a run
                // whose start this observer did not see (attached late) is named by the next.
                let named = init
                    .as_ref()
                    .map(|i| i.workflow_type.as_str())
                    .or(workflow_type.as_deref())
                    .map(|t| self.intern(t));
                let run = self.run(key, now);
                if init.is_some() || run.workflow_type.is_none() {
                    run.workflow_type = named;
                }
                run.replaying = *replaying;
                // New work for the run (not a query, not its removal from the cache): a terminal
                // command still pending was not accepted.
                let new_work = jobs.iter().any(JobKind::is_new_work);
                if !*replaying && new_work {
                    run.set_pending(None);
                }
                let first_init = init.is_some() && !run.init_seen;
                if let Some(init) = init {
                    run.init_seen = true;
                    apply_init(run, init);
                }
                // Started by its first real task, or (a run a reset made, whose first task
                // replayed the history it was copied from) by the real task after the reset,
                // once that task's completion is handed back.
                let reset = jobs.contains(&JobKind::UpdateRandomSeed);
                if !*replaying && !run.started && (first_init || reset) {
                    run.start_pending = true;
                    if reset {
                        // The server starts the new run at the reset, not when the history it
                        // copied began: this task came right after, as close as core tells.
                        run.start_unix_nanos = MaybeStamp::new(Some(now));
                    }
                }
            }
            EventBody::Completion {
                run_id,
                status,
                command_count,
                terminal,
                timeout_failure,
                ..
            } => {
                let key = RunKey::new(run_id);
                if self.ended.contains(&key) {
                    return;
                }
                if *status == CompletionStatus::Successful
                    && let Some(run) = self.runs.get_mut(&key)
                {
                    start_if_pending(&key, run, out);
                }
                let Some(terminal) = terminal else {
                    // The empty reply to an eviction core carried out on a request made before
                    // the terminal completion (see `Run::eviction_waiting`): the server took
                    // the end, or core would have requested the eviction again with the
                    // failure's reason.
                    let reply = *status == CompletionStatus::Successful && *command_count == 0;
                    if let Some(run) = self.runs.get(&key)
                        && reply
                        && run.eviction_waiting
                        && let Some((end, at)) = run.pending()
                    {
                        self.end(key, end, at, out);
                    }
                    return;
                };
                let run = self.run(key, now);
                if run.replaying {
                    return;
                }
                let end = match terminal {
                    Terminal::Complete => EndState::Completed,
                    Terminal::Fail if *timeout_failure => EndState::TimedOut,
                    Terminal::Fail => EndState::Failed,
                    Terminal::Cancel => EndState::Canceled,
                    Terminal::ContinueAsNew => EndState::ContinuedAsNew,
                };
                run.set_pending(Some((end, now)));
            }
            EventBody::Eviction { run_id, reason, .. } => {
                let key = RunKey::new(run_id);
                let pending = self.runs.get(&key).and_then(Run::pending);
                match pending {
                    Some((end, at)) if reason.confirms_end() => self.end(key, end, at, out),
                    // Ended without a counted end here (e.g. a replay for a query): forget it.
                    None if *reason == EvictionReason::WorkflowExecutionEnding => {
                        self.forget(&key);
                    }
                    // The completion failed; the run goes on and will come back, replayed. Or
                    // nothing was pending: an eviction for room, or a request that waits for
                    // the activation that is out.
                    _ => {
                        if let Some(run) = self.runs.get_mut(&key) {
                            run.eviction_waiting = pending.is_none() && reason.confirms_end();
                            run.set_pending(None);
                        }
                    }
                }
            }
            EventBody::Task {
                run_id,
                workflow_type,
            } => {
                // Names a run whose first activation this observer did not see (attached late).
                let key = RunKey::new(run_id);
                if !self.ended.contains(&key) {
                    let workflow_type = self.intern(workflow_type);
                    let run = self.run(key, now);
                    if run.workflow_type.is_none() {
                        run.workflow_type = Some(workflow_type);
                    }
                }
            }
            // Where the probes read no struct (a bridge), each creation is a worker, and its
            // first shutdown request counts (the SDK may ask twice). A new worker may reuse a
            // gone one's address, so the addresses are forgotten at each creation.
            EventBody::WorkerStart {
                task_queue: None, ..
            } => {
                self.unnamed_shut_down.clear();
                self.on_existing_workers(1, out);
            }
            EventBody::WorkerShutdown {
                task_queue: None,
                worker,
            } => {
                if self.unnamed_shut_down.insert(worker.clone()) && self.unnamed_running > 0 {
                    self.unnamed_running -= 1;
                    out.push(Update::WorkersRunning { delta: -1 });
                }
            }
            // A worker is known by its task queue: where `mark_started` is inlined (LTO) the
            // start is seen at creation, before the worker has its final address.
            EventBody::WorkerStart {
                task_queue: Some(task_queue),
                ..
            } => {
                self.workers_seen.insert(task_queue.clone());
                if self.workers_running.insert(task_queue.clone()) {
                    out.push(Update::WorkersRunning { delta: 1 });
                }
            }
            EventBody::WorkerShutdown {
                task_queue: Some(task_queue),
                ..
            } => {
                if self.workers_running.remove(task_queue) {
                    out.push(Update::WorkersRunning { delta: -1 });
                } else if self.unnamed_running > 0 {
                    // A worker that was running before the observer attached.
                    self.unnamed_running -= 1;
                    out.push(Update::WorkersRunning { delta: -1 });
                }
            }
        }
    }

    /// Ends the runs whose deadline passed long enough ago: the server timed them out.
    pub fn on_tick(&mut self, now: Nanos, out: &mut Vec<Update>) {
        let (now, grace) = (stamp(now), stamp(self.limits.timeout_grace_nanos));
        let expired: Vec<(RunKey, Stamp)> = self
            .runs
            .iter()
            .filter(|(_, run)| run.pending_end.is_none() && !run.affected_by_loss)
            .filter_map(|(id, run)| {
                run.deadline_unix_nanos
                    .get()
                    .filter(|d| now > d.saturating_add(grace))
                    .map(|d| (id.clone(), d))
            })
            .collect();
        for (key, deadline) in expired {
            self.end(key, EndState::TimedOut, deadline, out);
        }
        // Idle runs, oldest first; one whose deadline will end it stays for that.
        let cutoff = now.saturating_sub(stamp(self.limits.idle_expiry_nanos));
        let idle: Vec<RunKey> = self
            .by_activity
            .iter()
            .take_while(|(active, _)| *active < cutoff)
            .filter(|(_, key)| {
                self.runs.get(key).is_some_and(|run| {
                    run.deadline_unix_nanos.get().is_none() || run.affected_by_loss
                })
            })
            .map(|(_, key)| key.clone())
            .collect();
        for key in idle {
            if let Some(mut run) = self.forget(&key) {
                start_if_pending(&key, &mut run, out);
            }
            self.expired_runs += 1;
        }
    }

    /// The process exited: its workers stopped running, and its open runs leave the table
    /// uncounted. Another worker carries them on from the server's history and counts what it
    /// sees; a start still pending here is that worker's to count (its first task's completion
    /// never reached the server from this process).
    pub fn on_process_exit(&mut self, out: &mut Vec<Update>) {
        self.runs.clear();
        self.by_activity.clear();
        for _ in self.workers_running.drain() {
            out.push(Update::WorkersRunning { delta: -1 });
        }
        for _ in 0..std::mem::take(&mut self.unnamed_running) {
            out.push(Update::WorkersRunning { delta: -1 });
        }
    }

    /// `count` workers already run when the observer attaches, and the start probe of this build
    /// only fires when a worker is created. Their task queues are not known; a shutdown of a
    /// queue never seen starting stops one of them.
    pub fn on_existing_workers(&mut self, count: usize, out: &mut Vec<Update>) {
        self.unnamed_running += count;
        self.unnamed_seen += count;
        for _ in 0..count {
            out.push(Update::WorkersRunning { delta: 1 });
        }
    }

    fn run(&mut self, key: RunKey, now: Stamp) -> &mut Run {
        let before = self.runs.get(&key).map(|r| r.last_active);
        if before.is_none() && self.runs.len() >= self.limits.max_open_runs {
            let oldest = self.by_activity.first().map(|(_, id)| id.clone());
            if let Some(oldest) = oldest {
                self.forget(&oldest);
                self.dropped_runs += 1;
            }
        }
        match before {
            Some(before) if before == now => {}
            Some(before) => {
                self.by_activity.remove(&(before, key.clone()));
                self.by_activity.insert((now, key.clone()));
            }
            None => {
                self.by_activity.insert((now, key.clone()));
            }
        }
        let run = self.runs.entry(key).or_default();
        run.last_active = now;
        run
    }

    /// The one shared copy of a workflow type's name.
    fn intern(&mut self, workflow_type: &str) -> Arc<str> {
        if let Some(known) = self.types.get(workflow_type) {
            return known.clone();
        }
        let name: Arc<str> = workflow_type.into();
        self.types.insert(name.clone());
        name
    }

    /// Removes an open run from memory.
    fn forget(&mut self, key: &RunKey) -> Option<Run> {
        let run = self.runs.remove(key)?;
        self.by_activity.remove(&(run.last_active, key.clone()));
        Some(run)
    }

    fn end(&mut self, key: RunKey, end: EndState, at: Stamp, out: &mut Vec<Update>) {
        let Some(mut run) = self.forget(&key) else {
            return;
        };
        // A run whose first task never completed successfully here (it failed every time and
        // the server timed the run out) still started.
        start_if_pending(&key, &mut run, out);
        let duration_seconds = run
            .start_unix_nanos
            .get()
            .map(|start| (at - start).max(0) as f64 / 1e9);
        out.push(Update::RunEnded {
            run_id: key.to_string(),
            workflow_type: run
                .workflow_type
                .as_deref()
                .unwrap_or(UNKNOWN_TYPE)
                .to_string(),
            end,
            duration_seconds,
        });
        self.remember_ended(key);
    }

    /// Later news of this run is ignored (bounded: the oldest are forgotten past the limit).
    fn remember_ended(&mut self, key: RunKey) {
        if self.ended.insert(key.clone()) {
            self.ended_order.push_back(key);
        }
        while self.ended_order.len() > self.limits.max_ended_runs {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}

/// Counts a start that waited for its task's completion (see [`Run::start_pending`]).
fn start_if_pending(key: &RunKey, run: &mut Run, out: &mut Vec<Update>) {
    if run.start_pending && !run.started {
        run.started = true;
        run.start_pending = false;
        let workflow_type = run.workflow_type.as_deref().unwrap_or(UNKNOWN_TYPE);
        out.push(Update::RunStarted {
            run_id: key.to_string(),
            workflow_type: workflow_type.to_string(),
        });
    }
}

/// The workflow type of a run whose first activation this observer did not see.
pub const UNKNOWN_TYPE: &str = "unknown";

fn apply_init(run: &mut Run, init: &RunInit) {
    run.start_unix_nanos = MaybeStamp::new(init.start_time_unix_nanos.map(stamp));
    // The server ends the run at the earliest of its run timeout and its execution's expiration.
    let run_deadline = init
        .run_timeout_nanos
        .filter(|t| *t > 0)
        .zip(init.start_time_unix_nanos)
        .map(|(timeout, start)| start + timeout);
    let execution_deadline = init
        .execution_expiration_unix_nanos
        .filter(|t| *t > 0)
        .or_else(|| {
            init.execution_timeout_nanos
                .filter(|t| *t > 0)
                .zip(init.start_time_unix_nanos)
                .map(|(timeout, start)| start + timeout)
        });
    run.deadline_unix_nanos = MaybeStamp::new(
        match (run_deadline, execution_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(stamp),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn event(at: Nanos, body: EventBody) -> Event {
        Event {
            time_unix_nanos: at,
            pid: 1,
            tid: 1,
            probe_id: 0,
            body,
        }
    }

    fn init(workflow_type: &str, start: Nanos) -> RunInit {
        RunInit {
            workflow_type: workflow_type.into(),
            start_time_unix_nanos: Some(start),
            execution_timeout_nanos: None,
            run_timeout_nanos: None,
            execution_expiration_unix_nanos: None,
        }
    }

    fn activation(at: Nanos, run: &str, replaying: bool, init: Option<RunInit>) -> Event {
        let job = if init.is_some() {
            "InitializeWorkflow"
        } else {
            "SignalWorkflow"
        };
        activation_with(at, run, replaying, init, job)
    }

    fn activation_with(
        at: Nanos,
        run: &str,
        replaying: bool,
        init: Option<RunInit>,
        job: &str,
    ) -> Event {
        event(
            at,
            EventBody::Activation {
                run_id: run.into(),
                workflow_type: init.as_ref().map(|i| i.workflow_type.clone()),
                replaying,
                history_length: 3,
                job_count: 1,
                jobs: vec![JobKind::from_variant(job)],
                init,
            },
        )
    }

    fn completion(
        at: Nanos,
        run: &str,
        terminal: Option<Terminal>,
        timeout_failure: bool,
    ) -> Event {
        event(
            at,
            EventBody::Completion {
                run_id: run.into(),
                status: crate::events::CompletionStatus::Successful,
                command_count: 1,
                last_command: None,
                terminal,
                timeout_failure,
            },
        )
    }

    const WORKFLOW_EXECUTION_ENDING: u32 = 10;

    fn eviction(at: Nanos, run: &str, reason: u32) -> Event {
        event(
            at,
            EventBody::Eviction {
                run_id: run.into(),
                reason: EvictionReason::from_raw(reason),
            },
        )
    }

    fn feed(engine: &mut Engine, events: &[Event]) -> Vec<Update> {
        let mut out = Vec::new();
        for e in events {
            engine.on_event(e, &mut out);
        }
        out
    }

    fn ended(run: &str, ty: &str, end: EndState, secs: Option<f64>) -> Update {
        Update::RunEnded {
            run_id: run.into(),
            workflow_type: ty.into(),
            end,
            duration_seconds: secs,
        }
    }

    #[test]
    fn a_run_starts_once_and_ends_once_when_the_server_accepts() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(10 * SEC, "r1", false, Some(init("Greet", 10 * SEC))),
                completion(10 * SEC, "r1", None, false),
                completion(12 * SEC, "r1", Some(Terminal::Complete), false),
                eviction(12 * SEC + 1, "r1", WORKFLOW_EXECUTION_ENDING),
                // The RemoveFromCache activation and its empty completion that follow.
                activation(12 * SEC + 2, "r1", false, None),
                completion(12 * SEC + 3, "r1", None, false),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "Greet".into(),
                },
                ended("r1", "Greet", EndState::Completed, Some(2.0)),
            ]
        );
        assert_eq!(engine.open_runs(), 0);
    }

    #[test]
    fn each_terminal_command_maps_to_its_exclusive_end_state() {
        let cases = [
            (Terminal::Complete, false, EndState::Completed),
            (Terminal::Fail, false, EndState::Failed),
            (Terminal::Fail, true, EndState::TimedOut),
            (Terminal::Cancel, false, EndState::Canceled),
            (Terminal::ContinueAsNew, false, EndState::ContinuedAsNew),
        ];
        for (terminal, timeout, expected) in cases {
            let mut engine = Engine::default();
            let out = feed(
                &mut engine,
                &[
                    activation(0, "r", false, Some(init("T", 0))),
                    completion(SEC, "r", Some(terminal), timeout),
                    eviction(SEC, "r", WORKFLOW_EXECUTION_ENDING),
                ],
            );
            assert_eq!(
                out[1],
                ended("r", "T", expected, Some(1.0)),
                "{terminal:?} timeout={timeout}"
            );
        }
    }

    #[test]
    fn a_replay_after_eviction_does_not_start_again_and_the_end_counts_once() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(0, "r1", None, false),
                eviction(SEC, "r1", 1), // CacheFull
                // The run comes back and is replayed from history, then gets new work.
                activation(2 * SEC, "r1", true, Some(init("T", 0))),
                completion(2 * SEC, "r1", None, false),
                activation(2 * SEC, "r1", false, None),
                completion(3 * SEC, "r1", Some(Terminal::Complete), false),
                eviction(3 * SEC, "r1", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Completed, Some(3.0))
            ]
        );
    }

    #[test]
    fn a_query_on_a_closed_run_replays_it_without_counting_again() {
        let mut engine = Engine::default();
        let mut out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(SEC, "r1", Some(Terminal::Fail), false),
                eviction(SEC, "r1", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(out.len(), 2);
        out.clear();
        // The query replays the whole history, terminal command included, and evicts again.
        let replay = [
            activation(5 * SEC, "r1", true, Some(init("T", 0))),
            completion(5 * SEC, "r1", Some(Terminal::Fail), false),
            eviction(5 * SEC, "r1", WORKFLOW_EXECUTION_ENDING),
        ];
        assert_eq!(feed(&mut engine, &replay), vec![]);
        // Even for an engine that never saw the run end (observer restarted since).
        let mut fresh = Engine::default();
        assert_eq!(feed(&mut fresh, &replay), vec![]);
        assert_eq!(fresh.open_runs(), 0);
    }

    #[test]
    fn a_terminal_command_the_server_rejects_is_not_an_end() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(SEC, "r1", Some(Terminal::Complete), false),
                // A signal arrived meanwhile: the server rejects the completion, core evicts.
                eviction(SEC, "r1", 7), // UnhandledCommand
                activation(2 * SEC, "r1", true, Some(init("T", 0))),
                activation(2 * SEC, "r1", false, None),
                completion(3 * SEC, "r1", Some(Terminal::Cancel), false),
                eviction(3 * SEC, "r1", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Canceled, Some(3.0))
            ]
        );
    }

    /// The workflow code's reply to an eviction: a successful completion without commands.
    fn eviction_reply(at: Nanos, run: &str) -> Event {
        event(
            at,
            EventBody::Completion {
                run_id: run.into(),
                status: CompletionStatus::Successful,
                command_count: 0,
                last_command: None,
                terminal: None,
                timeout_failure: false,
            },
        )
    }

    #[test]
    fn an_eviction_requested_before_the_terminal_completion_ends_the_run_at_its_reply() {
        // Where the probe sees eviction requests: core asks to evict the run for room while its
        // activation is out, carries the eviction out after the terminal completion, and asks
        // nothing more; the workflow code's empty reply to the eviction is the last record.
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                eviction(SEC / 2, "r1", 1), // CacheFull, requested
                completion(SEC, "r1", Some(Terminal::Complete), false),
                eviction_reply(SEC + 1, "r1"),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Completed, Some(1.0))
            ]
        );
        assert_eq!(engine.open_runs(), 0);
    }

    #[test]
    fn a_rejected_terminal_completion_after_an_eviction_request_is_not_an_end() {
        // The server rejects the completion (a signal came): core's new request overwrites the
        // one for room, and the run comes back replayed, then really ends.
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                eviction(SEC / 2, "r1", 1), // CacheFull, requested
                completion(SEC, "r1", Some(Terminal::Complete), false),
                eviction(SEC + 1, "r1", 7), // UnhandledCommand
                eviction_reply(SEC + 2, "r1"),
                activation(2 * SEC, "r1", true, Some(init("T", 0))),
                activation(2 * SEC + 1, "r1", false, None),
                completion(3 * SEC, "r1", Some(Terminal::Fail), false),
                eviction(3 * SEC + 1, "r1", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Failed, Some(3.0))
            ]
        );
    }

    #[test]
    fn an_eviction_requested_during_a_replay_waits_for_the_runs_work_and_its_end() {
        // Recorded from the end-to-end test with a cache of one where the probe sees requests:
        // the request for room comes while the run replays, core finishes the replay and the
        // run's new work first, the terminal completion follows, and only the empty reply to
        // the eviction comes after it.
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(1, "r1", None, false),
                activation(SEC, "r1", true, Some(init("T", 0))),
                eviction(SEC + 1, "r1", 1), // CacheFull, requested
                completion(SEC + 2, "r1", None, false),
                activation(SEC + 3, "r1", true, None),
                completion(SEC + 4, "r1", None, false),
                activation(SEC + 5, "r1", false, None),
                // The workflow code's empty answer to an activation is no eviction reply, and
                // nothing is pending: nothing ends.
                eviction_reply(SEC + 6, "r1"),
                activation(SEC + 7, "r1", false, None),
                completion(2 * SEC, "r1", Some(Terminal::Complete), false),
                eviction_reply(2 * SEC + 1, "r1"),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Completed, Some(2.0))
            ]
        );
        assert_eq!(engine.open_runs(), 0);
    }

    #[test]
    fn a_run_evicted_for_room_right_after_its_end_still_ends() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(SEC, "r1", Some(Terminal::Complete), false),
                // Core had already asked to evict it for room; no WorkflowExecutionEnding follows.
                eviction(SEC, "r1", 1),
                activation(SEC, "r1", false, None),
            ],
        );
        assert_eq!(
            out,
            vec![
                Update::RunStarted {
                    run_id: "r1".into(),
                    workflow_type: "T".into(),
                },
                ended("r1", "T", EndState::Completed, Some(1.0))
            ]
        );
        assert_eq!(engine.open_runs(), 0);
    }

    #[test]
    fn a_query_between_the_end_and_its_eviction_does_not_cancel_the_end() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "r1", false, Some(init("T", 0))),
                completion(SEC, "r1", Some(Terminal::Complete), false),
                activation_with(SEC, "r1", false, None, "QueryWorkflow"),
                completion(SEC, "r1", None, false),
                eviction(SEC, "r1", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out.last(),
            Some(&ended("r1", "T", EndState::Completed, Some(1.0)))
        );
    }

    #[test]
    fn an_end_whose_start_was_not_seen_still_counts() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(0, "late", false, None),
                completion(SEC, "late", Some(Terminal::Complete), false),
                eviction(SEC, "late", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![ended("late", UNKNOWN_TYPE, EndState::Completed, None)]
        );
    }

    #[test]
    fn a_task_names_a_run_seen_late_and_does_not_hide_a_real_start() {
        let task = |run: &str| {
            event(
                0,
                EventBody::Task {
                    run_id: run.into(),
                    workflow_type: "Late".into(),
                },
            )
        };
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                // Attached late: the run's start is history, only new tasks come.
                task("old"),
                activation(0, "old", false, None),
                completion(SEC, "old", Some(Terminal::Complete), false),
                eviction(SEC, "old", WORKFLOW_EXECUTION_ENDING),
                // A brand-new run: its task reaches core before its first activation.
                task("new"),
                activation(2 * SEC, "new", false, Some(init("Late", 2 * SEC))),
                completion(2 * SEC, "new", None, false),
            ],
        );
        assert_eq!(
            out,
            vec![
                ended("old", "Late", EndState::Completed, None),
                Update::RunStarted {
                    run_id: "new".into(),
                    workflow_type: "Late".into(),
                },
            ]
        );
    }

    #[test]
    fn an_activation_that_names_its_type_names_a_run_seen_late() {
        let named = |at: Nanos, run: &str, ty: &str| {
            let mut e = activation(at, run, false, None);
            if let EventBody::Activation { workflow_type, .. } = &mut e.body {
                *workflow_type = Some(ty.into());
            }
            e
        };
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                // Attached late: the run's start is history; its next activation names it.
                named(0, "old", "Late"),
                completion(SEC, "old", Some(Terminal::Complete), false),
                eviction(SEC, "old", WORKFLOW_EXECUTION_ENDING),
                // A start's own type wins over any the run was named by before.
                named(2 * SEC, "new", "Other"),
                activation(3 * SEC, "new", false, Some(init("Real", 3 * SEC))),
                completion(4 * SEC, "new", Some(Terminal::Complete), false),
                eviction(4 * SEC, "new", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                ended("old", "Late", EndState::Completed, None),
                Update::RunStarted {
                    run_id: "new".into(),
                    workflow_type: "Real".into(),
                },
                ended("new", "Real", EndState::Completed, Some(1.0)),
            ]
        );
    }

    #[test]
    fn a_server_enforced_timeout_is_inferred_after_the_deadline_and_grace() {
        let mut engine = Engine::new(Limits {
            timeout_grace_nanos: SEC,
            ..Limits::default()
        });
        let mut start = init("Slow", 100 * SEC);
        start.execution_timeout_nanos = Some(2 * SEC);
        let mut out = feed(
            &mut engine,
            &[
                activation(100 * SEC, "r", false, Some(start)),
                completion(100 * SEC, "r", None, false),
            ],
        );
        out.clear();
        engine.on_tick(102 * SEC + SEC / 2, &mut out);
        assert_eq!(out, vec![], "within the grace period");
        engine.on_tick(103 * SEC + 1, &mut out);
        assert_eq!(out, vec![ended("r", "Slow", EndState::TimedOut, Some(2.0))]);
        out.clear();
        engine.on_tick(200 * SEC, &mut out);
        assert_eq!(out, vec![], "ended once");
    }

    fn started(run: &str, ty: &str) -> Update {
        Update::RunStarted {
            run_id: run.into(),
            workflow_type: ty.into(),
        }
    }

    #[test]
    fn a_run_made_by_a_reset_starts_at_the_real_task_after_the_reset_point() {
        let mut engine = Engine::default();
        let copied = init("Reset", 10 * SEC);
        let out = feed(
            &mut engine,
            &[
                // The reset run's first task replays the base run's history...
                activation(50 * SEC, "new", true, Some(copied.clone())),
                completion(50 * SEC, "new", None, false),
                // ...up to the failed task the reset left, where core sends a new seed.
                activation_with(50 * SEC, "new", false, None, "UpdateRandomSeed"),
                completion(51 * SEC, "new", Some(Terminal::Complete), false),
                eviction(51 * SEC, "new", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                started("new", "Reset"),
                // Timed from the reset's task: the server starts the new run at the reset.
                ended("new", "Reset", EndState::Completed, Some(1.0)),
            ]
        );
    }

    #[test]
    fn a_reset_to_the_first_task_starts_the_new_run_once() {
        let mut engine = Engine::default();
        let mut first = activation(50 * SEC, "new", false, Some(init("Reset", 10 * SEC)));
        if let EventBody::Activation { jobs, .. } = &mut first.body {
            jobs.push(JobKind::UpdateRandomSeed);
        }
        let out = feed(
            &mut engine,
            &[first, completion(50 * SEC, "new", None, false)],
        );
        assert_eq!(out, vec![started("new", "Reset")]);
    }

    #[test]
    fn a_reset_run_replayed_again_does_not_start_again() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                // Seen late (or after an eviction): the seed comes while replaying.
                activation(60 * SEC, "new", true, Some(init("Reset", 10 * SEC))),
                activation_with(60 * SEC, "new", true, None, "UpdateRandomSeed"),
                activation_with(60 * SEC, "new", false, None, "SignalWorkflow"),
            ],
        );
        assert_eq!(out, vec![]);
    }

    fn failed_completion(at: Nanos, run: &str) -> Event {
        let mut event = completion(at, run, None, false);
        if let EventBody::Completion { status, .. } = &mut event.body {
            *status = CompletionStatus::Failed;
        }
        event
    }

    const LANG_FAIL: u32 = 4;

    #[test]
    fn a_first_task_that_never_completes_here_does_not_start_the_run() {
        // The worker took the run's first task and died (or the observer stopped) before
        // completing it: the worker that retries the task counts the start.
        let mut engine = Engine::default();
        let mut out = feed(
            &mut engine,
            &[activation(SEC, "r", false, Some(init("T", SEC)))],
        );
        engine.on_process_exit(&mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn a_processs_open_runs_leave_with_it_uncounted() {
        // The worker was killed holding two runs: another worker carries them on and counts
        // their ends. Nothing stays tracked, and no deadline is inferred here afterwards.
        let mut engine = Engine::new(Limits {
            timeout_grace_nanos: SEC,
            ..Limits::default()
        });
        let mut slow = init("Slow", SEC);
        slow.execution_timeout_nanos = Some(2 * SEC);
        let mut out = feed(
            &mut engine,
            &[
                activation(SEC, "a", false, Some(slow)),
                completion(SEC, "a", None, false),
                activation(SEC, "b", false, Some(init("T", SEC))),
                completion(SEC, "b", None, false),
            ],
        );
        assert_eq!(engine.open_runs(), 2);
        out.clear();
        engine.on_process_exit(&mut out);
        assert_eq!(out, vec![]);
        assert_eq!(engine.open_runs(), 0);
        engine.on_tick(100 * SEC, &mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn a_failed_first_task_starts_the_run_at_its_retrys_completion() {
        let mut engine = Engine::default();
        let out = feed(
            &mut engine,
            &[
                activation(SEC, "r", false, Some(init("T", SEC))),
                failed_completion(SEC, "r"),
                eviction(SEC, "r", LANG_FAIL),
                // No task completed: the retry is the first task again, not a replay.
                activation(2 * SEC, "r", false, Some(init("T", SEC))),
                completion(2 * SEC, "r", None, false),
                activation(3 * SEC, "r", false, None),
                completion(3 * SEC, "r", Some(Terminal::Complete), false),
                eviction(3 * SEC, "r", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(
            out,
            vec![
                started("r", "T"),
                ended("r", "T", EndState::Completed, Some(2.0))
            ]
        );
    }

    #[test]
    fn a_run_whose_first_task_always_fails_starts_when_the_server_times_it_out() {
        let mut engine = Engine::new(Limits {
            timeout_grace_nanos: SEC,
            ..Limits::default()
        });
        let mut start = init("T", 0);
        start.execution_timeout_nanos = Some(3 * SEC);
        let mut out = feed(
            &mut engine,
            &[
                activation(0, "r", false, Some(start.clone())),
                failed_completion(0, "r"),
                eviction(0, "r", LANG_FAIL),
                activation(SEC, "r", false, Some(start)),
                failed_completion(SEC, "r"),
                eviction(SEC, "r", LANG_FAIL),
            ],
        );
        assert_eq!(out, vec![]);
        engine.on_tick(5 * SEC, &mut out);
        assert_eq!(
            out,
            vec![
                started("r", "T"),
                ended("r", "T", EndState::TimedOut, Some(3.0))
            ]
        );
    }

    #[test]
    fn a_terminated_run_without_a_deadline_is_forgotten_once_idle() {
        let mut engine = Engine::new(Limits {
            idle_expiry_nanos: 10 * SEC,
            ..Limits::default()
        });
        let mut slow = init("Slow", 100 * SEC);
        slow.execution_timeout_nanos = Some(3600 * SEC);
        let mut out = feed(
            &mut engine,
            &[
                activation(
                    100 * SEC,
                    "terminated",
                    false,
                    Some(init("Waits", 100 * SEC)),
                ),
                completion(100 * SEC, "terminated", None, false),
                activation(100 * SEC, "deadline", false, Some(slow)),
                completion(100 * SEC, "deadline", None, false),
                activation(100 * SEC, "busy", false, Some(init("Waits", 100 * SEC))),
                completion(100 * SEC, "busy", None, false),
                activation(105 * SEC, "busy", false, None),
            ],
        );
        out.clear();
        engine.on_tick(110 * SEC, &mut out);
        assert_eq!((engine.open_runs(), engine.expired_runs()), (3, 0));
        engine.on_tick(110 * SEC + 1, &mut out);
        assert_eq!(
            (engine.open_runs(), engine.expired_runs()),
            (2, 1),
            "only the idle run without a deadline goes"
        );
        engine.on_tick(116 * SEC, &mut out);
        assert_eq!((engine.open_runs(), engine.expired_runs()), (1, 2));
        assert_eq!(out, vec![], "an expired run has no end state");
        // A run that comes back after expiring is news again: its end counts.
        feed(
            &mut engine,
            &[
                completion(200 * SEC, "terminated", Some(Terminal::Complete), false),
                eviction(200 * SEC, "terminated", WORKFLOW_EXECUTION_ENDING),
            ],
        );
        assert_eq!(engine.expired_runs(), 2);
    }

    #[test]
    fn after_a_loss_no_timeout_is_inferred_but_real_ends_still_count() {
        let mut engine = Engine::new(Limits {
            timeout_grace_nanos: SEC,
            ..Limits::default()
        });
        let deadline_run = |run: &str| {
            let mut start = init("Slow", 0);
            start.execution_timeout_nanos = Some(2 * SEC);
            [
                activation(0, run, false, Some(start)),
                completion(0, run, None, false),
            ]
        };
        let mut out = feed(
            &mut engine,
            &[deadline_run("lost-end"), deadline_run("seen-end")].concat(),
        );
        engine.on_loss();
        engine.on_loss();
        assert_eq!(engine.affected_runs(), 2, "each run is marked once");
        out.clear();
        engine.on_event(
            &completion(SEC, "seen-end", Some(Terminal::Complete), false),
            &mut out,
        );
        engine.on_event(
            &eviction(SEC, "seen-end", WORKFLOW_EXECUTION_ENDING),
            &mut out,
        );
        engine.on_tick(100 * SEC, &mut out);
        assert_eq!(
            out,
            vec![ended("seen-end", "Slow", EndState::Completed, Some(1.0))]
        );
        assert_eq!(
            engine.open_runs(),
            1,
            "the run whose end may be lost stays open, unended"
        );
    }

    #[test]
    fn the_earliest_of_run_and_execution_deadlines_applies() {
        let mut run = Run::default();
        let mut i = init("T", 10 * SEC);
        i.run_timeout_nanos = Some(5 * SEC);
        i.execution_expiration_unix_nanos = Some(12 * SEC);
        apply_init(&mut run, &i);
        assert_eq!(run.deadline_unix_nanos.get(), Some(stamp(12 * SEC)));
        i.execution_expiration_unix_nanos = None;
        i.execution_timeout_nanos = Some(0);
        apply_init(&mut run, &i);
        assert_eq!(run.deadline_unix_nanos.get(), Some(stamp(15 * SEC)));
    }

    #[test]
    fn open_runs_are_capped_and_the_dropped_are_counted() {
        let mut engine = Engine::new(Limits {
            max_open_runs: 3,
            ..Limits::default()
        });
        let events: Vec<Event> = (0..10)
            .flat_map(|i| {
                let run = format!("r{i}");
                [
                    activation(i * SEC, &run, false, Some(init("T", i * SEC))),
                    completion(i * SEC, &run, None, false),
                ]
            })
            .collect();
        let out = feed(&mut engine, &events);
        assert_eq!(out.len(), 10, "every start counts");
        assert_eq!(engine.open_runs(), 3);
        assert_eq!(engine.dropped_runs(), 7);
    }

    #[test]
    fn the_cap_forgets_the_least_recently_active_run() {
        let mut engine = Engine::new(Limits {
            max_open_runs: 2,
            ..Limits::default()
        });
        feed(
            &mut engine,
            &[
                activation(0, "old", false, Some(init("T", 0))),
                activation(SEC, "busy", false, Some(init("T", SEC))),
                // "old" is active again, so "busy" is now the least recently active.
                activation(2 * SEC, "old", false, None),
                activation(3 * SEC, "new", false, Some(init("T", 3 * SEC))),
            ],
        );
        assert_eq!(engine.dropped_runs(), 1);
        let mut ids: Vec<String> = engine.runs.keys().map(RunKey::to_string).collect();
        ids.sort();
        assert_eq!(ids, ["new", "old"]);
        assert_eq!(engine.by_activity.len(), 2);
    }

    #[test]
    fn an_open_run_is_small() {
        assert_eq!(std::mem::size_of::<Run>(), 56);
        assert_eq!(std::mem::size_of::<RunKey>(), 24);
        assert_eq!(
            MaybeStamp::new(Some(Stamp::MIN)).get(),
            Some(Stamp::MIN + 1)
        );
        assert_eq!(MaybeStamp::new(Some(0)).get(), Some(0));
        assert_eq!(MaybeStamp::new(None).get(), None);
    }

    #[test]
    fn run_keys_give_back_the_id_they_were_made_from() {
        let uuid = "0193f3c2-6d6e-7b59-9b51-2f5f0b8a3c1d";
        assert!(matches!(RunKey::new(uuid), RunKey::Uuid(_)));
        // Anything not a lowercase hyphenated UUID is kept as it came.
        for other in [
            "0193F3C2-6D6E-7B59-9B51-2F5F0B8A3C1D",
            "0193f3c2x6d6e-7b59-9b51-2f5f0b8a3c1d",
            "0193f3c2-6d6e-7b59-9b51-2f5f0b8a3c1g",
            "r1",
            "",
        ] {
            assert!(matches!(RunKey::new(other), RunKey::Other(_)), "{other}");
            assert_eq!(RunKey::new(other).to_string(), other);
        }
        assert_eq!(RunKey::new(uuid).to_string(), uuid);
        assert_ne!(
            RunKey::new(uuid),
            RunKey::new("0193f3c2-6d6e-7b59-9b51-2f5f0b8a3c1e")
        );
    }

    /// A million runs opened and never ended (issue: memory under the cap, drops counted).
    #[test]
    fn a_million_open_runs_stay_under_the_cap() {
        let cap = 10_000;
        let mut engine = Engine::new(Limits {
            max_open_runs: cap,
            ..Limits::default()
        });
        let mut out = Vec::new();
        for i in 0..1_000_000i128 {
            let run = format!("{i:036}");
            engine.on_event(&activation(i, &run, false, Some(init("T", i))), &mut out);
            out.clear();
        }
        assert_eq!(engine.open_runs(), cap);
        assert_eq!(engine.by_activity.len(), cap);
        assert_eq!(engine.dropped_runs(), 1_000_000 - cap as u64);
    }

    #[test]
    fn workers_running_follows_start_shutdown_and_exit() {
        let mut engine = Engine::default();
        // The addresses differ between start and shutdown (as under LTO); the queue is the key.
        let w = |queue: &str, start: bool| {
            event(
                0,
                if start {
                    EventBody::WorkerStart {
                        worker: "0x1000".into(),
                        task_queue: Some(queue.into()),
                    }
                } else {
                    EventBody::WorkerShutdown {
                        worker: "0x2000".into(),
                        task_queue: Some(queue.into()),
                    }
                },
            )
        };
        let out = feed(
            &mut engine,
            &[
                w("a", true),
                w("a", true),
                w("b", true),
                w("a", false),
                w("a", false),
            ],
        );
        let deltas: Vec<i64> = out
            .iter()
            .map(|u| match u {
                Update::WorkersRunning { delta } => *delta,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deltas, vec![1, 1, -1]);
        assert_eq!(engine.workers_seen(), 2);
        let mut out = Vec::new();
        engine.on_process_exit(&mut out);
        assert_eq!(out, vec![Update::WorkersRunning { delta: -1 }]);
    }

    #[test]
    fn a_run_whose_first_activation_was_unreadable_is_not_observed_at_all() {
        let mut engine = Engine::new(Limits::default());
        engine.on_unreadable("r");
        let mut out = Vec::new();
        for body in [
            EventBody::Activation {
                run_id: "r".into(),
                workflow_type: Some("T".into()),
                replaying: false,
                history_length: 5,
                job_count: 1,
                jobs: vec![JobKind::Other("FireTimer".into())],
                init: None,
            },
            EventBody::Completion {
                run_id: "r".into(),
                status: crate::events::CompletionStatus::Successful,
                command_count: 1,
                last_command: Some("CompleteWorkflowExecution".into()),
                terminal: Some(Terminal::Complete),
                timeout_failure: false,
            },
            EventBody::Eviction {
                run_id: "r".into(),
                reason: EvictionReason::WorkflowExecutionEnding,
            },
        ] {
            engine.on_event(
                &Event {
                    time_unix_nanos: 0,
                    pid: 1,
                    tid: 1,
                    probe_id: 0,
                    body,
                },
                &mut out,
            );
        }
        assert_eq!(out, vec![], "neither started nor ended");
        assert_eq!((engine.affected_runs(), engine.open_runs()), (1, 0));
    }

    #[test]
    fn workers_without_a_task_queue_count_by_creation_and_first_shutdown() {
        let mut engine = Engine::new(Limits::default());
        let mut out = Vec::new();
        let body = |start: bool, worker: &str| {
            let (worker, task_queue) = (worker.to_string(), None);
            if start {
                EventBody::WorkerStart { worker, task_queue }
            } else {
                EventBody::WorkerShutdown { worker, task_queue }
            }
        };
        for (start, worker) in [
            (true, "0x0"),
            (true, "0x0"),
            (false, "0x10"),
            (false, "0x10"),
            (false, "0x10"),
        ] {
            engine.on_event(
                &Event {
                    time_unix_nanos: 0,
                    pid: 1,
                    tid: 1,
                    probe_id: 0,
                    body: body(start, worker),
                },
                &mut out,
            );
        }
        let deltas: Vec<i64> = out
            .iter()
            .map(|u| match u {
                Update::WorkersRunning { delta } => *delta,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(deltas, vec![1, 1, -1]);
        assert_eq!((engine.workers_running(), engine.workers_seen()), (1, 2));
    }

    #[test]
    fn workers_running_before_attach_stop_on_an_unknown_queues_shutdown() {
        let mut engine = Engine::default();
        let mut out = Vec::new();
        engine.on_existing_workers(2, &mut out);
        let shutdown = |queue: &str| {
            event(
                0,
                EventBody::WorkerShutdown {
                    worker: "0x1".into(),
                    task_queue: Some(queue.into()),
                },
            )
        };
        let start = event(
            0,
            EventBody::WorkerStart {
                worker: "0x2".into(),
                task_queue: Some("new".into()),
            },
        );
        out.extend(feed(
            &mut engine,
            &[
                shutdown("old"),
                start,
                shutdown("new"),
                shutdown("old"),
                shutdown("old"),
            ],
        ));
        let deltas: Vec<i64> = out
            .iter()
            .map(|u| match u {
                Update::WorkersRunning { delta } => *delta,
                other => panic!("{other:?}"),
            })
            .collect();
        // +2 found running, -1 old, +1 new, -1 new, -1 old, and nothing for a third "old".
        assert_eq!(deltas, vec![1, 1, -1, 1, -1, -1]);
        assert_eq!(engine.workers_running(), 0);
        assert_eq!(engine.workers_seen(), 3);
    }
}
