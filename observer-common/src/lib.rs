//! The contract between the eBPF programs and user space: records in the ring buffer, the layout
//! the programs read target memory with, and the attach cookie.
//!
//! Everything here is `#[repr(C)]`, holds no `bool` and no implicit padding, and is checked for
//! size at compile time, so both sides agree byte for byte. The kernel side copies what it finds
//! (strings, raw enum tags, raw option windows); user space interprets it with the layout.

#![no_std]

/// Bumped whenever a record or the layout changes shape.
pub const ABI_VERSION: u32 = 6;

/// Bytes of a run id kept (Temporal run ids are 36-byte UUIDs).
pub const RUN_ID_CAP: usize = 64;
/// Bytes of a workflow type name kept; longer names are cut and flagged by `Str::len`.
pub const NAME_CAP: usize = 128;
/// Activation jobs whose tags are copied.
pub const MAX_JOBS: usize = 4;
/// Bytes of an `Option<Timestamp>` / `Option<Duration>` copied raw (tag, seconds, nanos).
pub const OPTION_TIME_WINDOW: usize = 24;

/// What a record is. The header's `kind` holds one of these.
pub mod kind {
    /// An activation core is building for a run (one with at least one job).
    pub const ACTIVATION: u32 = 1;
    /// A completion handed back to core by the workflow code.
    pub const COMPLETION: u32 = 2;
    /// Core created an eviction for a run.
    pub const EVICTION: u32 = 3;
    /// A worker was asked to shut down.
    pub const WORKER_SHUTDOWN: u32 = 4;
    /// A worker polled for the first time (it is running), or, where that function is inlined
    /// away (LTO), a worker was created.
    pub const WORKER_START: u32 = 5;
    // 6 was a workflow task's run id and type (ABI ≤ 5); activations carry the type now.
    /// A process exec'd a new program (`watch`; the record is a bare header).
    pub const PROCESS_EXEC: u32 = 7;
    /// A process exited (`watch`; the record is a bare header).
    pub const PROCESS_EXIT: u32 = 8;
    /// One chunk of an encoded protobuf message a bridge handed over ([`crate::MessageChunk`]).
    pub const MESSAGE_CHUNK: u32 = 9;
    /// A process `watch` waits on changed its loaded libraries (`watch`; a bare header).
    pub const LIBRARIES_CHANGED: u32 = 10;
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// Some target memory of this record could not be read (counted in
    /// [`crate::counter::READ_FAULTS`]): its fields may hold stand-ins, not what the target has.
    pub const READ_FAULT: u8 = 1;
}

/// Bytes of a message one [`MessageChunk`] carries.
pub const MESSAGE_CHUNK_BYTES: usize = 4096;
/// The most chunks one message may take: the ceiling of `--max-message-bytes`.
pub const MAX_MESSAGE_CHUNKS: u32 = 1024;

/// How deep the kernel follows a failure's `cause` chain looking for a timeout.
pub const MAX_FAILURE_DEPTH: usize = 8;

