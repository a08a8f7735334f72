//! The probe family that reads encoded protobuf messages where an SDK bridge hands them over:
//! how the Python and TypeScript workers are observed. sdk-core's Rust structs are
//! never read, so no layout is needed; the wire format is stable across sdk-core versions, and
//! the published prost types (`temporalio-protos`) decode it.
//!
//! The programs send a message as chunks (`observer_common::MessageChunk`); the session puts
//! them back together ([`crate::events::Reassembly`]) and hands the whole message's bytes to
//! its probe's decoder here.

use observer_common::{WorkerEvent, kind, program};
use prost::Message;
use temporalio_protos::protos::{
    coresdk::{
        workflow_activation::{WorkflowActivation, workflow_activation_job},
        workflow_commands::workflow_command,
        workflow_completion::{WorkflowActivationCompletion, workflow_activation_completion},
    },
    temporal::api::{
        common::v1::{WorkflowExecution, WorkflowType},
        failure::v1::{Failure, failure::FailureInfo},
    },
};

use super::{Framing, Hook, Input, Lifetime, ProbePoint, ProbeSpec, Via};
use crate::{
    events::{
        CompletionStatus, DecodeError, EventBody, EvictionReason, JobKind, Nanos, RunInit,
        Terminal, read_record,
    },
    layout::TargetLayout,
};

/// The function a bridge calls to encode each activation it hands to the language.
pub const ENCODE_ACTIVATION: &str = "<temporalio_protos::protos::coresdk::workflow_activation::WorkflowActivation as prost::message::Message>::encode_to_vec";

/// The pyo3 method the Python SDK hands each encoded completion to (its C-ABI trampoline is
/// what the probe attaches to; see `crate::bridge`).
pub const PY_COMPLETE_ACTIVATION: &str =
    "temporal_sdk_bridge::worker::WorkerRef::__pymethod_complete_workflow_activation__";

/// The generic pyo3 fastcall trampolines, one per method, all of this name.
pub const PY_FASTCALL_TRAMPOLINE: &str =
    "pyo3::impl_::trampoline::fastcall_cfunction_with_keywords";

/// The pyo3 method the Python SDK calls once to shut a worker down.
pub const PY_INITIATE_SHUTDOWN: &str =
    "temporal_sdk_bridge::worker::WorkerRef::__pymethod_initiate_shutdown__";

/// The pyo3 trampolines of methods without arguments (`self` only).
pub const PY_NOARGS_TRAMPOLINE: &str = "pyo3::impl_::trampoline::noargs";

/// tonic's decoder of the server's answer to a workflow-task poll. Called through `dyn Decoder`
/// only, so LTO can neither inline it nor move its arguments.
pub const DECODE_POLL_RESPONSE: &str = "<tonic_prost::codec::ProstDecoder<temporalio_protos::protos::temporal::api::workflowservice::v1::PollWorkflowTaskQueueResponse> as tonic::codec::Decoder>::decode";

/// tonic's decoder of the server's answer to a completed workflow task, which may carry the
/// run's next task (sdk-core asks for one on sticky queues) that then never passes the poll.
pub const DECODE_COMPLETED_RESPONSE: &str = "<tonic_prost::codec::ProstDecoder<temporalio_protos::protos::temporal::api::workflowservice::v1::RespondWorkflowTaskCompletedResponse> as tonic::codec::Decoder>::decode";

/// The task probes, shared by both bridges: each workflow task the server hands the worker
/// names its run and workflow type, which the activations of a run that started before the
/// observer attached never do (only its first activation, `InitializeWorkflow`, does).
const fn task_point(function: &'static str) -> ProbePoint {
    ProbePoint {
        function,
        via: None,
        hook: Hook::Entry {
            program: program::DECODE_BUF_PREFIX,
        },
        // `(sret, &mut self, buf: &mut DecodeBuf)`: a trait method called only through its
        // vtable, whose signature fixes the registers; each record is checked (field 1 first, a
        // run id and a type) before it is believed.
        inputs: [Input::CArgument(2), Input::None],
        caveat: None,
        count_existing_workers: false,
    }
}

