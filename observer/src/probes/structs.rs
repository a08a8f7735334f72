//! The probe family that reads sdk-core's Rust structs in place, with the target's layout: how
//! the Rust SDK's workers are observed. Each probe's programs copy raw fields (strings, enum
//! tags, option windows) into its record; its decoder here interprets them with the layout.

use observer_common::{
    ActivationEvent, CompletionEvent, EvictionEvent, MAX_JOBS, WorkerEvent, kind, program,
};

use super::{Framing, Hook, Input, Lifetime, ProbePoint, ProbeSpec};
use crate::{
    events::{
        CompletionStatus, DecodeError, EventBody, EvictionReason, JobKind, RunInit, Terminal,
        duration_nanos, read_record, text,
    },
    layout::TargetLayout,
};

const fn entry(function: &'static str, program: &'static str, inputs: [Input; 2]) -> ProbePoint {
    ProbePoint {
        function,
        via: None,
        hook: Hook::Entry { program },
        inputs,
        caveat: None,
        count_existing_workers: false,
    }
}

/// The probe table for sdk-core 0.10 as linked by the Rust SDK.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        id: 1,
        name: "activation",
        // The function that builds every activation survives in every build, LTO too. Read at
        // its entry, from the machines it builds the activation from: one hit, where the built
        // activation (its return value) took an entry and a return, and the machines also name
        // the run's workflow type, so a run from before the attach is named by its next
        // activation without a probe on every workflow task. (`prepare_to_ship_activation` is
        // inlined under LTO and knows no workflow type.)
        points: &[entry(
            "temporalio_sdk_core::worker::workflow::machines::workflow_machines::WorkflowMachines::get_wf_activation",
            program::ACTIVATION,
            [Input::Address("self"), Input::None],
        )],
        required: true,
        yields: "each activation: run id, workflow type, jobs, replay flag, history length; for \
                 a run's first activation its start time and timeouts",
        record: kind::ACTIVATION,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_activation,
    },
    ProbeSpec {
        id: 2,
        name: "completion",
        points: &[entry(
            "temporalio_sdk_core::worker::workflow::validate_completion",
            program::COMPLETION,
            [Input::Address("completion"), Input::None],
        )],
        required: true,
        yields: "each completion: run id, status, its last (terminal) command, and whether a \
                 failure's cause chain holds a timeout",
        record: kind::COMPLETION,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_completion,
    },
    ProbeSpec {
        id: 3,
        name: "eviction",
        points: &[
            entry(
                "temporalio_protos::protos::coresdk::workflow_activation::sdk_helpers::create_evict_activation",
                program::EVICTION,
                [Input::Address("run_id"), Input::Value("reason")],
            ),
            // sdk-core 0.11 removed `create_evict_activation` (and LTO may inline it): every
            // eviction is first requested here, with its run id and reason.
            ProbePoint {
                function: "temporalio_sdk_core::worker::workflow::managed_run::ManagedRun::request_eviction",
                via: None,
                hook: Hook::Entry {
                    program: program::EVICTION_REQUEST,
                },
                inputs: [Input::Address("info"), Input::None],
                caveat: Some(
                    "evictions are read as core is asked for them (`create_evict_activation` is \
                     not in this binary): a run asked to leave the cache again before it left is \
                     seen once per request",
                ),
                count_existing_workers: false,
            },
        ],
        required: true,
        yields: "each eviction from the workflow cache: run id and reason",
        record: kind::EVICTION,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_eviction,
    },
    ProbeSpec {
        id: 4,
        name: "worker_shutdown",
        points: &[entry(
            "temporalio_sdk_core::worker::Worker::initiate_shutdown",
            program::WORKER_SHUTDOWN,
            [Input::Address("self"), Input::None],
        )],
        required: false,
        yields: "a worker asked to shut down, and its task queue",
        record: kind::WORKER_SHUTDOWN,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_worker_shutdown,
    },
    ProbeSpec {
        id: 5,
        name: "worker_start",
        // Once per worker, in every build (LTO too).
        points: &[ProbePoint {
            function: "temporalio_sdk_core::worker::Worker::new_with_pollers",
            via: None,
            hook: Hook::Entry {
                program: program::WORKER_CREATED,
            },
            inputs: [Input::Address("config"), Input::None],
            caveat: Some(
                "a worker counts as running from its creation; where `mark_started` is inlined \
                 (LTO), the workers that already run when the observer attaches are counted from \
                 their workflow-processing threads, without their task queues",
            ),
            count_existing_workers: true,
        }],
        required: false,
        yields: "a worker created, and its task queue",
        record: kind::WORKER_START,
        framing: Framing::Bare,
        lifetime: Lifetime::Session,
        decode: decode_worker_start,
    },
    ProbeSpec {
        id: 7,
        name: "worker_running",
        // Every poll calls it: attached only until the workers running at attach are named.
        points: &[entry(
            "temporalio_sdk_core::worker::Worker::mark_started",
            program::WORKER_START,
            [Input::Address("self"), Input::None],
        )],
        required: false,
        yields: "the workers already running when the observer attached, each with its task \
                 queue at its next poll; detached once every one is named",
        record: kind::WORKER_START,
        framing: Framing::Bare,
        lifetime: Lifetime::UntilRunningWorkersNamed,
        decode: decode_worker_start,
    },
];

