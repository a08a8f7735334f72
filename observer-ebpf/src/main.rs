//! Uprobe programs that copy what sdk-core holds at a few functions into one ring buffer.
//!
//! Each program is a thin entry that calls a `try_` function. They only read the target's memory
//! (`bpf_probe_read_user`); nothing here writes to user memory. Which function a program is
//! attached to, and which argument register holds its input, is decided by user space (the probe
//! table) and passed in the attach cookie; how to walk the structs is in the per-process layout.

#![no_std]
#![no_main]

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "observer-ebpf reads x86-64 argument registers; other architectures are not supported yet"
);

use aya_ebpf::cty::c_void;
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_loop, bpf_probe_read_user as raw_probe_read_user},
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use observer_common::{
    ABI_VERSION, ActivationEvent, CompletionEvent, Cookie, EventHeader, EvictionEvent,
    HEADER_BYTES, Layout, MAX_CANDIDATES, MAX_FAILURE_DEPTH, MAX_JOBS, MAX_MESSAGE_CHUNKS,
    MESSAGE_CHUNK_BYTES, MessageChunk, OPTION_TIME_WINDOW, SPAN_BYTES, Span, Str, WorkerEvent,
    candidate_key, counter, flags, kind,
};

/// The ring buffer; user space sets its real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// How to read sdk-core's structs, per candidate. Each observed process has an object of its
/// own, so the candidate is the whole key: an array, which the verifier turns into a bounds
/// check and an address (a hash lookup cost every program run more).
#[map]
static LAYOUTS: Array<Layout> = Array::with_max_entries(MAX_CANDIDATES as u32, 0);

/// Workers already reported as started, by worker address and candidate
/// (`candidate_key`). `mark_started` runs on every poll; only the first one per worker makes a
/// record. Shutdown removes the entry.
#[map]
static STARTED_WORKERS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Return slots kept between the entry and the return of a function that returns an encoded
/// message, by thread and candidate (`candidate_key(pid_tgid, candidate)`). LRU: a slot
/// whose return never comes (a panic unwinding through it) ages out instead of filling the map.
#[map]
static RETURN_SLOTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Threads inside a gate function (`gate_open` … `gate_close`), by pid_tgid. Not per
/// candidate: gates serve the message probes, whose plans have one candidate (user space
/// refuses more). LRU for the same
/// reason as `RETURN_SLOTS`.
#[map]
static GATES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// The out pointers (`data`, `len`) of a gated runtime call, kept from its entry to its return,
/// by pid_tgid.
#[map]
static OUT_BUFFERS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// Process execs and exits, for `watch`: its own ring buffer, so that a busy worker's records
/// never crowd out the news of a new one.
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Lost records and read faults; see `observer_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// This CPU's copy of the struct span a program is reading (`read_span`): too large for the
/// 512-byte stack.
#[map]
static SPANS: PerCpuArray<SpanBuffer> = PerCpuArray::with_max_entries(1, 0);

/// A uprobe program can be preempted (migration is disabled, preemption is not, on a
/// preemptible kernel), and another thread's program on this CPU may then reuse the buffer:
/// `owner` says whose copy it holds, and a copy found taken over is not used (`Copied::release`).
#[repr(C)]
struct SpanBuffer {
    /// The pid_tgid of the thread whose copy this is.
    owner: u64,
    /// Room past `SPAN_BYTES` for a word read at the span's last byte.
    bytes: [u8; SPAN_BYTES as usize + 32],
}

/// Bytes this CPU has submitted since it last asked the ring buffer how full it is
/// (`submit_flags`).
#[map]
static UNCHECKED_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// User space is woken once this many bytes wait in the ring buffer; below that it drains on a
/// short timer. Waking it for every record would cost the probed thread far more than the probe.
/// Each CPU asks how full the buffer is only after a sixteenth of this since it last asked (the
/// question is a helper call), so a wake-up comes at most that much per CPU late.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 64 * 1024;

/// The most chunks of `MESSAGE_CHUNK_BYTES` one message may take (`--max-message-bytes`); a
/// longer message is reported as truncated, without its bytes.
#[unsafe(no_mangle)]
static MESSAGE_CHUNKS: u32 = 16;

/// tonic's `DecodeBuf<'_>` (`buf: &mut BytesMut`, then `len`: the message's length) and the
/// `bytes::BytesMut` it points to (`ptr`, then `len`). Every field is a word and the pointer is
/// first in both, so rustc has kept this order in every build seen (rustc 1.98 and 1.99, both
/// bridges); a record read wrongly through them fails the checks below or user space's decode
/// (which requires field 1 first and a run id), and is counted, never counted as a task.
const DECODE_BUF_BYTES: u32 = 0;
const DECODE_BUF_LEN: u32 = 8;
const BYTES_MUT_PTR: u32 = 0;
const BYTES_MUT_LEN: u32 = 8;
/// Both words of a `DecodeBuf` or a `BytesMut` head, in one copy.
const TWO_WORDS: Span = Span { lo: 0, hi: 16 };