/// Which eBPF program a probe point runs, named as in `observer-ebpf`.
pub mod program {
    pub const COMPLETION: &str = "completion";
    pub const EVICTION: &str = "eviction";
    /// Core asked to evict a run (`ManagedRun::request_eviction(&mut self, info:
    /// RequestEvictMsg)`): reads the run id and reason from the message; where
    /// `create_evict_activation` is not in the binary.
    pub const EVICTION_REQUEST: &str = "eviction_request";
    pub const WORKER_SHUTDOWN: &str = "worker_shutdown";
    pub const WORKER_START: &str = "worker_start";
    /// A worker's creation (its config, not yet the worker): where `worker_start` is inlined.
    pub const WORKER_CREATED: &str = "worker_created";
    /// Entry of `WorkflowMachines::get_wf_activation(&mut self)`: reads the activation it is
    /// about to build (run id, type, replay flag, history length, jobs) from the machines.
    pub const ACTIVATION: &str = "activation";
    /// Entry half of a function that returns its value into a slot (here an encoded message):
    /// keeps the return slot per thread.
    pub const ACTIVATION_SLOT: &str = "activation_slot";
    /// Return half of a function that returns an encoded message as a `Vec<u8>` into the slot
    /// kept at entry (by `activation_slot`): copies the message's bytes.
    pub const VEC_MESSAGE_RETURN: &str = "vec_message_return";
    /// Entry of a CPython fastcall function (`self, args, nargs, kwnames`) whose first argument
    /// is a `bytes` object: copies its bytes.
    pub const PYBYTES_ARGUMENT: &str = "pybytes_argument";
    /// A worker's creation, read-free: for targets whose structs are not read.
    pub const WORKER_CREATED_BARE: &str = "worker_created_bare";
    /// A worker asked to shut down, by its address only.
    pub const WORKER_SHUTDOWN_BARE: &str = "worker_shutdown_bare";
    /// Entry of a bridge function inside which a runtime call is read (a uprobe): opens this
    /// thread's gate.
    pub const GATE_OPEN: &str = "gate_open";
    /// Its return (a uretprobe): closes the gate.
    pub const GATE_CLOSE: &str = "gate_close";
    /// Entry of a C function of the language runtime that returns a buffer through two out
    /// pointers (`void **data, size_t *len`, in the cookie's registers), such as Node-API's
    /// `napi_get_buffer_info`: keeps them per thread, only while the thread's gate is open.
    pub const OUT_BUFFER_ENTRY: &str = "out_buffer_entry";
    /// Its return (a uretprobe): on success (`0`), copies the buffer the out pointers name.
    pub const OUT_BUFFER_RETURN: &str = "out_buffer_return";
    /// Entry of tonic's protobuf decoder for one response type (`ProstDecoder::decode(&mut self,
    /// buf: &mut DecodeBuf)`): copies the first chunk of the response's bytes, when the response
    /// starts with field 1 (a workflow task is in it).
    pub const DECODE_BUF_PREFIX: &str = "decode_buf_prefix";
    /// The dynamic loader's debugger hook (`_dl_debug_state`), which it calls whenever it has
    /// mapped or unmapped a library: for `watch`, in a process that may load a bridge later.
    pub const LIBRARIES_CHANGED: &str = "libraries_changed";
    /// Tracepoint `sched/sched_process_exec`, for `watch`.
    pub const PROCESS_EXEC: &str = "process_exec";
    /// Tracepoint `sched/sched_process_exit`, for `watch`.
    pub const PROCESS_EXIT: &str = "process_exit";
    /// Every program.
    pub const ALL: [&str; 20] = [
        DECODE_BUF_PREFIX,
        GATE_OPEN,
        GATE_CLOSE,
        OUT_BUFFER_ENTRY,
        OUT_BUFFER_RETURN,
        LIBRARIES_CHANGED,
        VEC_MESSAGE_RETURN,
        PYBYTES_ARGUMENT,
        WORKER_CREATED_BARE,
        WORKER_SHUTDOWN_BARE,
        COMPLETION,
        EVICTION,
        EVICTION_REQUEST,
        WORKER_SHUTDOWN,
        WORKER_START,
        WORKER_CREATED,
        ACTIVATION,
        ACTIVATION_SLOT,
        PROCESS_EXEC,
        PROCESS_EXIT,
    ];
}

