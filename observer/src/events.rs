//! What the probes report, as events a person (and the lifecycle engine) can read, and the
//! decoding of ring-buffer records into them: the header says which probe sent a record, and
//! that probe's decoder (in its table, [`crate::probes`]) reads the rest. Pure: bytes in, events
//! out.

use observer_common::{EventHeader, Str, kind};
use serde::Serialize;

use crate::{layout::TargetLayout, probes};

/// How a completion ends its run, when it carries a terminal command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminal {
    Complete,
    Fail,
    Cancel,
    ContinueAsNew,
}

impl Terminal {
    /// The `workflow_command::Variant` name of each terminal command.
    pub fn from_command(variant: &str) -> Option<Self> {
        Some(match variant {
            "CompleteWorkflowExecution" => Terminal::Complete,
            "FailWorkflowExecution" => Terminal::Fail,
            "CancelWorkflowExecution" => Terminal::Cancel,
            "ContinueAsNewWorkflowExecution" => Terminal::ContinueAsNew,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Complete => "complete",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
            Self::ContinueAsNew => "continue_as_new",
        })
    }
}

/// An activation job, by kind: the kinds the lifecycle tells apart, and the others by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    InitializeWorkflow,
    QueryWorkflow,
    RemoveFromCache,
    /// A new seed for the workflow's randomness: core sends it when it reaches the failed task
    /// a reset left in the history of the run the reset made.
    UpdateRandomSeed,
    /// Any other job, by its `workflow_activation_job::Variant` name (or `tag:N` when the
    /// layout names no variant for the tag).
    Other(String),
}

impl JobKind {
    /// The job of this `workflow_activation_job::Variant` name.
    pub fn from_variant(name: &str) -> Self {
        match name {
            "InitializeWorkflow" => Self::InitializeWorkflow,
            "QueryWorkflow" => Self::QueryWorkflow,
            "RemoveFromCache" => Self::RemoveFromCache,
            "UpdateRandomSeed" => Self::UpdateRandomSeed,
            other => Self::Other(other.to_string()),
        }
    }

    /// New work for the run: not a query, not its removal from the cache.
    pub fn is_new_work(&self) -> bool {
        !matches!(self, Self::QueryWorkflow | Self::RemoveFromCache)
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Self::QueryWorkflow)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InitializeWorkflow => "InitializeWorkflow",
            Self::QueryWorkflow => "QueryWorkflow",
            Self::RemoveFromCache => "RemoveFromCache",
            Self::UpdateRandomSeed => "UpdateRandomSeed",
            Self::Other(name) => name,
        })
    }
}

impl Serialize for JobKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What a completion says about the workflow task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionStatus {
    /// The workflow code ran; the commands are valid.
    Successful,
    /// The workflow task failed (it will be retried; not an end).
    Failed,
    /// No status.
    None,
    /// A tag the layout names no status for.
    Unknown,
}

impl CompletionStatus {
    /// The status of this `workflow_activation_completion::Status` name (`None` is the
    /// `Option`'s).
    pub fn from_variant(name: Option<&str>) -> Self {
        match name {
            Some("Successful") => Self::Successful,
            Some("Failed") => Self::Failed,
            Some("None") => Self::None,
            _ => Self::Unknown,
        }
    }
}

impl std::fmt::Display for CompletionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Successful => "successful",
            Self::Failed => "failed",
            Self::None => "none",
            Self::Unknown => "unknown",
        })
    }
}

/// Why core evicts a run from its cache (`EvictionReason` in sdk-core's protos).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionReason {
    Unspecified,
    CacheFull,
    CacheMiss,
    Nondeterminism,
    LangFail,
    LangRequested,
    TaskNotFound,
    UnhandledCommand,
    Fatal,
    PaginationOrHistoryFetch,
    /// Core evicts a run after the server accepted its end.
    WorkflowExecutionEnding,
    /// A value this observer does not know.
    Unknown(u32),
}

impl EvictionReason {
    const KNOWN: [Self; 11] = [
        Self::Unspecified,
        Self::CacheFull,
        Self::CacheMiss,
        Self::Nondeterminism,
        Self::LangFail,
        Self::LangRequested,
        Self::TaskNotFound,
        Self::UnhandledCommand,
        Self::Fatal,
        Self::PaginationOrHistoryFetch,
        Self::WorkflowExecutionEnding,
    ];

    /// The reason of this protobuf enum value.
    pub fn from_raw(value: u32) -> Self {
        Self::KNOWN
            .get(value as usize)
            .copied()
            .unwrap_or(Self::Unknown(value))
    }