/// CPython's `PyBytesObject` (the stable ABI's `PyVarObject` head, then the hash): the length
/// is `ob_size`, the bytes follow the hash.
const PYBYTES_SIZE_OFFSET: u64 = 16;
const PYBYTES_DATA_OFFSET: u64 = 32;

#[uprobe]
pub fn activation_slot(ctx: ProbeContext) -> u32 {
    let p = probe(&ctx);
    if let Ok(slot) = arg(&ctx, p.cookie.arg_a) {
        let _ = RETURN_SLOTS.insert(&thread_key(&p), &slot, 0);
    }
    0
}

/// `WorkflowMachines::get_wf_activation(&mut self)` at entry: the activation it is about to
/// build, read where it takes it from (one hit; reading the built activation took two, its entry
/// for the return slot and its return).
#[uprobe]
pub fn activation(ctx: ProbeContext) -> u32 {
    let _ = try_activation(&ctx);
    0
}

/// The encoded message a function returned as a `Vec<u8>` into the slot kept at entry.
#[uretprobe]
pub fn vec_message_return(ctx: RetProbeContext) -> u32 {
    let _ = try_vec_message_return(&ctx);
    0
}

/// The `bytes` object a CPython fastcall function takes as its first argument.
#[uprobe]
pub fn pybytes_argument(ctx: ProbeContext) -> u32 {
    let _ = try_pybytes_argument(&ctx);
    0
}

/// tonic's decoder of one gRPC response: the first chunk of the response's bytes.
#[uprobe]
pub fn decode_buf_prefix(ctx: ProbeContext) -> u32 {
    let _ = try_decode_buf_prefix(&ctx);
    0
}

/// A bridge function inside which one runtime call is read opens its thread's gate.
#[uprobe]
pub fn gate_open(_ctx: ProbeContext) -> u32 {
    let _ = GATES.insert(&bpf_get_current_pid_tgid(), &1, 0);
    0
}

#[uretprobe]
pub fn gate_close(_ctx: RetProbeContext) -> u32 {
    let _ = GATES.remove(&bpf_get_current_pid_tgid());
    0
}

/// A runtime function that hands out a buffer through two out pointers: kept only inside a gate.
/// The runtime's other calls of it still take this uprobe's and the return probe's traps, with a
/// map lookup each.
#[uprobe]
pub fn out_buffer_entry(ctx: ProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a read of this program's own map.
    if unsafe { GATES.get(&key) }.is_none() {
        return 0;
    }
    let p = probe(&ctx);
    match (arg(&ctx, p.cookie.arg_a), arg(&ctx, p.cookie.arg_b)) {
        (Ok(data), Ok(len)) => {
            let _ = OUT_BUFFERS.insert(&key, &[data, len], 0);
        }
        _ => emit_unreadable(&p),
    }
    0
}

#[uretprobe]
pub fn out_buffer_return(ctx: RetProbeContext) -> u32 {
    let _ = try_out_buffer_return(&ctx);
    0
}

#[uprobe]
pub fn worker_created_bare(ctx: ProbeContext) -> u32 {
    let _ = try_worker_bare(&ctx, kind::WORKER_START, false);
    0
}

#[uprobe]
pub fn worker_shutdown_bare(ctx: ProbeContext) -> u32 {
    let _ = try_worker_bare(&ctx, kind::WORKER_SHUTDOWN, true);
    0
}

#[uprobe]
pub fn completion(ctx: ProbeContext) -> u32 {
    let _ = try_completion(&ctx);
    0
}

#[uprobe]
pub fn eviction(ctx: ProbeContext) -> u32 {
    let _ = try_eviction(&ctx);
    0
}

#[uprobe]
pub fn eviction_request(ctx: ProbeContext) -> u32 {
    let _ = try_eviction_request(&ctx);
    0
}

#[uprobe]
pub fn worker_shutdown(ctx: ProbeContext) -> u32 {
    let _ = try_worker(&ctx, kind::WORKER_SHUTDOWN);
    0
}

#[uprobe]
pub fn worker_start(ctx: ProbeContext) -> u32 {
    let _ = try_worker(&ctx, kind::WORKER_START);
    0
}

#[uprobe]
pub fn worker_created(ctx: ProbeContext) -> u32 {
    let _ = try_worker_created(&ctx);
    0
}

struct Probe {
    cookie: Cookie,
    pid: u32,
    tid: u32,
    /// This CPU's read-fault count when the program began: a record whose reads faulted is
    /// flagged (see `seal`). Programs do not migrate while they run.
    faults_at_start: u64,
}

#[inline(always)]
fn probe<C: EbpfContext>(ctx: &C) -> Probe {
    // SAFETY: the helper only reads the attach cookie of the running program.
    let cookie = Cookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let pid_tgid = bpf_get_current_pid_tgid();
    Probe {
        cookie,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        faults_at_start: read_faults(),
    }
}

/// This CPU's read-fault count.
#[inline(always)]
fn read_faults() -> u64 {
    COUNTERS.get(counter::READ_FAULTS).copied().unwrap_or(0)
}

