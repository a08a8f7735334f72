//! What to attach where: the probe table (data), the plan for one binary (pure), and attaching
//! that plan with aya (the only code here that talks to the kernel).

use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        ProgramError, UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeAttachPoint,
        uprobe::UProbeScope,
    },
};
use observer_common::{Cookie, Layout, counter, program};
use serde::Serialize;

use crate::symbols::{FunctionSymbol, SymbolIndex};

/// One probe point: a function of sdk-core, the eBPF program that reads it, and where its inputs
/// are. Argument indices count the integer argument registers (0 = rdi on x86-64); a function
/// that returns a large value takes its return slot in the first one.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbeSpec {
    pub id: u16,
    /// Short name shown in events and logs.
    pub name: &'static str,
    /// Normalized demangled path of the function (see `symbols::normalize`).
    pub function: &'static str,
    /// eBPF program name (`observer_common::program`).
    pub program: &'static str,
    pub arg_a: u8,
    pub arg_b: u8,
    /// A missing required probe means this binary cannot be observed correctly.
    pub required: bool,
    pub yields: &'static str,
}

/// The probe table for sdk-core 0.10 as linked by the Rust SDK.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        id: 1,
        name: "activation",
        function: "temporalio_sdk_core::worker::workflow::prepare_to_ship_activation",
        program: program::ACTIVATION,
        arg_a: 0, // &mut WorkflowActivation
        arg_b: 0,
        required: true,
        yields: "each activation: run id, jobs, replay flag, history length; for a run's first \
                 activation its workflow type, start time and timeouts",
    },
    ProbeSpec {
        id: 2,
        name: "completion",
        function: "temporalio_sdk_core::worker::workflow::validate_completion",
        program: program::COMPLETION,
        arg_a: 1, // &WorkflowActivationCompletion (arg 0 is the return slot)
        arg_b: 0,
        required: true,
        yields: "each completion: run id, status, its last (terminal) command, and whether a \
                 failure's cause chain holds a timeout",
    },
    ProbeSpec {
        id: 3,
        name: "eviction",
        function: "temporalio_protos::protos::coresdk::workflow_activation::sdk_helpers::create_evict_activation",
        program: program::EVICTION,
        arg_a: 1, // &String run id (arg 0 is the return slot)
        arg_b: 3, // EvictionReason
        required: true,
        yields: "each eviction from the workflow cache: run id and reason",
    },
    ProbeSpec {
        id: 4,
        name: "worker_shutdown",
        function: "temporalio_sdk_core::worker::Worker::initiate_shutdown",
        program: program::WORKER_SHUTDOWN,
        arg_a: 0, // &Worker
        arg_b: 0,
        required: false,
        yields: "a worker asked to shut down, and its task queue",
    },
    ProbeSpec {
        id: 5,
        name: "worker_start",
        function: "temporalio_sdk_core::worker::Worker::mark_started",
        program: program::WORKER_START,
        arg_a: 0, // &Worker, the same address initiate_shutdown gets
        arg_b: 0,
        required: false,
        yields: "a worker's first poll (it is running), and its task queue",
    },
    ProbeSpec {
        id: 6,
        name: "task",
        function: "temporalio_sdk_core::worker::workflow::workflow_stream::WFStream::instantiate_or_update",
        program: program::TASK,
        arg_a: 2, // PermittedWFT, passed by reference (arg 0 is the return slot, arg 1 &mut self)
        arg_b: 0,
        required: false,
        yields: "each workflow task's run id and workflow type: names the runs whose start was not seen",
    },
];

pub fn spec_by_id(id: u32) -> Option<&'static ProbeSpec> {
    PROBES.iter().find(|p| u32::from(p.id) == id)
}

/// A probe and every function in the binary it attaches to.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedProbe {
    pub spec: ProbeSpec,
    pub functions: Vec<FunctionSymbol>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "this is not a Temporal Rust worker: no sdk-core function is in its symbol table \
         ({symbols} symbols read)"
    )]
    NotAWorker { symbols: usize },
    #[error(
        "this binary links sdk-core{version} but lacks functions the observer needs: {missing}. \
         This sdk-core version or build is not supported yet"
    )]
    MissingRequired { version: String, missing: String },
}