    /// Its protobuf enum value.
    pub fn raw(self) -> u32 {
        match self {
            Self::Unknown(value) => value,
            known => Self::KNOWN.iter().position(|k| *k == known).unwrap_or(0) as u32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "Unspecified",
            Self::CacheFull => "CacheFull",
            Self::CacheMiss => "CacheMiss",
            Self::Nondeterminism => "Nondeterminism",
            Self::LangFail => "LangFail",
            Self::LangRequested => "LangRequested",
            Self::TaskNotFound => "TaskNotFound",
            Self::UnhandledCommand => "UnhandledCommand",
            Self::Fatal => "Fatal",
            Self::PaginationOrHistoryFetch => "PaginationOrHistoryFetch",
            Self::WorkflowExecutionEnding => "WorkflowExecutionEnding",
            Self::Unknown(_) => "Unknown",
        }
    }

    /// Whether this eviction, following a terminal command, means the server took it.
    ///
    /// Core evicts an ended run with `WorkflowExecutionEnding`, unless an eviction was already
    /// pending for it: under cache pressure a run evicted for room (`CacheFull`) right after its
    /// terminal completion was accepted never gets the ending eviction (seen in the end-to-end
    /// tests with a cache of one). Reasons that mean the completion failed reject the end.
    pub fn confirms_end(self) -> bool {
        match self {
            Self::Unspecified
            | Self::CacheFull
            | Self::CacheMiss
            | Self::LangRequested
            | Self::WorkflowExecutionEnding => true,
            Self::Nondeterminism
            | Self::LangFail
            | Self::TaskNotFound
            | Self::UnhandledCommand
            | Self::Fatal
            | Self::PaginationOrHistoryFetch
            | Self::Unknown(_) => false,
        }
    }
}

/// `10(WorkflowExecutionEnding)`.
impl std::fmt::Display for EvictionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.raw(), self.name())
    }
}

/// As two fields, `reason` (the value) and `reason_name`, where it is flattened into an event.
impl Serialize for EvictionReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut s = serializer.serialize_struct("EvictionReason", 2)?;
        s.serialize_field("reason", &self.raw())?;
        s.serialize_field("reason_name", self.name())?;
        s.end()
    }
}

/// A time span or point read from the target, in whole nanoseconds.
pub type Nanos = i128;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum EventBody {
    Activation {
        run_id: String,
        /// The run's workflow type, where the probe reads it with every activation (sdk-core's
        /// structs); the bridges' messages carry it only in `InitializeWorkflow` (`init`).
        #[serde(skip_serializing_if = "Option::is_none")]
        workflow_type: Option<String>,
        replaying: bool,
        history_length: u32,
        job_count: u64,
        /// The first jobs.
        jobs: Vec<JobKind>,
        /// Set when the activation starts (or restarts) a run: `InitializeWorkflow` is its first job.
        #[serde(skip_serializing_if = "Option::is_none")]
        init: Option<RunInit>,
    },
    Completion {
        run_id: String,
        status: CompletionStatus,
        command_count: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_command: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        terminal: Option<Terminal>,
        /// The run fails with a failure whose cause chain holds a timeout.
        timeout_failure: bool,
    },
    Eviction {
        run_id: String,
        #[serde(flatten)]
        reason: EvictionReason,
    },
    /// A workflow task reached core.
    Task {
        run_id: String,
        workflow_type: String,
    },
    /// A worker polled for the first time, or was created.
    WorkerStart {
        /// Address of the core worker (or, at a bridge, of its language object) in the
        /// target: identifies it within the process.
        worker: String,
        /// `None` where the probe reads no struct (a bridge): each such start is a worker.
        #[serde(skip_serializing_if = "Option::is_none")]
        task_queue: Option<String>,
    },
    WorkerShutdown {
        worker: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        task_queue: Option<String>,
    },
}

impl EventBody {
    /// The name of the probe that reports this kind of event.
    pub fn probe_name(&self) -> &'static str {
        match self {
            Self::Activation { .. } => "activation",
            Self::Completion { .. } => "completion",
            Self::Eviction { .. } => "eviction",
            Self::WorkerShutdown { .. } => "worker_shutdown",
            Self::WorkerStart { .. } => "worker_start",
            Self::Task { .. } => "task",
        }
    }
}