/// Flags a record whose reads faulted since its program began, so that user space never takes
/// its stand-in values for the target's.
#[inline(always)]
fn seal(header: &mut EventHeader, p: &Probe) {
    if read_faults() != p.faults_at_start {
        header.flags |= flags::READ_FAULT;
    }
}

#[inline(always)]
fn header(p: &Probe, event_kind: u32) -> EventHeader {
    EventHeader {
        kind: event_kind,
        probe_id: p.cookie.probe_id,
        candidate: p.cookie.candidate,
        flags: 0,
        pid: p.pid,
        tid: p.tid,
        // SAFETY: reads the monotonic clock; no memory is touched.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// The integer argument register `index` names (x86-64 System V order).
///
/// The verifier forbids loads from the context at a variable offset, and LLVM folds a choice of
/// per-register loads into exactly that (one load at a computed offset, even when volatile). So
/// all six are loaded, each at its constant offset (volatile: none is merged or dropped), and
/// the choice is made among the values. No helper call: one costs 100–250 ns on this kind of
/// VM, most of a program's time.
#[inline(always)]
fn arg(ctx: &ProbeContext, index: u8) -> Result<u64, ()> {
    use aya_ebpf::bindings::pt_regs;
    let regs = ctx.regs as *const pt_regs;
    // SAFETY: `regs` is the probe's own context; each load reads one field of it, read-only.
    let all = unsafe {
        [
            core::ptr::read_volatile(&raw const (*regs).rdi),
            core::ptr::read_volatile(&raw const (*regs).rsi),
            core::ptr::read_volatile(&raw const (*regs).rdx),
            core::ptr::read_volatile(&raw const (*regs).rcx),
            core::ptr::read_volatile(&raw const (*regs).r8),
            core::ptr::read_volatile(&raw const (*regs).r9),
            // Never picked (the check below); not zeros, which LLVM would write with a
            // byte-by-byte `memset` call.
            core::ptr::read_volatile(&raw const (*regs).rdi),
            core::ptr::read_volatile(&raw const (*regs).rdi),
        ]
    };
    if index >= 6 {
        return Err(());
    }
    // The mask, not the check above, is what the verifier bounds the stack read by.
    Ok(all[usize::from(index & 7)])
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Reads a `u64` from the target. A fault is counted, never propagated as garbage.
#[inline(always)]
fn read_u64(addr: u64) -> Result<u64, ()> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one returns an error, not a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.map_err(|_| bump(counter::READ_FAULTS))
}

#[inline(always)]
fn read_u8(addr: u64) -> Result<u8, ()> {
    // SAFETY: as in `read_u64`.
    unsafe { bpf_probe_read_user(addr as *const u8) }.map_err(|_| bump(counter::READ_FAULTS))
}

/// Copies the Rust `String` at `addr` into `dst`, keeping at most `N - 1` bytes.
#[inline(always)]
fn read_string<const N: usize>(
    p: &Probe,
    dst: &mut Str<N>,
    addr: u64,
    layout: &Layout,
) -> Result<(), ()> {
    let header = read_span(p, addr, HEADER)?;
    let copied = copied_string(dst, &header, 0, layout);
    header.release().and(copied)
}

/// A `String`'s or `Vec`'s three words, from its start.
const HEADER: Span = Span {
    lo: 0,
    hi: HEADER_BYTES,
};

/// Copies the `String` whose header is at `offset` in `copied`.
#[inline(always)]
fn copied_string<const N: usize>(
    dst: &mut Str<N>,
    copied: &Copied,
    offset: u32,
    layout: &Layout,
) -> Result<(), ()> {
    let (ptr, len) = copied.header_at(offset, layout.offsets.string_ptr, layout.offsets.string_len);
    read_string_bytes(dst, ptr, len)
}

/// Copies the `len` bytes of string data at `ptr` into `dst`, keeping at most `N - 1`.
#[inline(always)]
fn read_string_bytes<const N: usize>(dst: &mut Str<N>, ptr: u64, len: u64) -> Result<(), ()> {
    dst.len = len;
    // The mask keeps the verifier's bound below N; names longer than that are flagged by `len`.
    let n = (if len < N as u64 { len } else { N as u64 - 1 }) & (N as u64 - 1);
    // SAFETY: `n < N` bytes into `dst.bytes`; the source is checked by the helper.
    let ret =
        unsafe { raw_probe_read_user(dst.bytes.as_mut_ptr().cast(), n as u32, ptr as *const _) };
    if ret != 0 {
        bump(counter::READ_FAULTS);
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn read_window(dst: &mut [u8; OPTION_TIME_WINDOW], addr: u64) {
    // SAFETY: fixed-size copy into a buffer of that size; the source is checked by the helper.
    let ret = unsafe {
        raw_probe_read_user(
            dst.as_mut_ptr().cast(),
            OPTION_TIME_WINDOW as u32,
            addr as *const _,
        )
    };
    if ret != 0 {
        bump(counter::READ_FAULTS);
    }
}

#[inline(always)]
fn layout_for(p: &Probe) -> Result<&'static Layout, ()> {
    // Unset entries are zero: an attachment without its layout reads nothing.
    LAYOUTS
        .get(u32::from(p.cookie.candidate))
        .filter(|layout| layout.abi_version == ABI_VERSION)
        .ok_or(())
}

/// This thread's key in a per-thread map, for this attachment's candidate.
#[inline(always)]
fn thread_key(p: &Probe) -> u64 {
    candidate_key(bpf_get_current_pid_tgid(), p.cookie.candidate)
}

/// Reserves a zeroed record; a full buffer is counted as lost.
#[inline(always)]
fn reserve<T: 'static>() -> Result<aya_ebpf::maps::ring_buf::RingBufEntry<T>, ()> {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            // SAFETY: zeroes the reserved record so no stale ring-buffer bytes reach user space.
            unsafe { zero(entry.as_mut_ptr()) };
            Ok(entry)
        }
        None => {
            bump(counter::EVENTS_LOST);
            Err(())
        }
    }
}

