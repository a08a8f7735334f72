//! What to attach where: the probe table (data), the plan for one binary (pure), and attaching
//! that plan with aya (the only code here that talks to the kernel).

use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TracePoint, UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeAttachPoint,
        uprobe::UProbeScope,
    },
};
use observer_common::{Cookie, Layout, counter, program};
use serde::Serialize;

use crate::{
    arguments::Params,
    symbols::{FunctionSymbol, SymbolIndex},
};

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

/// A probe, the point chosen for this binary, every function it attaches to there, and the
/// argument registers of its inputs.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedProbe {
    pub spec: ProbeSpec,
    pub point: ProbePoint,
    pub functions: Vec<FunctionSymbol>,
    /// Argument register (0 = rdi) of each input.
    pub registers: [u8; 2],
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
    #[error(
        "cannot tell where `{function}` takes its {input}: {why}. Build the worker with debug \
         info for sdk-core (see README, \"Builds\"), or add this build to the layout table"
    )]
    Registers {
        function: &'static str,
        input: String,
        why: String,
    },
}

/// A probe point chosen for this binary, before its registers are known.
#[derive(Clone, Debug)]
pub struct Choice {
    pub spec: ProbeSpec,
    pub point: ProbePoint,
    pub functions: Vec<FunctionSymbol>,
}

/// Picks, for each probe, the first point this binary has. Optional probes without any point
/// are left out; a required one refuses the binary.
pub fn choose(
    symbols: &SymbolIndex,
    sdk_core_version: Option<&str>,
) -> Result<Vec<Choice>, PlanError> {
    if symbols.count_with_prefix("temporalio_sdk_core::") == 0 {
        return Err(PlanError::NotAWorker {
            symbols: symbols.len(),
        });
    }
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    for spec in PROBES {
        let found = spec.points.iter().find_map(|point| {
            let functions = symbols.find(point.function);
            (!functions.is_empty()).then(|| Choice {
                spec: *spec,
                point: *point,
                functions: functions.to_vec(),
            })
        });
        match found {
            Some(choice) => chosen.push(choice),
            None if spec.required => missing.push(
                spec.points
                    .iter()
                    .map(|p| p.function)
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(PlanError::MissingRequired {
            version: sdk_core_version
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            missing: missing.join("; "),
        });
    }
    Ok(chosen)
}

/// The argument register of each input of a point, from its parameters' entry locations.
pub fn registers(point: &ProbePoint, params: &Params) -> Result<[u8; 2], PlanError> {
    let one = |input: Input| -> Result<u8, PlanError> {
        let fail = |why: String| PlanError::Registers {
            function: point.function,
            input: match input {
                Input::ReturnSlot => "return slot".to_string(),
                Input::Address(name) | Input::Value(name) => format!("parameter `{name}`"),
                Input::None => String::new(),
            },
            why,
        };
        match input {
            Input::None => Ok(0),
            Input::Address(name) => params
                .get(name)
                .map(|at| at.register)
                .ok_or_else(|| fail("it is not in a register at entry".into())),
            Input::Value(name) => match params.get(name) {
                Some(at) if !at.indirect => Ok(at.register),
                Some(_) => Err(fail("it is passed by reference".into())),
                None => Err(fail("it is not in a register at entry".into())),
            },
            // rustc passes a large return value's slot as a hidden first argument.
            Input::ReturnSlot => match params.values().find(|at| at.register == 0) {
                None => Ok(0),
                Some(_) => Err(fail("a parameter takes the first register".into())),
            },
        }
    };
    Ok([one(point.inputs[0])?, one(point.inputs[1])?])
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
            let cookie = Cookie {
                probe_id: probe.spec.id,
                arg_a: probe.registers[0],
                arg_b: probe.registers[1],
            };
            let programs: &[&'static str] = match &probe.point.hook {
                Hook::Entry { program } => &[program],
                Hook::EntryAndReturn { entry, exit } => &[entry, exit],
            };
            for &name in programs {
                let program = load_program(&mut ebpf, name)?;
                for function in &probe.functions {
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
        read_counters(&self.ebpf)
    }
}

/// The `COUNTERS` map of one loaded object, summed over CPUs.
fn read_counters(ebpf: &Ebpf) -> Result<KernelCounters, AttachError> {
    let map = ebpf
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub read_faults: u64,
}

/// The kernel's news of processes for `watch`: every exec and every exit on the host, from the
/// `sched` tracepoints, in their own ring buffer.
#[derive(Debug)]
pub struct ProcessWatch {
    ebpf: Ebpf,
}

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (no /sys/kernel/tracing/events) and mounting it failed: {0}. \
         Mount it with `mount -t tracefs nodev /sys/kernel/tracing` as root, or, in Kubernetes, \
         mount the host's /sys/kernel/tracing into the pod (see deploy/kubernetes/daemonset.yaml)"
    )]
    Mount(std::io::Error),
}