/// What a run's `InitializeWorkflow` job says about it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunInit {
    pub workflow_type: String,
    pub start_time_unix_nanos: Option<Nanos>,
    pub execution_timeout_nanos: Option<Nanos>,
    pub run_timeout_nanos: Option<Nanos>,
    pub execution_expiration_unix_nanos: Option<Nanos>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Wall-clock time of the probe hit.
    pub time_unix_nanos: Nanos,
    pub pid: u32,
    pub tid: u32,
    /// The probe table's id of the probe that sent it.
    #[serde(skip)]
    pub probe_id: u16,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for its kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("record of unknown kind {0}")]
    UnknownKind(u32),
    #[error("record from an unknown probe {probe}")]
    UnknownProbe { probe: u16 },
    #[error("probe {probe} sent a record of kind {kind}, which is not its kind")]
    WrongKind { probe: &'static str, kind: u32 },
    #[error("the bytes are not a {message}: {error}")]
    Protobuf {
        message: &'static str,
        error: String,
    },
}

/// Maps kernel monotonic time to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic: Nanos,
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the records' `ktime_ns`.
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(clock_nanos(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

impl Clock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        Self {
            realtime_minus_monotonic: clock_nanos(libc::CLOCK_REALTIME)
                - clock_nanos(libc::CLOCK_MONOTONIC),
        }
    }

    pub fn fixed(realtime_minus_monotonic: Nanos) -> Self {
        Self {
            realtime_minus_monotonic,
        }
    }

    pub fn realtime_minus_monotonic(&self) -> Nanos {
        self.realtime_minus_monotonic
    }

    pub fn wall(&self, ktime_ns: u64) -> Nanos {
        Nanos::from(ktime_ns) + self.realtime_minus_monotonic
    }
}

fn clock_nanos(clock: libc::clockid_t) -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Nanos::from(ts.tv_sec) * 1_000_000_000 + Nanos::from(ts.tv_nsec)
}

/// Copies a `#[repr(C)]` record out of ring-buffer bytes.
pub(crate) fn read_record<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: the length was checked; `T` is one of the plain-integer records of
    // `observer_common` (no invalid bit patterns); `read_unaligned` makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Where a UUID's text form (what Temporal gives every run id) has its dashes.
pub const UUID_DASHES: [usize; 4] = [8, 13, 18, 23];

/// Whether `bytes` are a UUID's 36-character text form (hex digits of either case).
pub fn is_uuid_text(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| {
            if UUID_DASHES.contains(&i) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

pub(crate) fn text<const N: usize>(s: &Str<N>) -> String {
    let copied = &s.bytes[..(s.len as usize).min(N - 1)];
    match std::str::from_utf8(copied) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(copied).into_owned(),
    }
}

pub(crate) fn duration_nanos((seconds, nanos): (i64, i32)) -> Nanos {
    Nanos::from(seconds) * 1_000_000_000 + Nanos::from(nanos)
}

/// Decodes one ring-buffer record, with the decoder of the probe that sent it. Message chunks
/// are not records of their own: they go through [`crate::reassembly`] and
/// [`decode_message`].
pub fn decode(bytes: &[u8], layout: &TargetLayout, clock: &Clock) -> Result<Event, DecodeError> {
    let header: EventHeader = read_record(bytes, 0)?;
    if !KNOWN_KINDS.contains(&header.kind) {
        return Err(DecodeError::UnknownKind(header.kind));
    }
    decode_with_spec(header, bytes, layout, clock)
}

/// Decodes a whole message put together from its chunks, with the decoder of its probe.
pub fn decode_message(
    header: EventHeader,
    message: &[u8],
    layout: &TargetLayout,
    clock: &Clock,
) -> Result<Event, DecodeError> {
    decode_with_spec(header, message, layout, clock)
}

fn decode_with_spec(
    header: EventHeader,
    bytes: &[u8],
    layout: &TargetLayout,
    clock: &Clock,
) -> Result<Event, DecodeError> {
    let spec = probes::spec_by_id(header.probe_id).ok_or(DecodeError::UnknownProbe {
        probe: header.probe_id,
    })?;
    if spec.record != header.kind {
        return Err(DecodeError::WrongKind {
            probe: spec.name,
            kind: header.kind,
        });
    }
    Ok(Event {
        time_unix_nanos: clock.wall(header.ktime_ns),
        pid: header.pid,
        tid: header.tid,
        probe_id: header.probe_id,
        body: (spec.decode)(bytes, layout)?,
    })
}

/// The kinds of records probes send.
const KNOWN_KINDS: [u32; 5] = [
    kind::ACTIVATION,
    kind::COMPLETION,
    kind::EVICTION,
    kind::WORKER_SHUTDOWN,
    kind::WORKER_START,
];

/// One human-readable line: time, pid, tid, probe, fields.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_text(self))
    }
}