/// Zeroes the record at `record` a word at a time. (`write_bytes` becomes a call of BPF's
/// `memset`, a loop of one byte per turn: hundreds of instructions for one record.)
///
/// # Safety
/// `record` must be valid for writes of a `T`.
#[inline(always)]
unsafe fn zero<T>(record: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let words = record.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: word `i` of the record, which the caller says is writable and which is
        // 8-byte aligned. Volatile, so that LLVM keeps the stores instead of making a `memset`.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The submit flags for a record of `size` bytes: a wake-up once `WAKEUP_BYTES` wait.
#[inline(always)]
fn submit_flags(size: u64) -> u64 {
    // SAFETY: a read-only global that user space may set at load time.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    if let Some(unchecked) = UNCHECKED_BYTES.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        let unchecked = unsafe { &mut *unchecked };
        *unchecked += size;
        if *unchecked < threshold / 16 {
            return BPF_RB_NO_WAKEUP as u64;
        }
        *unchecked = 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Submits a record with the flags `submit_flags` picks for its size.
#[inline(always)]
fn submit<T: 'static>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    entry.submit(submit_flags(core::mem::size_of::<T>() as u64));
}

/// A copy of bytes `span` of a struct in the target (`read_span`); fields are picked out of it
/// by their offsets in the struct. It lives in this CPU's one buffer: the next `read_span`
/// replaces it, and what was read from it counts only once `release` says it was not taken over
/// meanwhile.
struct Copied {
    buffer: *const SpanBuffer,
    owner: u64,
    lo: u32,
}

impl Copied {
    /// Whether the copy is still this program's: a program of another thread that ran on this
    /// CPU while this one was preempted may have copied over it. A lost copy is counted as a
    /// read fault, so the record being made is flagged (`seal`) and nothing read from it is
    /// taken for the target's.
    #[inline(always)]
    fn release(self) -> Result<(), ()> {
        // SAFETY: this CPU's buffer, which outlives the program; volatile, so the check is made
        // after every read of the copy.
        if unsafe { core::ptr::read_volatile(&raw const (*self.buffer).owner) } == self.owner {
            Ok(())
        } else {
            bump(counter::READ_FAULTS);
            Err(())
        }
    }

    /// The 8 bytes at `offset` in the struct.
    #[inline(always)]
    fn u64_at(&self, offset: u32) -> u64 {
        // The mask bounds the index for the verifier (user space keeps every field inside a
        // span of at most `SPAN_BYTES`).
        let index = (offset.wrapping_sub(self.lo) & (SPAN_BYTES - 1)) as usize;
        // SAFETY: `index + 8` is inside the buffer's bytes; unaligned loads are allowed on
        // x86-64.
        unsafe {
            core::ptr::read_unaligned(
                (&raw const (*self.buffer).bytes)
                    .cast::<u8>()
                    .add(index)
                    .cast::<u64>(),
            )
        }
    }

    #[inline(always)]
    fn u32_at(&self, offset: u32) -> u32 {
        self.u64_at(offset) as u32
    }

    #[inline(always)]
    fn u8_at(&self, offset: u32) -> u8 {
        self.u64_at(offset) as u8
    }

    /// The (data pointer, length) of the `String` or `Vec` whose header is at `offset`.
    #[inline(always)]
    fn header_at(&self, offset: u32, ptr: u32, len: u32) -> (u64, u64) {
        (self.u64_at(offset + ptr), self.u64_at(offset + len))
    }
}

/// Copies bytes `span` of the struct at `base` in one read, into this CPU's buffer.
#[inline(always)]
fn read_span(p: &Probe, base: u64, span: Span) -> Result<Copied, ()> {
    let len = span.len();
    if len == 0 || len > SPAN_BYTES {
        bump(counter::READ_FAULTS);
        return Err(());
    }
    let buffer = SPANS.get_ptr_mut(0).ok_or(())?;
    let owner = (u64::from(p.pid) << 32) | u64::from(p.tid);
    // `len` is 1..=SPAN_BYTES already; the mask is what the verifier bounds the copy by (it
    // loses the comparison's bound on the way to the helper).
    let n = ((len - 1) & (SPAN_BYTES - 1)) + 1;
    // SAFETY: this CPU's buffer: its owner is claimed before the copy (see `SpanBuffer`), and
    // at most `SPAN_BYTES` bytes go into its bytes; the source is checked by the helper.
    let ret = unsafe {
        core::ptr::write_volatile(&raw mut (*buffer).owner, owner);
        raw_probe_read_user(
            (&raw mut (*buffer).bytes).cast(),
            n,
            (base + span.lo as u64) as *const _,
        )
    };
    if ret != 0 {
        bump(counter::READ_FAULTS);
        return Err(());
    }
    Ok(Copied {
        buffer: buffer.cast_const(),
        owner,
        lo: span.lo,
    })
}

fn try_activation(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let machines = arg(ctx, p.cookie.arg_a)?;
    emit_activation(&p, machines)
}

/// Copies the activation the `WorkflowMachines` at `machines` is about to build: its jobs are
/// the machines' outgoing jobs. One without jobs carries nothing the lifecycle needs (core makes
/// such empty ones while it looks for work) and is not sent.
#[inline(always)]
fn emit_activation(p: &Probe, machines: u64) -> Result<(), ()> {
    let layout = layout_for(p)?;
    let o = &layout.offsets;
    let copied = read_span(p, machines, o.machines_span())?;
    let (jobs_ptr, job_count) = copied.header_at(o.activation_jobs, o.vec_ptr, o.vec_len);
    if job_count == 0 {
        return copied.release();
    }
    let mut entry = reserve::<ActivationEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(p, kind::ACTIVATION);
    let _ = copied_string(&mut e.run_id, &copied, o.activation_run_id, layout);
    let _ = copied_string(
        &mut e.workflow_type,
        &copied,
        o.activation_workflow_type,
        layout,
    );
    e.history_length = copied.u32_at(o.activation_history_length);
    e.is_replaying = copied.u8_at(o.activation_is_replaying) as u32;
    let _ = copied.release();
    e.job_count = job_count;
    let job_size = layout.offsets.job_size as u64;
    // Core sorts jobs only when it ships an activation; here `InitializeWorkflow` may follow
    // another job (a cancel that arrived with the first task).
    let mut init = 0u64;
    for i in 0..MAX_JOBS {
        if (i as u64) < e.job_count {
            let job = jobs_ptr + i as u64 * job_size;
            e.job_tags[i] = read_u64(job + layout.offsets.job_tag as u64).unwrap_or(u64::MAX);
            if init == 0 && layout.tags.init_tag.matches(e.job_tags[i]) {
                init = job;
            }
        }
    }
    if init != 0 {
        e.has_init = 1;
        read_window(
            &mut e.init_times[0],
            init + layout.offsets.init_execution_timeout as u64,
        );
        read_window(
            &mut e.init_times[1],
            init + layout.offsets.init_run_timeout as u64,
        );
        read_window(
            &mut e.init_times[2],
            init + layout.offsets.init_execution_expiration as u64,
        );
        read_window(
            &mut e.init_times[3],
            init + layout.offsets.init_start_time as u64,
        );
    }
    seal(&mut e.header, p);
    submit(entry);
    Ok(())
}

fn try_completion(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let layout = layout_for(&p)?;
    let completion = arg(ctx, p.cookie.arg_a)?;
    let o = &layout.offsets;
    let mut entry = reserve::<CompletionEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(&p, kind::COMPLETION);
    // A completion that cannot be read is still sent (flagged by `seal`): user space counts it.
    e.status_tag = u64::MAX;
    let mut commands = (0, 0);
    if let Ok(copied) = read_span(&p, completion, o.completion_span()) {
        let _ = copied_string(&mut e.run_id, &copied, o.completion_run_id, layout);
        e.status_tag = copied.u64_at(o.completion_status_tag);
        commands = copied.header_at(o.completion_commands, o.vec_ptr, o.vec_len);
        if copied.release().is_err() {
            e.status_tag = u64::MAX;
        }
    }
    if layout.tags.status_successful.matches(e.status_tag) {
        e.successful = 1;
        let (ptr, count) = commands;
        e.command_count = count;
        e.last_command_tag = u64::MAX;
        if e.command_count > 0 {
            let last = ptr + (e.command_count - 1) * layout.offsets.command_size as u64;
            e.last_command_tag =
                read_u64(last + layout.offsets.command_tag as u64).unwrap_or(u64::MAX);
            if layout.tags.command_fail.matches(e.last_command_tag) {
                e.timeout_failure = failure_has_timeout(last, layout) as u32;
            }
        }
    }
    seal(&mut e.header, &p);
    submit(entry);
    Ok(())
}

fn try_eviction(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let layout = layout_for(&p)?;
    let run_id = arg(ctx, p.cookie.arg_a)?;
    let reason = arg(ctx, p.cookie.arg_b)?;
    send_eviction(&p, layout, run_id, reason as u32)
}

/// The run id and reason of the eviction request (`RequestEvictMsg`) at the main input.
fn try_eviction_request(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let layout = layout_for(&p)?;
    let o = &layout.offsets;
    let request = arg(ctx, p.cookie.arg_a)?;
    let mut entry = reserve::<EvictionEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(&p, kind::EVICTION);
    // An unreadable reason is sent as one no reason has, never as a real one (and the record
    // is flagged).
    e.reason = u32::MAX;
    if let Ok(copied) = read_span(&p, request, o.evict_request_span()) {
        let _ = copied_string(&mut e.run_id, &copied, o.evict_request_run_id, layout);
        e.reason = copied.u32_at(o.evict_request_reason);
        let _ = copied.release();
    }
    seal(&mut e.header, &p);
    submit(entry);
    Ok(())
}

/// An eviction record: the run id `String` at `run_id`, and the reason.
#[inline(always)]
fn send_eviction(p: &Probe, layout: &Layout, run_id: u64, reason: u32) -> Result<(), ()> {
    let mut entry = reserve::<EvictionEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(p, kind::EVICTION);
    let _ = read_string(p, &mut e.run_id, run_id, layout);
    e.reason = reason;
    seal(&mut e.header, p);
    submit(entry);
    Ok(())
}

/// Whether the failure of the `FailWorkflowExecution` command at `command`, or any failure in
/// its `cause` chain, is a timeout.
#[inline(always)]
fn failure_has_timeout(command: u64, layout: &Layout) -> bool {
    let tag = read_u64(command + layout.offsets.fail_failure_tag as u64).unwrap_or(u64::MAX);
    if !layout.tags.failure_some.matches(tag) {
        return false;
    }
    let mut failure = command + layout.offsets.fail_failure as u64;
    for _ in 0..MAX_FAILURE_DEPTH {
        let info = read_u64(failure + layout.offsets.failure_info_tag as u64).unwrap_or(u64::MAX);
        if layout.tags.failure_timeout.matches(info) {
            return true;
        }
        match read_u64(failure + layout.offsets.failure_cause as u64) {
            Ok(cause) if cause != 0 => failure = cause,
            _ => return false,
        }
    }
    false
}

fn try_worker(ctx: &ProbeContext, event_kind: u32) -> Result<(), ()> {
    let p = probe(ctx);
    let layout = layout_for(&p)?;
    let worker = arg(ctx, p.cookie.arg_a)?;
    let started = candidate_key(worker, p.cookie.candidate);
    if event_kind == kind::WORKER_START {
        // SAFETY: a read of this program's own map.
        if unsafe { STARTED_WORKERS.get(&started) }.is_some() {
            return Ok(());
        }
        let _ = STARTED_WORKERS.insert(&started, &1, 0);
    } else {
        let _ = STARTED_WORKERS.remove(&started);
    }
    let mut entry = reserve::<WorkerEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(&p, event_kind);
    e.worker = worker;
    let _ = read_string(
        &p,
        &mut e.task_queue,
        worker + layout.offsets.worker_task_queue as u64,
        layout,
    );
    seal(&mut e.header, &p);
    submit(entry);
    Ok(())
}

/// A worker being created: the probe sees its `WorkerConfig`, not the worker, so the record
/// carries the task queue and the config's address (user space identifies workers by queue).
fn try_worker_created(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let layout = layout_for(&p)?;
    let config = arg(ctx, p.cookie.arg_a)?;
    let mut entry = reserve::<WorkerEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(&p, kind::WORKER_START);
    e.worker = config;
    let _ = read_string(
        &p,
        &mut e.task_queue,
        config + layout.offsets.config_task_queue as u64,
        layout,
    );
    seal(&mut e.header, &p);
    submit(entry);
    Ok(())
}

fn try_vec_message_return(ctx: &RetProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let key = thread_key(&p);
    // SAFETY: a read of this program's own map; the value is copied out before the removal.
    let slot = unsafe { RETURN_SLOTS.get(&key) }.copied();
    let _ = RETURN_SLOTS.remove(&key);
    match slot.map(|slot| returned_vec(&p, slot)) {
        Some(Ok((ptr, len))) => emit_message(&p, ptr, len),
        // The slot aged out, or the Vec cannot be read: a message is gone, and user space must
        // know it.
        _ => emit_unreadable(&p),
    }
    Ok(())
}

/// The pointer and length of the `Vec<u8>` at `slot`. Its three words (pointer, capacity,
/// length) come in an order rustc does not promise; `encode_to_vec` allocates exactly the
/// encoded length, so two of them are equal and the third is the pointer. Anything else is not
/// read as a message.
#[inline(always)]
fn returned_vec(p: &Probe, slot: u64) -> Result<(u64, u64), ()> {
    let header = read_span(p, slot, HEADER)?;
    let words = [header.u64_at(0), header.u64_at(8), header.u64_at(16)];
    header.release()?;
    if words[0] == words[1] {
        Ok((words[2], words[0]))
    } else if words[0] == words[2] {
        Ok((words[1], words[0]))
    } else if words[1] == words[2] {
        Ok((words[0], words[1]))
    } else {
        bump(counter::READ_FAULTS);
        Err(())
    }
}

fn try_decode_buf_prefix(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    let buf = read_span(&p, arg(ctx, p.cookie.arg_a)?, TWO_WORDS)?;
    let (len, bytes) = (buf.u64_at(DECODE_BUF_LEN), buf.u64_at(DECODE_BUF_BYTES));
    buf.release()?;
    // An empty response (a long poll that timed out, a completion without a next task).
    if len == 0 {
        return Ok(());
    }
    let bytes = read_span(&p, bytes, TWO_WORDS)?;
    let (ptr, buffered) = (bytes.u64_at(BYTES_MUT_PTR), bytes.u64_at(BYTES_MUT_LEN));
    bytes.release()?;
    // The message is buffered whole before it is decoded.
    if buffered < len {
        bump(counter::READ_FAULTS);
        return Err(());
    }
    // Field 1, length-delimited: a poll response's task token, or the task inside a
    // completion's response. Anything else holds no task.
    if read_u8(ptr)? != 0x0a {
        return Ok(());
    }
    let n = if len < MESSAGE_CHUNK_BYTES as u64 {
        len
    } else {
        MESSAGE_CHUNK_BYTES as u64
    };
    // One chunk, sent as a whole message of its own length: only the leading fields are read.
    send_chunk_record(&header(&p, kind::MESSAGE_CHUNK), n, 0, ptr, n as u32, 0)
}

fn try_out_buffer_return(ctx: &RetProbeContext) -> Result<(), ()> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a read of this program's own map; the value is copied out before the removal.
    let Some([data, len]) = (unsafe { OUT_BUFFERS.get(&key) }).copied() else {
        // Not a gated call.
        return Ok(());
    };
    let _ = OUT_BUFFERS.remove(&key);
    // Kept at an entry inside the gate, but the gate is closed now: not this call's pointers.
    // SAFETY: a read of this program's own map.
    if unsafe { GATES.get(&key) }.is_none() {
        return Ok(());
    }
    let p = probe(ctx);
    // The C API's status: 0 is success; anything else wrote nothing through the pointers.
    let status: u64 = ctx.ret();
    if status as u32 != 0 {
        emit_unreadable(&p);
        return Ok(());
    }
    match (read_u64(data), read_u64(len)) {
        (Ok(ptr), Ok(len)) => emit_message(&p, ptr, len),
        _ => emit_unreadable(&p),
    }
    Ok(())
}

