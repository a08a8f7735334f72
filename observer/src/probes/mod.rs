//! The probe table: for each probe, what it yields and the sdk-core functions it can attach to,
//! best first, with the inputs it reads there. Data only; [`crate::plan`] picks the points one
//! binary has and [`crate::kernel`] attaches them.

use observer_common::program;
use serde::Serialize;

/// What a probe reads at its point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Nothing (the second input of a one-input probe).
    None,
    /// The address of the function's parameter of this name: a reference, or a by-value struct
    /// that the caller passes by reference.
    Address(&'static str),
    /// The value of the function's (integer) parameter of this name.
    Value(&'static str),
    /// The slot the function returns its (large) value into; read when it returns.
    ReturnSlot,
}

/// How a point is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// A uprobe at the function's first instruction running this program.
    Entry { program: &'static str },
    /// A uprobe at entry that keeps the return slot per thread, and a uretprobe that reads what
    /// the function wrote into it.
    EntryAndReturn {
        entry: &'static str,
        exit: &'static str,
    },
}

/// One place a probe can attach: a function of sdk-core and where its inputs are.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbePoint {
    /// Normalized demangled path of the function (see `symbols::normalize`).
    pub function: &'static str,
    pub hook: Hook,
    pub inputs: [Input; 2],
    /// What this point misses compared with the first choice, if anything.
    pub caveat: Option<&'static str>,
    /// The point fires only when a worker is created, so the workers that already run when the
    /// observer attaches are counted from their `workflow-processing` threads instead.
    pub count_existing_workers: bool,
}

/// One probe: what it yields, and the points it can attach to, best first. Release builds keep
/// every first choice; LTO inlines some away, and the next point that the binary has is used.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbeSpec {
    pub id: u16,
    /// Short name shown in events and logs.
    pub name: &'static str,
    pub points: &'static [ProbePoint],
    /// A missing required probe means this binary cannot be observed correctly.
    pub required: bool,
    pub yields: &'static str,
}

const fn entry(function: &'static str, program: &'static str, inputs: [Input; 2]) -> ProbePoint {
    ProbePoint {
        function,
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
        // `prepare_to_ship_activation` sees the same activations, but it is inlined under LTO
        // and its DWARF does not say where its argument is at entry (it is spilled at once).
        // The function that builds every activation survives in every build.
        points: &[ProbePoint {
            function: "temporalio_sdk_core::worker::workflow::machines::workflow_machines::WorkflowMachines::get_wf_activation",
            hook: Hook::EntryAndReturn {
                entry: program::ACTIVATION_SLOT,
                exit: program::ACTIVATION_RETURN,
            },
            inputs: [Input::ReturnSlot, Input::None],
            caveat: None,
            count_existing_workers: false,
        }],
        required: true,
        yields: "each activation: run id, jobs, replay flag, history length; for a run's first \
                 activation its workflow type, start time and timeouts",
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
    },
    ProbeSpec {
        id: 3,
        name: "eviction",
        points: &[entry(
            "temporalio_protos::protos::coresdk::workflow_activation::sdk_helpers::create_evict_activation",
            program::EVICTION,
            [Input::Address("run_id"), Input::Value("reason")],
        )],
        required: true,
        yields: "each eviction from the workflow cache: run id and reason",
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
    },
    ProbeSpec {
        id: 5,
        name: "worker_start",
        points: &[
            entry(
                "temporalio_sdk_core::worker::Worker::mark_started",
                program::WORKER_START,
                [Input::Address("self"), Input::None],
            ),
            // `mark_started` runs on every poll but is inlined under LTO; creation is not.
            ProbePoint {
                function: "temporalio_sdk_core::worker::Worker::new_with_pollers",
                hook: Hook::Entry {
                    program: program::WORKER_CREATED,
                },
                inputs: [Input::Address("config"), Input::None],
                caveat: Some(
                    "a worker counts as running from its creation; workers that already run when \
                     the observer attaches are counted from their workflow-processing threads",
                ),
                count_existing_workers: true,
            },
        ],
        required: false,
        yields: "a worker running (its first poll, or its creation), and its task queue",
    },
    ProbeSpec {
        id: 6,
        name: "task",
        points: &[entry(
            "temporalio_sdk_core::worker::workflow::workflow_stream::WFStream::instantiate_or_update",
            program::TASK,
            [Input::Address("pwft"), Input::None],
        )],
        required: false,
        yields: "each workflow task's run id and workflow type: names the runs whose start was not seen",
    },
];

pub fn spec_by_id(id: u32) -> Option<&'static ProbeSpec> {
    PROBES.iter().find(|p| u32::from(p.id) == id)
}

/// Every function any probe point names.
pub fn probe_functions() -> impl Iterator<Item = &'static str> {
    PROBES
        .iter()
        .flat_map(|spec| spec.points.iter().map(|point| point.function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_are_unique() {
        let mut ids: Vec<u16> = PROBES.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), PROBES.len());
    }
}