/// Tracepoints are found through tracefs. Mounted on most hosts; where it is not (a fresh VM,
/// a container), mount it, which needs CAP_SYS_ADMIN.
pub fn ensure_tracefs() -> Result<(), TracefsError> {
    let mounted = |root: &str| Path::new(root).join("events/sched").is_dir();
    if mounted("/sys/kernel/tracing") || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    log::info!("tracefs is not mounted; mounting it at /sys/kernel/tracing");
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl ProcessWatch {
    pub fn attach() -> Result<Self, AttachError> {
        if EBPF_OBJECT.is_empty() {
            return Err(AttachError::NoEbpfObject);
        }
        // The per-worker ring buffer is unused here: keep it at one page.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", 4096)
            .load(EBPF_OBJECT)?;
        for (name, event) in [
            (program::PROCESS_EXEC, "sched_process_exec"),
            (program::PROCESS_EXIT, "sched_process_exit"),
        ] {
            let program: &mut TracePoint = program_of(&mut ebpf, name)?;
            program.load().map_err(|e| load_error(name, e))?;
            program
                .attach("sched", event)
                .map_err(|source| AttachError::Attach {
                    probe: name,
                    function: format!("tracepoint sched/{event}"),
                    offset: 0,
                    source: Box::new(source),
                })?;
        }
        Ok(Self { ebpf })
    }

    /// Process records the kernel could not queue (the ring buffer was full).
    pub fn lost(&self) -> Result<u64, AttachError> {
        Ok(read_counters(&self.ebpf)?.events_lost)
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map("PROCESS_EVENTS")
            .ok_or(AttachError::MissingMap("PROCESS_EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| AttachError::Map {
            name: "PROCESS_EVENTS",
            source,
        })
    }
}

/// The program of this name, loaded into the kernel (once).
fn load_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, AttachError> {
    let program: &mut UProbe = program_of(ebpf, name)?;
    if program.fd().is_err() {
        program.load().map_err(|e| load_error(name, e))?;
    }
    Ok(program)
}

/// The program of this name, as its kind.
fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, AttachError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(|source| AttachError::Program {
            program: name,
            source: Box::new(source),
        })
}

/// A failed load, with the verifier's last lines when it was the verifier that refused.
fn load_error(name: &'static str, error: ProgramError) -> AttachError {
    match error {
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
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arguments::ParamAt;

    #[test]
    fn probe_ids_are_unique_and_programs_known() {
        let mut ids: Vec<u16> = PROBES.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), PROBES.len());
        let programs = [
            program::COMPLETION,
            program::EVICTION,
            program::WORKER_SHUTDOWN,
            program::WORKER_START,
            program::WORKER_CREATED,
            program::TASK,
            program::ACTIVATION_SLOT,
            program::ACTIVATION_RETURN,
        ];
        for point in PROBES.iter().flat_map(|p| p.points) {
            match point.hook {
                Hook::Entry { program } => assert!(programs.contains(&program)),
                Hook::EntryAndReturn { entry, exit } => {
                    assert!(programs.contains(&entry) && programs.contains(&exit))
                }
            }
        }
    }

    #[test]
    fn a_binary_without_sdk_core_is_not_a_worker() {
        let err = choose(&SymbolIndex::default(), None).expect_err("empty");
        assert!(matches!(err, PlanError::NotAWorker { .. }));
    }

    fn at(register: u8, indirect: bool) -> ParamAt {
        ParamAt { register, indirect }
    }

    fn point(inputs: [Input; 2]) -> ProbePoint {
        entry("f", program::COMPLETION, inputs)
    }

    #[test]
    fn registers_come_from_the_named_parameters() {
        let params: Params = [
            ("run_id".to_string(), at(1, true)),
            ("reason".to_string(), at(3, false)),
        ]
        .into();
        let p = point([Input::Address("run_id"), Input::Value("reason")]);
        assert_eq!(registers(&p, &params).expect("both found"), [1, 3]);
    }

    #[test]
    fn a_value_passed_by_reference_or_a_missing_parameter_is_refused() {
        let params: Params = [("reason".to_string(), at(3, true))].into();
        let value = point([Input::Value("reason"), Input::None]);
        assert!(registers(&value, &params).is_err());
        let missing = point([Input::Address("completion"), Input::None]);
        let err = registers(&missing, &params).expect_err("missing");
        assert!(err.to_string().contains("parameter `completion`"), "{err}");
    }

    #[test]
    fn the_return_slot_is_the_first_register_unless_a_parameter_is_there() {
        let slot = point([Input::ReturnSlot, Input::None]);
        let self_in_rsi: Params = [("self".to_string(), at(1, false))].into();
        assert_eq!(registers(&slot, &self_in_rsi).expect("rdi free"), [0, 0]);
        let self_in_rdi: Params = [("self".to_string(), at(0, false))].into();
        assert!(registers(&slot, &self_in_rdi).is_err());
    }

    #[test]
    fn verifier_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail("a", 5), "a");
    }
}