fn try_pybytes_argument(ctx: &ProbeContext) -> Result<(), ()> {
    let p = probe(ctx);
    match pybytes(ctx, &p) {
        Ok((ptr, len)) => emit_message(&p, ptr, len),
        Err(()) => emit_unreadable(&p),
    }
    Ok(())
}

/// Where the bytes of the `bytes` object a fastcall function takes first are, and how many.
#[inline(always)]
fn pybytes(ctx: &ProbeContext, p: &Probe) -> Result<(u64, u64), ()> {
    let args = arg(ctx, p.cookie.arg_a)?;
    let nargs = arg(ctx, p.cookie.arg_b)?;
    // Positional arguments only (CPython's vectorcall may set the high bit of nargs).
    if nargs & (u64::MAX >> 1) == 0 {
        bump(counter::READ_FAULTS);
        return Err(());
    }
    let object = read_u64(args)?;
    let len = read_u64(object + PYBYTES_SIZE_OFFSET)?;
    Ok((object + PYBYTES_DATA_OFFSET, len))
}

/// Says that a message passed here but could not be read: an empty first chunk, which user
/// space counts as an incomplete message (and treats like lost records).
#[inline(always)]
fn emit_unreadable(p: &Probe) {
    let _ = send_chunk_record(&header(p, kind::MESSAGE_CHUNK), 0, 0, 0, 0, 0);
}