const TASK_POINTS: [ProbePoint; 2] = [
    task_point(DECODE_POLL_RESPONSE),
    task_point(DECODE_COMPLETED_RESPONSE),
];

const TASK_YIELDS: &str = "each workflow task's run and workflow type, from the first bytes of \
                           the server's response (names the runs that started before the attach)";

/// The probe table for sdk-core inside the Python bridge (PyPI `temporalio`).
pub const PYTHON_PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        id: 11,
        name: "activation",
        points: &[ProbePoint {
            function: ENCODE_ACTIVATION,
            via: None,
            hook: Hook::EntryAndReturn {
                entry: program::ACTIVATION_SLOT,
                exit: program::VEC_MESSAGE_RETURN,
            },
            inputs: [Input::ReturnSlot, Input::None],
            caveat: None,
            count_existing_workers: false,
        }],
        required: true,
        yields: "each activation handed to the workflow code, whole: run id, jobs (evictions \
                 among them), replay flag; for a run's first activation its workflow type, start \
                 time and timeouts",
        record: kind::MESSAGE_CHUNK,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_activation,
    },
    ProbeSpec {
        id: 12,
        name: "completion",
        points: &[ProbePoint {
            function: PY_COMPLETE_ACTIVATION,
            via: Some(Via::Caller(PY_FASTCALL_TRAMPOLINE)),
            hook: Hook::Entry {
                program: program::PYBYTES_ARGUMENT,
            },
            // `(self, args, nargs, kwnames)`: a C function, so its registers are the ABI's.
            inputs: [Input::CArgument(1), Input::CArgument(2)],
            caveat: None,
            count_existing_workers: false,
        }],
        required: true,
        yields: "each completion handed back by the workflow code, whole: run id, status, its \
                 terminal command, and whether a failure's cause chain holds a timeout",
        record: kind::MESSAGE_CHUNK,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_completion,
    },
    ProbeSpec {
        id: 13,
        name: "worker_start",
        points: &[ProbePoint {
            function: "temporalio_sdk_core::worker::Worker::new_with_pollers",
            via: None,
            hook: Hook::Entry {
                program: program::WORKER_CREATED_BARE,
            },
            inputs: [Input::None, Input::None],
            caveat: Some(
                "a worker counts as running from its creation; workers that already run when \
                 the observer attaches are counted from their workflow-processing threads",
            ),
            count_existing_workers: true,
        }],
        required: false,
        yields: "a worker created (it runs from then on)",
        record: kind::WORKER_START,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_worker_created,
    },
    ProbeSpec {
        id: 14,
        name: "worker_shutdown",
        // Not sdk-core's `Worker::initiate_shutdown`: it runs three times per worker, the last
        // time on the worker moved out of its `Arc` (another address), so one worker's calls
        // cannot be told from two workers'. The SDK calls this method once per worker.
        points: &[ProbePoint {
            function: PY_INITIATE_SHUTDOWN,
            via: Some(Via::Caller(PY_NOARGS_TRAMPOLINE)),
            hook: Hook::Entry {
                program: program::WORKER_SHUTDOWN_BARE,
            },
            // `(self, _)`: a C function; `self` is the worker's Python object.
            inputs: [Input::CArgument(0), Input::None],
            caveat: None,
            count_existing_workers: false,
        }],
        required: false,
        yields: "a worker asked to shut down, by its Python object",
        record: kind::WORKER_SHUTDOWN,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_worker_shutdown,
    },
    ProbeSpec {
        id: 15,
        name: "task",
        points: &[TASK_POINTS[0]],
        required: false,
        yields: TASK_YIELDS,
        record: kind::MESSAGE_CHUNK,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_polled_task,
    },
    ProbeSpec {
        id: 16,
        name: "task",
        points: &[TASK_POINTS[1]],
        required: false,
        yields: TASK_YIELDS,
        record: kind::MESSAGE_CHUNK,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_returned_task,
    },
];