/// Names of the eBPF side's maps and globals, as its statics are named; user space finds them
/// by these names (a test checks the built object has each).
pub mod map {
    /// The probes' ring buffer.
    pub const EVENTS: &str = "EVENTS";
    /// `Layout` per candidate (an array: each observed process loads its own object).
    pub const LAYOUTS: &str = "LAYOUTS";
    /// Workers already reported as started.
    pub const STARTED_WORKERS: &str = "STARTED_WORKERS";
    /// Return slots kept between a function's entry and its return, per thread.
    pub const RETURN_SLOTS: &str = "RETURN_SLOTS";
    /// Threads inside a gate function (see `program::GATE_OPEN`).
    pub const GATES: &str = "GATES";
    /// Out pointers kept between a runtime function's entry and its return, per thread.
    pub const OUT_BUFFERS: &str = "OUT_BUFFERS";
    /// `watch`'s ring buffer of process execs and exits.
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    /// Per-CPU counters, indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// The global that sets when a record wakes user space.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// The global that caps the chunks of one message (`--max-message-bytes`).
    pub const MESSAGE_CHUNKS: &str = "MESSAGE_CHUNKS";
    /// Every map (not the global).
    pub const ALL: [&str; 8] = [
        EVENTS,
        LAYOUTS,
        STARTED_WORKERS,
        RETURN_SLOTS,
        GATES,
        OUT_BUFFERS,
        PROCESS_EVENTS,
        COUNTERS,
    ];
}

/// The attach cookie: which probe fired, which argument registers hold its inputs, and which
/// candidate layout it reads with.
///
/// Register use of internal Rust functions is not an ABI (LTO moves arguments), so the argument
/// indices travel with each attachment instead of being compiled into the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub probe_id: u16,
    /// Argument index (0 = first argument register) of the probe's main input.
    pub arg_a: u8,
    /// Argument index of a second input, where the probe has one.
    pub arg_b: u8,
    /// The candidate (layout and registers) this attachment reads with: a target whose layout
    /// is not yet verified has each point attached once per candidate (see [`MAX_CANDIDATES`]).
    pub candidate: u8,
}

impl Cookie {
    pub const fn encode(self) -> u64 {
        (self.probe_id as u64)
            | ((self.arg_a as u64) << 16)
            | ((self.arg_b as u64) << 24)
            | ((self.candidate as u64) << 32)
    }

    pub const fn decode(raw: u64) -> Self {
        Self {
            probe_id: raw as u16,
            arg_a: (raw >> 16) as u8,
            arg_b: (raw >> 24) as u8,
            candidate: (raw >> 32) as u8,
        }
    }
}

/// The most candidate layouts one target is read with at once, while the live records decide.
pub const MAX_CANDIDATES: usize = 8;

/// A per-thread or per-worker map key (a `pid_tgid`, whose tgid is below 2^22, or a user-space
/// address, below 2^47), made distinct per candidate: each candidate's attachment keeps its own
/// entries, so one never consumes another's.
pub const fn candidate_key(key: u64, candidate: u8) -> u64 {
    key | ((candidate as u64) << 56)
}

/// Matches an enum's raw tag value: `lo <= tag <= hi`, or outside that range when `invert` is 1.
///
/// Rust stores most enums with niche encoding: the dataful variant is "any value outside the
/// niche range", the others are single values. Both forms fit here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagMatch {
    pub lo: u64,
    pub hi: u64,
    pub invert: u32,
    pub _pad: u32,
}

impl TagMatch {
    pub const fn exact(value: u64) -> Self {
        Self {
            lo: value,
            hi: value,
            invert: 0,
            _pad: 0,
        }
    }

    pub const fn within(lo: u64, hi: u64) -> Self {
        Self {
            lo,
            hi,
            invert: 0,
            _pad: 0,
        }
    }