/// Sends the `len` bytes at `ptr` as chunks of one message, or, past the cap, one chunk that
/// says the message was truncated.
#[inline(always)]
fn emit_message(p: &Probe, ptr: u64, len: u64) {
    // SAFETY: a read-only global that user space may set at load time.
    let cap = unsafe { core::ptr::read_volatile(&MESSAGE_CHUNKS) }.min(MAX_MESSAGE_CHUNKS);
    let chunks = len.div_ceil(MESSAGE_CHUNK_BYTES as u64);
    let header = header(p, kind::MESSAGE_CHUNK);
    if chunks > cap as u64 {
        // Only the first chunk, marked: user space reads the run id from it (the first field)
        // and nothing else.
        let _ = send_chunk_record(&header, len, 0, ptr, MESSAGE_CHUNK_BYTES as u32, 1);
        return;
    }
    let mut message = Message { header, ptr, len };
    // One verified callback per chunk (`bpf_loop`): a plain loop of up to MAX_MESSAGE_CHUNKS
    // iterations is more than the verifier will walk.
    // SAFETY: the callback is a BPF subprogram that only reads `message`, which outlives the
    // call; `chunks <= cap <= MAX_MESSAGE_CHUNKS` bounds the iterations.
    unsafe {
        bpf_loop(
            chunks as u32,
            send_chunk as *mut c_void,
            (&raw mut message).cast(),
            0,
        )
    };
}