/// neon's C-ABI entry of every function the TypeScript bridge exports to JavaScript, one
/// instance per function: the function's body (argument conversion included) is inlined into it.
pub const NEON_CALL_BOXED: &str = "neon::sys::fun::call_boxed";

/// The bridge function the TypeScript SDK hands each encoded completion to (a `Buffer`).
pub const TS_COMPLETE_ACTIVATION: &str =
    "temporal_sdk_typescript_bridge::worker::worker_complete_workflow_activation";

/// The bridge function the TypeScript SDK calls once to shut a worker down.
pub const TS_INITIATE_SHUTDOWN: &str =
    "temporal_sdk_typescript_bridge::worker::worker_initiate_shutdown";

/// Node-API's accessor of a `Buffer`'s bytes: `(env, value, void **data, size_t *length)`,
/// exported by the `node` executable (or `libnode`). The bridge calls it exactly once per
/// completion, to copy the completion out of its `Buffer`; it has no DWARF-free Rust point
/// that holds those bytes as `(pointer, length)`.
pub const NAPI_GET_BUFFER_INFO: &str = "napi_get_buffer_info";

/// The probe table for sdk-core inside the TypeScript bridge (npm `@temporalio/core-bridge`).
pub const TYPESCRIPT_PROBES: &[ProbeSpec] = &[
    // The same activation, worker-start and task points as in the Python bridge.
    ProbeSpec {
        id: 21,
        ..PYTHON_PROBES[0]
    },
    ProbeSpec {
        id: 22,
        name: "completion",
        points: &[ProbePoint {
            function: TS_COMPLETE_ACTIVATION,
            via: Some(Via::InstanceFor(NEON_CALL_BOXED)),
            hook: Hook::Gated {
                gate_open: program::GATE_OPEN,
                gate_close: program::GATE_CLOSE,
                callee: NAPI_GET_BUFFER_INFO,
                entry: program::OUT_BUFFER_ENTRY,
                exit: program::OUT_BUFFER_RETURN,
            },
            // The callee's `data` and `length` out pointers: a C function's registers.
            inputs: [Input::CArgument(2), Input::CArgument(3)],
            caveat: None,
            count_existing_workers: false,
        }],
        required: true,
        yields: PYTHON_PROBES[1].yields,
        record: kind::MESSAGE_CHUNK,
        // The SDK passes `WorkflowActivationCompletion.encodeDelimited(…)`.
        framing: Framing::LengthDelimited,
        lifetime: Lifetime::Session,
        decode: decode_delimited_completion,
    },
    ProbeSpec {
        id: 23,
        ..PYTHON_PROBES[2]
    },
    ProbeSpec {
        id: 24,
        name: "worker_shutdown",
        // As for Python: the SDK calls this once per worker, sdk-core's own function thrice.
        points: &[ProbePoint {
            function: TS_INITIATE_SHUTDOWN,
            via: Some(Via::InstanceFor(NEON_CALL_BOXED)),
            hook: Hook::Entry {
                program: program::WORKER_SHUTDOWN_BARE,
            },
            // `(env, callback_info)`: nothing there names the worker for longer than the call.
            inputs: [Input::None, Input::None],
            caveat: None,
            count_existing_workers: false,
        }],
        required: false,
        yields: "a worker asked to shut down (each call is one worker)",
        record: kind::WORKER_SHUTDOWN,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_worker_shutdown_call,
    },
    ProbeSpec {
        id: 25,
        ..PYTHON_PROBES[4]
    },
    ProbeSpec {
        id: 26,
        ..PYTHON_PROBES[5]
    },
];

/// The message inside a record's bytes, as its probe frames it.
pub fn unframe(framing: Framing, bytes: &[u8]) -> Option<&[u8]> {
    match framing {
        Framing::Bare => Some(bytes),
        Framing::LengthDelimited => {
            let mut rest = bytes;
            prost::encoding::decode_varint(&mut rest).ok()?;
            Some(rest)
        }
    }
}