/// Matches the probe table against a binary's symbols.
pub fn plan(
    symbols: &SymbolIndex,
    sdk_core_version: Option<&str>,
) -> Result<Vec<PlannedProbe>, PlanError> {
    if symbols.count_with_prefix("temporalio_sdk_core::") == 0 {
        return Err(PlanError::NotAWorker {
            symbols: symbols.len(),
        });
    }
    let planned: Vec<PlannedProbe> = PROBES
        .iter()
        .map(|spec| PlannedProbe {
            spec: *spec,
            functions: symbols.find(spec.function).to_vec(),
        })
        .collect();
    let missing: Vec<&str> = planned
        .iter()
        .filter(|p| p.spec.required && p.functions.is_empty())
        .map(|p| p.spec.function)
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::MissingRequired {
            version: sdk_core_version
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            missing: missing.join(", "),
        });
    }
    Ok(planned)
}

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "this binary was built without its eBPF programs (OBSERVER_EBPF_STUB=1); rebuild with the \
         BPF toolchain (`cargo xtask setup`)"
    )]
    NoEbpfObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the kernel verifier rejected program `{program}`: {io_error}\nverifier log (last lines):\n{log_tail}"
    )]
    Verifier {
        program: &'static str,
        io_error: std::io::Error,
        log_tail: String,
    },
    #[error("program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching probe `{probe}` to {function} at file offset {offset:#x}: {source}")]
    Attach {
        probe: &'static str,
        function: String,
        offset: u64,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program `{0}` is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("PID 0 cannot be observed")]
    BadPid,
}

/// Settings of the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct KernelSettings {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Wake user space once this many bytes wait; otherwise it drains on a timer.
    pub wakeup_bytes: u64,
}

/// Loaded programs with their probes attached. Dropping it detaches everything.
#[derive(Debug)]
pub struct Attachment {
    ebpf: Ebpf,
    pub attached: usize,
}

impl Attachment {
    /// Loads the programs and attaches every planned probe to one process.
    pub fn attach(
        exe: &Path,
        pid: u32,
        planned: &[PlannedProbe],
        layout: &Layout,
        settings: KernelSettings,
    ) -> Result<Self, AttachError> {
        if EBPF_OBJECT.is_empty() {
            return Err(AttachError::NoEbpfObject);
        }
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(AttachError::BadPid)?);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", settings.ring_buffer_bytes)
            .override_global("WAKEUP_BYTES", &settings.wakeup_bytes, true)
            .load(EBPF_OBJECT)?;
        {
            let map = ebpf
                .map_mut("LAYOUTS")
                .ok_or(AttachError::MissingMap("LAYOUTS"))?;
            let mut layouts: BpfHashMap<_, u32, Layout> =
                BpfHashMap::try_from(map).map_err(|source| AttachError::Map {
                    name: "LAYOUTS",
                    source,
                })?;
            layouts
                .insert(pid, layout, 0)
                .map_err(|source| AttachError::Map {
                    name: "LAYOUTS",
                    source,
                })?;
        }
        let mut attached = 0;
        for probe in planned {
            let name = probe.spec.program;
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(AttachError::MissingProgram(name))?
                .try_into()
                .map_err(|source| AttachError::Program {
                    program: name,
                    source: Box::new(source),
                })?;
            if program.fd().is_err() {
                program.load().map_err(|source| match source {
                    ProgramError::LoadError {
                        io_error,
                        verifier_log,
                    } => AttachError::Verifier {
                        program: name,
                        io_error,
                        log_tail: tail(&verifier_log.to_string(), 20),
                    },
                    source => AttachError::Program {
                        program: name,
                        source: Box::new(source),
                    },
                })?;
            }
            for function in &probe.functions {
                let cookie = Cookie {
                    probe_id: probe.spec.id,
                    arg_a: probe.spec.arg_a,
                    arg_b: probe.spec.arg_b,
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(function.file_offset),
                    cookie: Some(cookie.encode()),
                };
                program
                    .attach(point, exe, scope)
                    .map_err(|source| AttachError::Attach {
                        probe: probe.spec.name,
                        function: function.path.clone(),
                        offset: function.file_offset,
                        source: Box::new(source),
                    })?;
                attached += 1;
            }
        }
        Ok(Self { ebpf, attached })
    }

    /// Takes the ring buffer to read events from.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(AttachError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| AttachError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Kernel-side counters, summed over CPUs: (events lost, read faults).
    pub fn counters(&self) -> Result<KernelCounters, AttachError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(AttachError::MissingMap("COUNTERS"))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| AttachError::Map {
                name: "COUNTERS",
                source,
            })?;
        let sum = |index: u32| -> Result<u64, AttachError> {
            let values = counters.get(&index, 0).map_err(|source| AttachError::Map {
                name: "COUNTERS",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            events_lost: sum(counter::EVENTS_LOST)?,
            read_faults: sum(counter::READ_FAULTS)?,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub read_faults: u64,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_are_unique_and_programs_known() {
        let mut ids: Vec<u16> = PROBES.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), PROBES.len());
        let programs = [
            program::ACTIVATION,
            program::COMPLETION,
            program::EVICTION,
            program::WORKER_SHUTDOWN,
            program::WORKER_START,
            program::TASK,
        ];
        assert!(PROBES.iter().all(|p| programs.contains(&p.program)));
    }

    #[test]
    fn a_binary_without_sdk_core_is_not_a_worker() {
        let err = plan(&SymbolIndex::default(), None).expect_err("empty");
        assert!(matches!(err, PlanError::NotAWorker { .. }));
    }

    #[test]
    fn verifier_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail("a", 5), "a");
    }
}