/// A message being sent: what `send_chunk` needs.
#[repr(C)]
struct Message {
    header: EventHeader,
    ptr: u64,
    len: u64,
}

/// Sends chunk `index` of the message at `ctx`; stops the loop (1) when the ring buffer is full.
#[inline(never)]
extern "C" fn send_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Message` on the caller's stack that `emit_message` passes.
    let m = unsafe { &*ctx.cast::<Message>() };
    let offset = index * MESSAGE_CHUNK_BYTES as u64;
    if offset >= m.len {
        return 1;
    }
    let left = m.len - offset;
    let n = if left < MESSAGE_CHUNK_BYTES as u64 {
        left
    } else {
        MESSAGE_CHUNK_BYTES as u64
    };
    match send_chunk_record(&m.header, m.len, offset, m.ptr + offset, n as u32, 0) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

/// Sends one chunk record of a message of `message_len` bytes: `n` bytes (at most a chunk)
/// copied from `src`, at `offset` into the message. A copy that faults is sent empty, so the
/// message will not be whole. Fails only when the ring buffer is full (counted as lost).
#[inline(always)]
fn send_chunk_record(
    header: &EventHeader,
    message_len: u64,
    offset: u64,
    src: u64,
    n: u32,
    truncated: u32,
) -> Result<(), ()> {
    let mut entry = reserve_chunk()?;
    // SAFETY: `entry` is a reserved, properly aligned record; every field but the bytes past
    // `len` is written before it is submitted.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = *header;
    e.message_len = message_len;
    e.message_id = header.ktime_ns;
    e.offset = offset as u32;
    e.truncated = truncated;
    e._pad = 0;
    // The `min` gives the verifier its bound; `n` is at most a chunk anyway.
    let size = n.min(MESSAGE_CHUNK_BYTES as u32);
    e.len = size;
    if size > 0 {
        // SAFETY: at most `MESSAGE_CHUNK_BYTES` bytes into the record's buffer of that size;
        // the source is checked by the helper.
        let ret =
            unsafe { raw_probe_read_user(e.bytes.as_mut_ptr().cast(), size, src as *const _) };
        if ret != 0 {
            bump(counter::READ_FAULTS);
            e.len = 0;
        }
    }
    submit(entry);
    Ok(())
}

/// Reserves a chunk record without zeroing its 4 KiB of bytes: only `len` of them are read.
#[inline(always)]
fn reserve_chunk() -> Result<aya_ebpf::maps::ring_buf::RingBufEntry<MessageChunk>, ()> {
    EVENTS
        .reserve::<MessageChunk>(0)
        .ok_or_else(|| bump(counter::EVENTS_LOST))
}

/// A worker created, or asked to shut down, where its structs are not read: the record carries
/// the worker's address (`self`) for a shutdown and nothing else.
fn try_worker_bare(ctx: &ProbeContext, event_kind: u32, with_self: bool) -> Result<(), ()> {
    let p = probe(ctx);
    let worker = if with_self {
        arg(ctx, p.cookie.arg_a)?
    } else {
        0
    };
    let mut entry = reserve::<WorkerEvent>()?;
    // SAFETY: `entry` is a reserved, zeroed, properly aligned record.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = header(&p, event_kind);
    e.worker = worker;
    submit(entry);
    Ok(())
}

/// The dynamic loader changed a watched process's libraries (its uprobe is scoped to that
/// process): user space looks for a bridge among them.
#[uprobe]
pub fn libraries_changed(_ctx: ProbeContext) -> u32 {
    process_event(kind::LIBRARIES_CHANGED, false);
    0
}

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    process_event(kind::PROCESS_EXEC, false);
    0
}

#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    // Every thread passes here; only the thread group leader's exit ends the process.
    process_event(kind::PROCESS_EXIT, true);
    0
}

#[inline(always)]
fn process_event(event_kind: u32, leader_only: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if leader_only && pid != tid {
        return;
    }
    match PROCESS_EVENTS.reserve::<EventHeader>(0) {
        Some(mut entry) => {
            // SAFETY: `entry` is a reserved, properly aligned record; every field is written.
            unsafe {
                entry.as_mut_ptr().write(EventHeader {
                    kind: event_kind,
                    probe_id: 0,
                    candidate: 0,
                    flags: 0,
                    pid,
                    tid,
                    ktime_ns: bpf_ktime_get_ns(),
                })
            };
            // Every exec may be a new worker to attach within a second: wake user space now.
            entry.submit(BPF_RB_FORCE_WAKEUP as u64);
        }
        None => bump(counter::EVENTS_LOST),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