/// The run and workflow type of the workflow task whose response starts with `prefix` (the
/// first chunk of a `PollWorkflowTaskQueueResponse`): its fields 2 (`workflow_execution`) and 3
/// (`workflow_type`), found with prost's wire primitives and decoded with the published types;
/// the history after them may be cut off.
pub fn task_of_prefix(prefix: &[u8]) -> Option<(String, String)> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut buf = prefix;
    let (mut run_id, mut workflow_type) = (None, None);
    while run_id.is_none() || workflow_type.is_none() {
        let (field, wire_type) = decode_key(&mut buf).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let value = buf.get(..len)?;
                match field {
                    2 => run_id = Some(WorkflowExecution::decode(value).ok()?.run_id),
                    3 => workflow_type = Some(WorkflowType::decode(value).ok()?.name),
                    _ => {}
                }
                buf = &buf[len..];
            }
            WireType::SixtyFourBit => buf = buf.get(8..)?,
            WireType::ThirtyTwoBit => buf = buf.get(4..)?,
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    let (run_id, workflow_type) = (run_id?, workflow_type?);
    (is_run_id(&run_id) && !workflow_type.is_empty()).then_some((run_id, workflow_type))
}

/// A run id as the server makes them: a UUID's 36 characters.
fn is_run_id(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn task_event(
    message: &'static str,
    task: Option<(String, String)>,
) -> Result<EventBody, DecodeError> {
    let (run_id, workflow_type) = task.ok_or(DecodeError::Protobuf {
        message,
        error: "no run id and workflow type in its first bytes".into(),
    })?;
    Ok(EventBody::Task {
        run_id,
        workflow_type,
    })
}

/// A polled workflow task.
fn decode_polled_task(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    task_event("PollWorkflowTaskQueueResponse", task_of_prefix(bytes))
}

/// The next workflow task in a completed task's response (its field 1).
fn decode_returned_task(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let inner = first_field(bytes).map(|(task, _)| task);
    task_event(
        "RespondWorkflowTaskCompletedResponse",
        inner.and_then(task_of_prefix),
    )
}

/// The run id at the start of an activation's or a completion's bytes (both hold it as field
/// 1, and prost writes fields in field-number order), read with prost's own wire primitives
/// from a message's first chunk when the whole message was too long to copy.
pub fn run_id_of_prefix(prefix: &[u8]) -> Option<String> {
    let (id, whole) = first_field(prefix)?;
    let id = std::str::from_utf8(id).ok()?;
    (whole && !id.is_empty()).then(|| id.to_string())
}

/// The bytes of a message's first field when it is field 1 and length-delimited, and whether
/// all of them are in `prefix` (else the part that is).
fn first_field(prefix: &[u8]) -> Option<(&[u8], bool)> {
    let mut buf = prefix;
    let (field, wire_type) = prost::encoding::decode_key(&mut buf).ok()?;
    if field != 1 || wire_type != prost::encoding::WireType::LengthDelimited {
        return None;
    }
    let len = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
    Some(match buf.get(..len) {
        Some(value) => (value, true),
        None => (buf, false),
    })
}

/// A worker created: the record says nothing more (no struct is read).
fn decode_worker_created(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: WorkerEvent = read_record(bytes, kind::WORKER_START)?;
    Ok(EventBody::WorkerStart {
        worker: format!("{:#x}", e.worker),
        task_queue: None,
    })
}

/// A worker asked to shut down, where nothing names it: each call is one worker (by the time of
/// the call).
fn decode_worker_shutdown_call(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: WorkerEvent = read_record(bytes, kind::WORKER_SHUTDOWN)?;
    Ok(EventBody::WorkerShutdown {
        worker: format!("call@{}", e.header.ktime_ns),
        task_queue: None,
    })
}

/// A worker asked to shut down, by the address of its Python object.
fn decode_worker_shutdown(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: WorkerEvent = read_record(bytes, kind::WORKER_SHUTDOWN)?;
    Ok(EventBody::WorkerShutdown {
        worker: format!("{:#x}", e.worker),
        task_queue: None,
    })
}

fn protobuf(what: &'static str) -> impl Fn(prost::DecodeError) -> DecodeError {
    move |e| DecodeError::Protobuf {
        message: what,
        error: e.to_string(),
    }
}

fn nanos_of_duration(d: &prost_wkt_types::Duration) -> Nanos {
    Nanos::from(d.seconds) * 1_000_000_000 + Nanos::from(d.nanos)
}

fn nanos_of_timestamp(t: &prost_wkt_types::Timestamp) -> Nanos {
    Nanos::from(t.seconds) * 1_000_000_000 + Nanos::from(t.nanos)
}

fn decode_activation(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let activation = WorkflowActivation::decode(bytes).map_err(protobuf("WorkflowActivation"))?;
    use workflow_activation_job::Variant;
    // core sends an eviction as an activation of its own, with that one job.
    if let [job] = activation.jobs.as_slice()
        && let Some(Variant::RemoveFromCache(remove)) = &job.variant
    {
        return Ok(EventBody::Eviction {
            run_id: activation.run_id,
            reason: EvictionReason::from_raw(u32::try_from(remove.reason).unwrap_or(u32::MAX)),
        });
    }
    let jobs = activation
        .jobs
        .iter()
        .map(|job| match &job.variant {
            Some(Variant::InitializeWorkflow(_)) => JobKind::InitializeWorkflow,
            Some(Variant::QueryWorkflow(_)) => JobKind::QueryWorkflow,
            Some(Variant::RemoveFromCache(_)) => JobKind::RemoveFromCache,
            Some(other) => JobKind::from_variant(&variant_name(other)),
            None => JobKind::Other("None".into()),
        })
        .collect();
    let init = activation.jobs.iter().find_map(|job| match &job.variant {
        Some(Variant::InitializeWorkflow(init)) => Some(RunInit {
            workflow_type: init.workflow_type.clone(),
            start_time_unix_nanos: init.start_time.as_ref().map(nanos_of_timestamp),
            execution_timeout_nanos: init
                .workflow_execution_timeout
                .as_ref()
                .map(nanos_of_duration),
            run_timeout_nanos: init.workflow_run_timeout.as_ref().map(nanos_of_duration),
            execution_expiration_unix_nanos: init
                .workflow_execution_expiration_time
                .as_ref()
                .map(nanos_of_timestamp),
        }),
        _ => None,
    });
    Ok(EventBody::Activation {
        run_id: activation.run_id,
        workflow_type: init.as_ref().map(|i| i.workflow_type.clone()),
        replaying: activation.is_replaying,
        history_length: activation.history_length,
        job_count: activation.jobs.len() as u64,
        jobs,
        init,
    })
}

/// The variant's name as prost's `Debug` starts it (`SignalWorkflow(…)`).
fn variant_name(variant: &impl std::fmt::Debug) -> String {
    let text = format!("{variant:?}");
    text.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn decode_delimited_completion(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let completion = WorkflowActivationCompletion::decode_length_delimited(bytes)
        .map_err(protobuf("WorkflowActivationCompletion (length-delimited)"))?;
    completion_body(completion)
}

fn decode_completion(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let completion = WorkflowActivationCompletion::decode(bytes)
        .map_err(protobuf("WorkflowActivationCompletion"))?;
    completion_body(completion)
}

fn completion_body(completion: WorkflowActivationCompletion) -> Result<EventBody, DecodeError> {
    use workflow_activation_completion::Status;
    let (status, commands) = match &completion.status {
        Some(Status::Successful(success)) => {
            (CompletionStatus::Successful, success.commands.as_slice())
        }
        Some(Status::Failed(_)) => (CompletionStatus::Failed, &[][..]),
        None => (CompletionStatus::None, &[][..]),
    };
    let last = commands.last().and_then(|c| c.variant.as_ref());
    use workflow_command::Variant;
    let (terminal, timeout_failure) = match last {
        Some(Variant::CompleteWorkflowExecution(_)) => (Some(Terminal::Complete), false),
        Some(Variant::FailWorkflowExecution(fail)) => (
            Some(Terminal::Fail),
            fail.failure.as_ref().is_some_and(chain_has_timeout),
        ),
        Some(Variant::CancelWorkflowExecution(_)) => (Some(Terminal::Cancel), false),
        Some(Variant::ContinueAsNewWorkflowExecution(_)) => (Some(Terminal::ContinueAsNew), false),
        _ => (None, false),
    };
    Ok(EventBody::Completion {
        run_id: completion.run_id,
        status,
        command_count: commands.len() as u64,
        last_command: last.map(variant_name),
        terminal,
        timeout_failure,
    })
}

/// Whether a failure, or one in its `cause` chain, is a timeout.
fn chain_has_timeout(failure: &Failure) -> bool {
    let mut next = Some(failure);
    while let Some(failure) = next {
        if matches!(
            failure.failure_info,
            Some(FailureInfo::TimeoutFailureInfo(_))
        ) {
            return true;
        }
        next = failure.cause.as_deref();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_protos::protos::{
        coresdk::{
            workflow_activation::{InitializeWorkflow, RemoveFromCache, WorkflowActivationJob},
            workflow_commands::{
                CompleteWorkflowExecution, FailWorkflowExecution, StartTimer, WorkflowCommand,
            },
            workflow_completion::{Failure as TaskFailure, Success},
        },
        temporal::api::failure::v1::{ApplicationFailureInfo, TimeoutFailureInfo},
    };

    const RUN: &str = "0b3e6a4c-64b4-4a55-9d2e-0c4f1a2b3c4d";

    /// The message as the session hands it to a decoder: whole, reassembled from its chunks.
    fn whole(message: &impl Message) -> Vec<u8> {
        message.encode_to_vec()
    }

    fn activation(jobs: Vec<workflow_activation_job::Variant>, replaying: bool) -> Vec<u8> {
        whole(&WorkflowActivation {
            run_id: RUN.into(),
            is_replaying: replaying,
            history_length: 3,
            jobs: jobs
                .into_iter()
                .map(|v| WorkflowActivationJob { variant: Some(v) })
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn an_initializing_activation_carries_type_start_and_timeouts() {
        let init = InitializeWorkflow {
            workflow_type: "greet".into(),
            workflow_run_timeout: Some(prost_wkt_types::Duration {
                seconds: 2,
                nanos: 500,
            }),
            start_time: Some(prost_wkt_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 7,
            }),
            ..Default::default()
        };
        let bytes = activation(
            vec![workflow_activation_job::Variant::InitializeWorkflow(init)],
            false,
        );
        let body = decode_activation(&bytes, &TargetLayout::default()).expect("decodes");
        let EventBody::Activation {
            run_id,
            replaying,
            history_length,
            jobs,
            init: Some(init),
            ..
        } = body
        else {
            panic!("not an initializing activation: {body:?}");
        };
        assert_eq!(run_id, RUN);
        assert!(!replaying);
        assert_eq!(history_length, 3);
        assert_eq!(jobs, vec![JobKind::InitializeWorkflow]);
        assert_eq!(init.workflow_type, "greet");
        assert_eq!(init.run_timeout_nanos, Some(2_000_000_500));
        assert_eq!(init.execution_timeout_nanos, None);
        assert_eq!(init.start_time_unix_nanos, Some(1_700_000_000_000_000_007));
    }

    #[test]
    fn the_run_id_is_read_from_the_first_bytes_of_a_long_message() {
        let long = activation(
            vec![workflow_activation_job::Variant::InitializeWorkflow(
                InitializeWorkflow {
                    workflow_type: "big".into(),
                    identity: "x".repeat(100_000),
                    ..Default::default()
                },
            )],
            false,
        );
        assert_eq!(run_id_of_prefix(&long[..4096]).as_deref(), Some(RUN));
        let done = whole(&WorkflowActivationCompletion {
            run_id: RUN.into(),
            ..Default::default()
        });
        assert_eq!(run_id_of_prefix(&done[..10]), None, "cut inside the run id");
        assert_eq!(run_id_of_prefix(&done).as_deref(), Some(RUN));
        assert_eq!(run_id_of_prefix(&[0x10, 0x01]), None, "field 2 first");
    }

    fn poll_response(history_bytes: usize) -> Vec<u8> {
        use temporalio_protos::protos::temporal::api::{
            history::v1::History, workflowservice::v1::PollWorkflowTaskQueueResponse,
        };
        whole(&PollWorkflowTaskQueueResponse {
            task_token: vec![7; 117],
            workflow_execution: Some(WorkflowExecution {
                workflow_id: "wf-1".into(),
                run_id: RUN.into(),
            }),
            workflow_type: Some(WorkflowType {
                name: "SignalWorkflow".into(),
            }),
            previous_started_event_id: 3,
            started_event_id: 7,
            history: Some(History {
                events: vec![Default::default(); history_bytes / 2],
            }),
            ..Default::default()
        })
    }

    #[test]
    fn a_task_names_its_run_and_type_from_the_first_bytes_of_the_response() {
        let long = poll_response(100_000);
        assert!(long.len() > 4096);
        let expected = EventBody::Task {
            run_id: RUN.into(),
            workflow_type: "SignalWorkflow".into(),
        };
        let layout = TargetLayout::default();
        assert_eq!(
            decode_polled_task(&long[..4096], &layout).expect("a task"),
            expected
        );
        assert_eq!(
            decode_polled_task(&poll_response(0), &layout).expect("a task"),
            expected
        );
        // The same task inside a completed task's response (field 1).
        use temporalio_protos::protos::temporal::api::workflowservice::v1::RespondWorkflowTaskCompletedResponse;
        let returned = whole(&RespondWorkflowTaskCompletedResponse {
            workflow_task: Some(
                prost::Message::decode(poll_response(100_000).as_slice()).expect("decodes"),
            ),
            ..Default::default()
        });
        assert_eq!(
            decode_returned_task(&returned[..4096], &layout).expect("a task"),
            expected
        );
        // Cut inside the execution, or between it and the type, or not a task at all: an
        // error, never a guess.
        let type_at = long
            .windows(14)
            .position(|w| w == b"SignalWorkflow")
            .expect("the type is in the first bytes");
        assert!(decode_polled_task(&long[..130], &layout).is_err());
        assert!(decode_polled_task(&long[..type_at - 4], &layout).is_err());
        assert!(decode_polled_task(&long[..type_at + 14], &layout).is_ok());
        assert!(decode_polled_task(&whole(&activation(vec![], false)), &layout).is_err());
    }

    #[test]
    fn a_length_delimited_completion_decodes_and_its_prefix_names_the_run() {
        let bare = completion(vec![workflow_command::Variant::CompleteWorkflowExecution(
            CompleteWorkflowExecution::default(),
        )]);
        let message = WorkflowActivationCompletion::decode(bare.as_slice()).expect("decodes");
        let delimited = message.encode_length_delimited_to_vec();
        let layout = TargetLayout::default();
        assert_eq!(
            decode_delimited_completion(&delimited, &layout).expect("decodes"),
            decode_completion(&bare, &layout).expect("decodes")
        );
        // The TypeScript completion probe is declared length-delimited, and its decoder is this.
        let spec = TYPESCRIPT_PROBES
            .iter()
            .find(|p| p.name == "completion")
            .expect("a completion probe");
        assert_eq!(spec.framing, Framing::LengthDelimited);
        assert!((spec.decode)(&delimited, &layout).is_ok());
        assert!(
            (spec.decode)(&bare, &layout).is_err(),
            "bare bytes are not delimited"
        );
        // A cut message's run id, found after the length prefix.
        let long = WorkflowActivationCompletion {
            run_id: RUN.into(),
            status: Some(workflow_activation_completion::Status::Failed(
                TaskFailure {
                    failure: Some(Failure {
                        message: "x".repeat(100_000),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
        .encode_length_delimited_to_vec();
        let prefix = &long[..4096];
        assert_eq!(run_id_of_prefix(prefix), None, "the length comes first");
        let message = unframe(Framing::LengthDelimited, prefix).expect("a length");
        assert_eq!(run_id_of_prefix(message).as_deref(), Some(RUN));
        assert_eq!(unframe(Framing::Bare, prefix), Some(prefix));
    }

    #[test]
    fn an_eviction_activation_is_an_eviction_with_its_reason() {
        let bytes = activation(
            vec![workflow_activation_job::Variant::RemoveFromCache(
                RemoveFromCache {
                    message: "done".into(),
                    reason: 10,
                },
            )],
            false,
        );
        let body = decode_activation(&bytes, &TargetLayout::default()).expect("decodes");
        assert_eq!(
            body,
            EventBody::Eviction {
                run_id: RUN.into(),
                reason: EvictionReason::WorkflowExecutionEnding,
            }
        );
    }

    fn completion(commands: Vec<workflow_command::Variant>) -> Vec<u8> {
        whole(&WorkflowActivationCompletion {
            run_id: RUN.into(),
            status: Some(workflow_activation_completion::Status::Successful(
                Success {
                    commands: commands
                        .into_iter()
                        .map(|v| WorkflowCommand {
                            variant: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
    }

    #[test]
    fn a_completion_names_its_terminal_command() {
        let bytes = completion(vec![
            workflow_command::Variant::StartTimer(StartTimer::default()),
            workflow_command::Variant::CompleteWorkflowExecution(
                CompleteWorkflowExecution::default(),
            ),
        ]);
        let body = decode_completion(&bytes, &TargetLayout::default()).expect("decodes");
        assert_eq!(
            body,
            EventBody::Completion {
                run_id: RUN.into(),
                status: CompletionStatus::Successful,
                command_count: 2,
                last_command: Some("CompleteWorkflowExecution".into()),
                terminal: Some(Terminal::Complete),
                timeout_failure: false,
            }
        );
        let timer_only = completion(vec![workflow_command::Variant::StartTimer(
            StartTimer::default(),
        )]);
        let EventBody::Completion { terminal, .. } =
            decode_completion(&timer_only, &TargetLayout::default()).expect("decodes")
        else {
            panic!("not a completion");
        };
        assert_eq!(terminal, None);
    }

    fn failure(info: FailureInfo, cause: Option<Failure>) -> Failure {
        Failure {
            failure_info: Some(info),
            cause: cause.map(Box::new),
            ..Default::default()
        }
    }

    #[test]
    fn a_failure_is_a_timeout_when_its_cause_chain_holds_one() {
        let timeout = failure(
            FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo::default()),
            None,
        );
        let app = FailureInfo::ApplicationFailureInfo(ApplicationFailureInfo::default());
        for (failure, is_timeout) in [
            (failure(app.clone(), Some(timeout)), true),
            (failure(app, None), false),
        ] {
            let bytes = completion(vec![workflow_command::Variant::FailWorkflowExecution(
                FailWorkflowExecution {
                    failure: Some(failure),
                },
            )]);
            let EventBody::Completion {
                terminal,
                timeout_failure,
                ..
            } = decode_completion(&bytes, &TargetLayout::default()).expect("decodes")
            else {
                panic!("not a completion");
            };
            assert_eq!(terminal, Some(Terminal::Fail));
            assert_eq!(timeout_failure, is_timeout);
        }
    }

    #[test]
    fn a_failed_task_is_no_end_and_garbage_is_an_error() {
        let failed = whole(&WorkflowActivationCompletion {
            run_id: RUN.into(),
            status: Some(workflow_activation_completion::Status::Failed(
                TaskFailure::default(),
            )),
            ..Default::default()
        });
        let EventBody::Completion {
            status, terminal, ..
        } = decode_completion(&failed, &TargetLayout::default()).expect("decodes")
        else {
            panic!("not a completion");
        };
        assert_eq!((status, terminal), (CompletionStatus::Failed, None));
        assert!(matches!(
            decode_completion(&[0xff, 0xff, 0xff], &TargetLayout::default()),
            Err(DecodeError::Protobuf { .. })
        ));
    }
}