fn queue_text(task_queue: &Option<String>) -> String {
    task_queue
        .as_ref()
        .map(|q| format!(" task_queue={q}"))
        .unwrap_or_default()
}

fn format_text(event: &Event) -> String {
    let secs = event.time_unix_nanos.div_euclid(1_000_000_000);
    let millis = event.time_unix_nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let prefix = format!(
        "{h:02}:{m:02}:{s:02}.{millis:03} pid={} tid={}",
        event.pid, event.tid
    );
    let fields = match &event.body {
        EventBody::Activation {
            run_id,
            workflow_type,
            replaying,
            history_length,
            job_count,
            jobs,
            init,
        } => {
            let mut line = format!(
                "activation run_id={run_id} replaying={replaying} history_length={history_length} jobs={job_count}[{}]",
                jobs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if let Some(workflow_type) = workflow_type {
                line.push_str(&format!(" workflow_type={workflow_type}"));
            }
            if let Some(init) = init {
                if let Some(start) = init.start_time_unix_nanos {
                    line.push_str(&format!(" start_time_unix_nanos={start}"));
                }
                if let Some(t) = init.execution_timeout_nanos {
                    line.push_str(&format!(" execution_timeout_ms={}", t / 1_000_000));
                }
                if let Some(t) = init.run_timeout_nanos {
                    line.push_str(&format!(" run_timeout_ms={}", t / 1_000_000));
                }
            }
            line
        }
        EventBody::Completion {
            run_id,
            status,
            command_count,
            last_command,
            terminal,
            timeout_failure,
        } => {
            let mut line =
                format!("completion run_id={run_id} status={status} commands={command_count}");
            if let Some(c) = last_command {
                line.push_str(&format!(" last_command={c}"));
            }
            if let Some(t) = terminal {
                line.push_str(&format!(" terminal={t}"));
            }
            if *timeout_failure {
                line.push_str(" timeout_failure=true");
            }
            line
        }
        EventBody::Eviction { run_id, reason } => {
            format!("eviction run_id={run_id} reason={reason}")
        }
        EventBody::Task {
            run_id,
            workflow_type,
        } => {
            format!("task run_id={run_id} workflow_type={workflow_type}")
        }
        EventBody::WorkerStart { worker, task_queue } => {
            format!("worker_start worker={worker}{}", queue_text(task_queue))
        }
        EventBody::WorkerShutdown { worker, task_queue } => {
            format!("worker_shutdown worker={worker}{}", queue_text(task_queue))
        }
    };
    format!("{prefix} {fields}")
}

#[cfg(test)]
mod tests {
    use observer_common::{
        ActivationEvent, CompletionEvent, EvictionEvent, OPTION_TIME_WINDOW, RUN_ID_CAP,
        WorkerEvent,
    };

    use super::*;

    fn layout() -> TargetLayout {
        crate::layout::sample_layout()
    }

    fn bytes_of<T>(record: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-integer record as bytes.
        unsafe {
            std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()).to_vec()
        }
    }

    fn run_id(s: &str) -> Str<RUN_ID_CAP> {
        let mut out = Str {
            len: s.len() as u64,
            bytes: [0; RUN_ID_CAP],
        };
        out.bytes[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    /// A header as the probe that sends records of `kind` writes it.
    fn header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            probe_id: probes::PROBES
                .iter()
                .find(|p| p.record == kind)
                .map_or(0, |p| p.id),
            candidate: 0,
            flags: 0,
            pid: 10,
            tid: 11,
            ktime_ns: 5_000_000_000,
        }
    }

    #[test]
    fn a_first_activation_decodes_with_its_init_fields() {
        let mut name = Str {
            len: 16,
            bytes: [0; observer_common::NAME_CAP],
        };
        name.bytes[..16].copy_from_slice(b"CompleteWorkflow");
        let mut start = [0u8; OPTION_TIME_WINDOW];
        start[0] = 1;
        start[8..16].copy_from_slice(&1_800_000_000i64.to_le_bytes());
        start[16..20].copy_from_slice(&5i32.to_le_bytes());
        let record = ActivationEvent {
            header: header(kind::ACTIVATION),
            run_id: run_id("0196-run"),
            history_length: 3,
            is_replaying: 0,
            job_count: 1,
            job_tags: [0, 0, 0, 0],
            has_init: 1,
            _pad: 0,
            workflow_type: name,
            init_times: [
                [0; OPTION_TIME_WINDOW],
                [0; OPTION_TIME_WINDOW],
                [0; OPTION_TIME_WINDOW],
                start,
            ],
        };
        let event = decode(&bytes_of(&record), &layout(), &Clock::fixed(1_000)).expect("decodes");
        assert_eq!(event.time_unix_nanos, 5_000_001_000);
        let EventBody::Activation {
            run_id,
            replaying,
            jobs,
            init,
            ..
        } = event.body
        else {
            panic!("kind")
        };
        assert_eq!(run_id, "0196-run");
        assert!(!replaying);
        assert_eq!(jobs, vec![JobKind::InitializeWorkflow]);
        let init = init.expect("init");
        assert_eq!(init.workflow_type, "CompleteWorkflow");
        assert_eq!(init.start_time_unix_nanos, Some(1_800_000_000_000_000_005));
        assert_eq!(init.execution_timeout_nanos, None);
    }

    #[test]
    fn a_terminal_completion_is_recognized() {
        let record = CompletionEvent {
            header: header(kind::COMPLETION),
            run_id: run_id("r1"),
            status_tag: 0x8000_0000_0000_0001,
            successful: 1,
            timeout_failure: 0,
            command_count: 2,
            last_command_tag: 7,
        };
        let event = decode(&bytes_of(&record), &layout(), &Clock::fixed(0)).expect("decodes");
        assert!(format_text(&event).contains("terminal=complete"));
        let EventBody::Completion {
            status,
            terminal,
            last_command,
            ..
        } = event.body
        else {
            panic!("kind")
        };
        assert_eq!(status, CompletionStatus::Successful);
        assert_eq!(terminal, Some(Terminal::Complete));
        assert_eq!(last_command.as_deref(), Some("CompleteWorkflowExecution"));
    }

    #[test]
    fn eviction_reasons_round_trip_and_print_as_value_and_name() {
        for raw in 0..=12 {
            assert_eq!(EvictionReason::from_raw(raw).raw(), raw);
        }
        assert_eq!(EvictionReason::from_raw(1), EvictionReason::CacheFull);
        assert_eq!(EvictionReason::from_raw(12), EvictionReason::Unknown(12));
        assert_eq!(
            EvictionReason::WorkflowExecutionEnding.to_string(),
            "10(WorkflowExecutionEnding)"
        );
        let event = Event {
            time_unix_nanos: 0,
            pid: 1,
            tid: 2,
            probe_id: 3,
            body: EventBody::Eviction {
                run_id: "r".into(),
                reason: EvictionReason::CacheFull,
            },
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["probe"], "eviction");
        assert_eq!(json["reason"], 1);
        assert_eq!(json["reason_name"], "CacheFull");
        assert!(
            event
                .to_string()
                .ends_with("eviction run_id=r reason=1(CacheFull)")
        );
    }

    #[test]
    fn jobs_print_by_variant_name() {
        let jobs = vec![
            JobKind::from_variant("InitializeWorkflow"),
            JobKind::from_variant("FireTimer"),
        ];
        assert_eq!(jobs[1], JobKind::Other("FireTimer".into()));
        assert!(!JobKind::QueryWorkflow.is_new_work() && jobs[1].is_new_work());
        assert_eq!(
            serde_json::to_value(&jobs).expect("serializes"),
            serde_json::json!(["InitializeWorkflow", "FireTimer"])
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(
            decode(&[0; 4], &layout(), &Clock::fixed(0)),
            Err(DecodeError::Short { kind: 0, len: 4 })
        );
        let record = EvictionEvent {
            header: header(99),
            run_id: run_id("r"),
            reason: 0,
            _pad: 0,
        };
        assert_eq!(
            decode(&bytes_of(&record), &layout(), &Clock::fixed(0)),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn worker_records_decode_with_their_task_queue() {
        let mut task_queue = Str {
            len: 5,
            bytes: [0; observer_common::NAME_CAP],
        };
        task_queue.bytes[..5].copy_from_slice(b"queue");
        let record = WorkerEvent {
            header: header(kind::WORKER_START),
            worker: 0xabc,
            task_queue,
        };
        let event = decode(&bytes_of(&record), &layout(), &Clock::fixed(0)).expect("decodes");
        assert_eq!(
            event.body,
            EventBody::WorkerStart {
                worker: "0xabc".into(),
                task_queue: Some("queue".into())
            }
        );
    }
}