    pub const fn outside(lo: u64, hi: u64) -> Self {
        Self {
            lo,
            hi,
            invert: 1,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn matches(&self, tag: u64) -> bool {
        let inside = self.lo <= tag && tag <= self.hi;
        inside != (self.invert != 0)
    }
}

/// Declares the kernel layout from one list of offsets and one of tag matchers: the
/// `#[repr(C)]` structs the programs read with, and, generic over the offsets' type, the same
/// offsets for user space (which derives them as `u64` and converts them field by field, by
/// name, without listing them again).
macro_rules! kernel_layout {
    (
        offsets { $( $(#[$offset_meta:meta])* $offset:ident, )* }
        tags { $( $(#[$tag_meta:meta])* $tag:ident, )* }
    ) => {
        /// Where each field the programs read is, in bytes from the start of the struct that
        /// holds it (see each field).
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        pub struct Offsets<T> {
            $( $(#[$offset_meta])* pub $offset: T, )*
        }

        impl<T> Offsets<T> {
            /// The names of the offsets, in order.
            pub const NAMES: &'static [&'static str] = &[$( stringify!($offset), )*];

            /// Converts every offset; `f` gets each one's name and value.
            pub fn try_map<U, E>(
                self,
                mut f: impl FnMut(&'static str, T) -> Result<U, E>,
            ) -> Result<Offsets<U>, E> {
                Ok(Offsets {
                    $( $offset: f(stringify!($offset), self.$offset)?, )*
                })
            }
        }

        /// Which raw tag values mean a variant the programs look for.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Tags {
            $( $(#[$tag_meta])* pub $tag: TagMatch, )*
        }
    };
}

kernel_layout! {
    offsets {
        /// `String`: its data pointer, from the `String`'s start.
        string_ptr,
        /// `String`: its length.
        string_len,
        /// `Vec<T>`: its data pointer.
        vec_ptr,
        /// `Vec<T>`: its length.
        vec_len,
        /// An activation's fields where `get_wf_activation` takes them from, in its
        /// `WorkflowMachines`: `run_id`.
        activation_run_id,
        /// `workflow_type` (a `String`).
        activation_workflow_type,
        /// `drive_me.outgoing_wf_activation_jobs`: the jobs the activation will hold.
        activation_jobs,
        /// `last_processed_event` (an `i64`; the activation's history length is its low 32 bits).
        activation_history_length,
        /// `replaying` (a `bool`).
        activation_is_replaying,
        /// The size of one job (`OutgoingJob`).
        job_size,
        /// A job's variant tag, from the job's start.
        job_tag,
        /// `InitializeWorkflow` fields, from the start of the job that holds it.
        init_execution_timeout,
        init_run_timeout,
        init_execution_expiration,
        init_start_time,
        /// `WorkflowActivationCompletion.run_id`.
        completion_run_id,
        /// The tag of `WorkflowActivationCompletion.status`.
        completion_status_tag,
        /// `Success.commands`, from the completion's start.
        completion_commands,
        /// The size of one `WorkflowCommand`.
        command_size,
        /// A command's variant tag, from the command's start.
        command_tag,
        /// The tag of `FailWorkflowExecution.failure` (an `Option<Failure>`), from the
        /// command's start.
        fail_failure_tag,
        /// The `Failure` inside it, from the command's start.
        fail_failure,
        /// `Failure.cause`: an `Option<Box<Failure>>`, a nullable pointer.
        failure_cause,
        /// The tag of `Failure.failure_info`.
        failure_info_tag,
        /// `Worker.config.task_queue`, from the `Worker`'s start.
        worker_task_queue,
        /// `WorkerConfig.task_queue`, for probes that see the config, not the worker.
        config_task_queue,
        /// `RequestEvictMsg.run_id` (a `String`). (Tables and recordings made before it existed
        /// read it as 0.)
        #[cfg_attr(feature = "user", serde(default))]
        evict_request_run_id,
        /// `RequestEvictMsg.reason` (an `EvictionReason`, an `i32`).
        #[cfg_attr(feature = "user", serde(default))]
        evict_request_reason,
    }
    tags {
        /// Job tag values that mean `InitializeWorkflow`.
        init_tag,
        /// Completion status tag values that mean `Successful`.
        status_successful,
        /// Command tag values that mean `FailWorkflowExecution`.
        command_fail,
        /// `Option<Failure>` tag values that mean `Some`.
        failure_some,
        /// `failure_info` tag values that mean `TimeoutFailureInfo`.
        failure_timeout,
    }
}

/// The most bytes of one struct a program copies in one read. A record's fields that live in one
/// struct (see [`Offsets::machines_span`] and the others) are copied together and picked out of
/// the copy: one helper call instead of one per field, and each call costs more than copying a
/// few kilobytes. User space refuses a layout whose span is longer.
pub const SPAN_BYTES: u32 = 4096;

/// Bytes `lo..hi` of a struct: the smallest range holding a set of its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub lo: u32,
    pub hi: u32,
}

impl Span {
    /// The span of fields given as (offset, size).
    #[inline(always)]
    pub fn of(fields: &[(u32, u32)]) -> Self {
        let mut span = Span {
            lo: u32::MAX,
            hi: 0,
        };
        for &(offset, size) in fields {
            span.lo = span.lo.min(offset);
            span.hi = span.hi.max(offset.saturating_add(size));
        }
        span
    }

    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.hi.saturating_sub(self.lo)
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `String`'s or `Vec`'s header: three words.
pub const HEADER_BYTES: u32 = 24;

impl Offsets<u32> {
    /// What an activation record takes from `WorkflowMachines`.
    #[inline(always)]
    pub fn machines_span(&self) -> Span {
        Span::of(&[
            (self.activation_run_id, HEADER_BYTES),
            (self.activation_workflow_type, HEADER_BYTES),
            (self.activation_jobs, HEADER_BYTES),
            (self.activation_history_length, 4),
            (self.activation_is_replaying, 1),
        ])
    }

    /// What a completion record takes from `WorkflowActivationCompletion`.
    #[inline(always)]
    pub fn completion_span(&self) -> Span {
        Span::of(&[
            (self.completion_run_id, HEADER_BYTES),
            (self.completion_status_tag, 8),
            (self.completion_commands, HEADER_BYTES),
        ])
    }

    /// What an eviction record takes from `RequestEvictMsg`.
    #[inline(always)]
    pub fn evict_request_span(&self) -> Span {
        Span::of(&[
            (self.evict_request_run_id, HEADER_BYTES),
            (self.evict_request_reason, 4),
        ])
    }

    /// Every span the programs copy, by name, for user space's check against [`SPAN_BYTES`].
    pub fn spans(&self) -> [(&'static str, Span); 3] {
        [
            ("WorkflowMachines", self.machines_span()),
            ("WorkflowActivationCompletion", self.completion_span()),
            ("RequestEvictMsg", self.evict_request_span()),
        ]
    }
}

/// What the eBPF programs read target memory with, per process; user space fills it from DWARF
/// or from the shipped layout table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub abi_version: u32,
    pub _pad: u32,
    pub offsets: Offsets<u32>,
    pub tags: Tags,
}

/// A string copied out of the target: `len` is its length there, `bytes` holds the first
/// `min(len, N)` bytes. `len > N` means the copy was cut.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Str<const N: usize> {
    pub len: u64,
    pub bytes: [u8; N],
}

/// Every record starts with this header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// The probe table's id of the probe that fired.
    pub probe_id: u16,
    /// The candidate layout the record was read with (its attachment's [`Cookie::candidate`]);
    /// 0 where there is one.
    pub candidate: u8,
    /// [`flags`] of this record. (`candidate` and `flags` were once the top half of a `u32`
    /// probe id: records of candidate 0 without flags read the same.)
    pub flags: u8,
    /// Process (thread group) id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub ktime_ns: u64,
}

/// An activation about to reach the workflow code.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActivationEvent {
    pub header: EventHeader,
    pub run_id: Str<RUN_ID_CAP>,
    pub history_length: u32,
    /// 0 or 1: whether the machines replay history (core also calls a query-only activation
    /// replaying, which user space tells from the jobs).
    pub is_replaying: u32,
    pub job_count: u64,
    /// Raw variant tags of the first `MAX_JOBS` jobs.
    pub job_tags: [u64; MAX_JOBS],
    /// 1 when one of the first `MAX_JOBS` jobs is `InitializeWorkflow`; `init_times` are valid
    /// only then.
    pub has_init: u32,
    pub _pad: u32,
    /// The run's workflow type, with every activation (so a run whose start was not seen is
    /// named by its next one).
    pub workflow_type: Str<NAME_CAP>,
    /// Raw `Option<Duration>` / `Option<Timestamp>` windows, in this order: execution timeout,
    /// run timeout, execution expiration time, start time.
    pub init_times: [[u8; OPTION_TIME_WINDOW]; 4],
}

/// A completion handed to core.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CompletionEvent {
    pub header: EventHeader,
    pub run_id: Str<RUN_ID_CAP>,
    /// Raw tag of the completion's status.
    pub status_tag: u64,
    /// 1 when the status is `Successful`; then the command fields are valid.
    pub successful: u32,
    /// 1 when the last command fails the run with a failure whose cause chain holds a timeout.
    pub timeout_failure: u32,
    pub command_count: u64,
    /// Raw variant tag of the last command (the terminal command, when there is one).
    pub last_command_tag: u64,
}

/// An eviction core created for a run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvictionEvent {
    pub header: EventHeader,
    pub run_id: Str<RUN_ID_CAP>,
    pub reason: u32,
    pub _pad: u32,
}

/// A worker started polling, or was asked to shut down (the header's kind tells which).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WorkerEvent {
    pub header: EventHeader,
    /// The address of the core `Worker`: identifies the worker within its process.
    pub worker: u64,
    pub task_queue: Str<NAME_CAP>,
}

/// One chunk of an encoded protobuf message (an activation, a completion) that a bridge handed
/// over. A message of `message_len` bytes comes as consecutive chunks with the same
/// `message_id`, each `offset`/`len` into it. A message longer than the cap comes as its first
/// chunk only, with `truncated == 1` (user space reads nothing from it but the run id, the
/// first field): never as partial bytes that might pass for whole. A message that could not be
/// read at all comes as one empty chunk (`len == 0`, `truncated == 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MessageChunk {
    pub header: EventHeader,
    /// The message's length in the target.
    pub message_len: u64,
    /// The same in every chunk of one message (the probe hit's `ktime_ns`).
    pub message_id: u64,
    pub offset: u32,
    pub len: u32,
    /// 1 when the message was longer than the cap: this is its first chunk, and no more come.
    pub truncated: u32,
    pub _pad: u32,
    pub bytes: [u8; MESSAGE_CHUNK_BYTES],
}

/// Counters the kernel side keeps (index into the `COUNTERS` per-CPU array).
pub mod counter {
    /// Records that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 0;
    /// Target memory that could not be read (the record was still sent, with what was read).
    pub const READ_FAULTS: u32 = 1;
    pub const COUNT: u32 = 2;
}

const _: () = {
    assert!(core::mem::size_of::<TagMatch>() == 24);
    assert!(MAX_CANDIDATES <= 256);
    // No implicit padding: the tags (8-byte aligned) follow the offsets directly.
    assert!(
        core::mem::size_of::<Offsets<u32>>().is_multiple_of(8),
        "add or remove one offset, or a padding offset: the tags must stay 8-byte aligned"
    );
    assert!(
        core::mem::size_of::<Layout>()
            == 8 + core::mem::size_of::<Offsets<u32>>() + core::mem::size_of::<Tags>()
    );
    assert!(core::mem::size_of::<Tags>() == 24 * 5);
    assert!(core::mem::size_of::<EventHeader>() == 24);
    assert!(core::mem::size_of::<Str<RUN_ID_CAP>>() == 8 + RUN_ID_CAP);
    assert!(core::mem::size_of::<ActivationEvent>() == 24 + 72 + 8 + 8 + 32 + 8 + 136 + 96);
    assert!(core::mem::size_of::<CompletionEvent>() == 24 + 72 + 8 + 8 + 8 + 8);
    assert!(core::mem::size_of::<EvictionEvent>() == 24 + 72 + 8);
    assert!(core::mem::size_of::<WorkerEvent>() == 24 + 8 + 8 + NAME_CAP);
    assert!(core::mem::size_of::<MessageChunk>() == 24 + 8 + 8 + 16 + MESSAGE_CHUNK_BYTES);
    assert!(MESSAGE_CHUNK_BYTES.is_power_of_two());
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: `#[repr(C)]`, only integers, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::Layout {}
}