fn decode_activation(bytes: &[u8], layout: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: ActivationEvent = read_record(bytes, kind::ACTIVATION)?;
    let shown = (e.job_count as usize).min(MAX_JOBS);
    let jobs: Vec<JobKind> = e.job_tags[..shown]
        .iter()
        .map(|tag| match layout.job.name_of(*tag) {
            Some(name) => JobKind::from_variant(name),
            None => JobKind::Other(format!("tag:{tag}")),
        })
        .collect();
    let workflow_type = text(&e.workflow_type);
    let init = (e.has_init != 0).then(|| RunInit {
        workflow_type: workflow_type.clone(),
        execution_timeout_nanos: layout.duration.decode(&e.init_times[0]).map(duration_nanos),
        run_timeout_nanos: layout.duration.decode(&e.init_times[1]).map(duration_nanos),
        execution_expiration_unix_nanos: layout
            .timestamp
            .decode(&e.init_times[2])
            .map(duration_nanos),
        start_time_unix_nanos: layout
            .timestamp
            .decode(&e.init_times[3])
            .map(duration_nanos),
    });
    // Core calls a query-only activation replaying too (queries always come alone, and only
    // the first jobs' tags are copied).
    let all_queries = !jobs.is_empty() && jobs.iter().all(JobKind::is_query);
    Ok(EventBody::Activation {
        run_id: text(&e.run_id),
        workflow_type: Some(workflow_type),
        replaying: e.is_replaying != 0 || all_queries,
        history_length: e.history_length,
        job_count: e.job_count,
        jobs,
        init,
    })
}

fn decode_completion(bytes: &[u8], layout: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: CompletionEvent = read_record(bytes, kind::COMPLETION)?;
    let last_command = (e.successful != 0 && e.command_count > 0).then(|| {
        layout
            .command
            .name_of(e.last_command_tag)
            .unwrap_or("Unknown")
            .to_string()
    });
    Ok(EventBody::Completion {
        run_id: text(&e.run_id),
        status: CompletionStatus::from_variant(layout.completion_status.name_of(e.status_tag)),
        command_count: e.command_count,
        terminal: last_command.as_deref().and_then(Terminal::from_command),
        last_command,
        timeout_failure: e.timeout_failure != 0,
    })
}

fn decode_eviction(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let e: EvictionEvent = read_record(bytes, kind::EVICTION)?;
    Ok(EventBody::Eviction {
        run_id: text(&e.run_id),
        reason: EvictionReason::from_raw(e.reason),
    })
}

/// A worker record: its address (its identity within the process) and task queue.
fn worker(bytes: &[u8], record: u32) -> Result<(String, String), DecodeError> {
    let e: WorkerEvent = read_record(bytes, record)?;
    Ok((format!("{:#x}", e.worker), text(&e.task_queue)))
}

fn decode_worker_start(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let (worker, task_queue) = worker(bytes, kind::WORKER_START)?;
    Ok(EventBody::WorkerStart {
        worker,
        task_queue: Some(task_queue),
    })
}

fn decode_worker_shutdown(bytes: &[u8], _: &TargetLayout) -> Result<EventBody, DecodeError> {
    let (worker, task_queue) = worker(bytes, kind::WORKER_SHUTDOWN)?;
    Ok(EventBody::WorkerShutdown {
        worker,
        task_queue: Some(task_queue),
    })
}
