//! Everything that talks to the kernel: loading the eBPF object, attaching a plan's probes to one
//! process, the ring buffers and counters, and for `watch` the process tracepoints and tracefs.
//! The only module that calls aya.

use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TracePoint, UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeAttachPoint,
        uprobe::UProbeLink, uprobe::UProbeScope,
    },
};
use observer_common::{Cookie, Layout, MAX_CANDIDATES, counter, map, program};
use serde::Serialize;

use crate::{plan::PlannedProbe, symbols::FunctionSymbol};

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
    #[error(
        "the plan has no `{callee}` of the process to hook (the plan was made for a file, not a \
         process)"
    )]
    NoCallee { callee: &'static str },
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
    #[error("the probe plan is inconsistent: {0}")]
    Plan(String),
}

/// Settings of the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct KernelSettings {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Wake user space once this many bytes wait; otherwise it drains on a timer.
    pub wakeup_bytes: u64,
    /// The most chunks one encoded message may take; a longer one is reported truncated.
    pub message_chunks: u32,
}

/// One candidate layout to attach with: the kernel layout (for the programs that read structs)
/// and the argument registers of each planned probe under it.
#[derive(Clone, Copy, Debug)]
pub struct AttachCandidate<'a> {
    pub layout: Option<&'a Layout>,
    pub registers: &'a [[u8; 2]],
}

/// One attached point.
#[derive(Debug)]
struct Link {
    candidate: u8,
    /// Its probe's index in the plan.
    probe: usize,
    program: &'static str,
    id: aya::programs::uprobe::UProbeLinkId,
}

/// Loaded programs with their probes attached. Dropping it detaches everything.
#[derive(Debug)]
pub struct Attachment {
    ebpf: Ebpf,
    links: Vec<Link>,
    pub attached: usize,
}

impl Attachment {
    /// Loads the programs and attaches every planned probe to one process, in the file `exe`
    /// (its executable, or the library its sdk-core is in), once per candidate: each attachment
    /// carries its candidate in its cookie and reads with that candidate's layout (a plan whose
    /// probes read messages has none) and registers.
    pub fn attach(
        exe: &Path,
        pid: u32,
        planned: &[PlannedProbe],
        candidates: &[AttachCandidate<'_>],
        settings: KernelSettings,
    ) -> Result<Self, AttachError> {
        if EBPF_OBJECT.is_empty() {
            return Err(AttachError::NoEbpfObject);
        }
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(AttachError::BadPid)?);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map::EVENTS, settings.ring_buffer_bytes)
            .override_global(map::WAKEUP_BYTES, &settings.wakeup_bytes, true)
            .override_global(map::MESSAGE_CHUNKS, &settings.message_chunks, true)
            .load(EBPF_OBJECT)?;
        if candidates.len() > MAX_CANDIDATES {
            return Err(AttachError::Plan(format!(
                "{} candidate layouts; at most {MAX_CANDIDATES} can be attached",
                candidates.len()
            )));
        }
        // Gates and runtime out pointers are kept per thread only: one candidate.
        if candidates.len() > 1 && planned.iter().any(|p| p.point.hook.callee().is_some()) {
            return Err(AttachError::Plan(
                "a gated probe point cannot be read through several candidate layouts".into(),
            ));
        }
        if let Some(short) = candidates
            .iter()
            .find(|c| c.registers.len() != planned.len())
        {
            return Err(AttachError::Plan(format!(
                "a candidate has registers for {} probes, the plan has {}",
                short.registers.len(),
                planned.len()
            )));
        }
        let mut links = Vec::new();
        for (index, candidate) in candidates.iter().enumerate() {
            let index = index as u8;
            if let Some(layout) = candidate.layout {
                layouts(&mut ebpf)?
                    .set(u32::from(index), layout, 0)
                    .map_err(|source| AttachError::Map {
                        name: map::LAYOUTS,
                        source,
                    })?;
            }
            for (probe_index, (probe, registers)) in
                planned.iter().zip(candidate.registers).enumerate()
            {
                let cookie = Cookie {
                    probe_id: probe.spec.id,
                    arg_a: registers[0],
                    arg_b: registers[1],
                    candidate: index,
                };
                let mut hooks: Vec<(&'static str, &Path, &FunctionSymbol)> = Vec::new();
                let mut own = probe.point.hook.programs();
                if let Some((callee, [entry, exit])) = probe.point.hook.callee() {
                    let found = probe
                        .callee
                        .as_ref()
                        .ok_or(AttachError::NoCallee { callee })?;
                    // Inside out, each return before its entry: a gate opened by a call that
                    // began before its close was attached would stay open, and any later
                    // runtime call on that thread would be read as the message. A return whose
                    // entry did not run finds nothing kept and does nothing.
                    for name in [exit, entry] {
                        hooks.push((name, found.file.as_path(), &found.symbol));
                    }
                    own.reverse();
                }
                for name in own {
                    hooks.extend(probe.functions.iter().map(|f| (name, exe, f)));
                }
                for (name, file, function) in hooks {
                    let program = load_program(&mut ebpf, name)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(function.file_offset),
                        cookie: Some(cookie.encode()),
                    };
                    let link = program.attach(point, file, scope).map_err(|source| {
                        AttachError::Attach {
                            probe: probe.spec.name,
                            function: function.path.clone(),
                            offset: function.file_offset,
                            source: Box::new(source),
                        }
                    })?;
                    links.push(Link {
                        candidate: index,
                        probe: probe_index,
                        program: name,
                        id: link,
                    });
                }
            }
        }
        let attached = links.len();
        Ok(Self {
            ebpf,
            links,
            attached,
        })
    }

    /// Keeps only `chosen`'s attachments: the live records picked its layout, so the others'
    /// probes and layouts go.
    pub fn keep_only(&mut self, chosen: usize) -> Result<(), AttachError> {
        let dropped = self.detach_where(|link| usize::from(link.candidate) != chosen);
        for candidate in dropped.candidates {
            // Absent for a plan without layouts.
            if let Ok(mut layouts) = layouts(&mut self.ebpf) {
                let _ = layouts.set(u32::from(candidate), Layout::default(), 0);
            }
        }
        dropped.result
    }

    /// Detaches every attachment of the plan's probe `probe` (each candidate's): a probe whose
    /// work is done.
    pub fn detach_probe(&mut self, probe: usize) -> Result<(), AttachError> {
        self.detach_where(|link| link.probe == probe).result
    }

    /// Detaches the links `drop` picks. Every one is tried, even after one fails; the first
    /// failure is reported.
    fn detach_where(&mut self, drop: impl Fn(&Link) -> bool) -> Detached {
        let (dropped, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.links).into_iter().partition(drop);
        self.links = keep;
        self.attached = self.links.len();
        let mut first_error = None;
        let mut candidates = std::collections::BTreeSet::new();
        for link in dropped {
            candidates.insert(link.candidate);
            let detached = load_program(&mut self.ebpf, link.program).and_then(|program| {
                program
                    .detach(link.id)
                    .map_err(|source| AttachError::Program {
                        program: link.program,
                        source: Box::new(source),
                    })
            });
            if let Err(e) = detached {
                first_error.get_or_insert(e);
            }
        }
        Detached {
            candidates,
            result: first_error.map_or(Ok(()), Err),
        }
    }

    /// Takes the ring buffer to read events from.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        take_ring_buffer(&mut self.ebpf, map::EVENTS)
    }

    /// Kernel-side counters, summed over CPUs: (events lost, read faults).
    pub fn counters(&self) -> Result<KernelCounters, AttachError> {
        read_counters(&self.ebpf)
    }
}

/// What [`Attachment::detach_where`] did: the candidates it detached links of, and the first
/// failure.
struct Detached {
    candidates: std::collections::BTreeSet<u8>,
    result: Result<(), AttachError>,
}

/// The `LAYOUTS` map of a loaded object.
fn layouts(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, Layout>, AttachError> {
    let map = ebpf
        .map_mut(map::LAYOUTS)
        .ok_or(AttachError::MissingMap(map::LAYOUTS))?;
    Array::try_from(map).map_err(|source| AttachError::Map {
        name: map::LAYOUTS,
        source,
    })
}

/// The `COUNTERS` map of one loaded object, summed over CPUs.
fn read_counters(ebpf: &Ebpf) -> Result<KernelCounters, AttachError> {
    let map = ebpf
        .map(map::COUNTERS)
        .ok_or(AttachError::MissingMap(map::COUNTERS))?;
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|source| AttachError::Map {
            name: map::COUNTERS,
            source,
        })?;
    let sum = |index: u32| -> Result<u64, AttachError> {
        let values = counters.get(&index, 0).map_err(|source| AttachError::Map {
            name: map::COUNTERS,
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
            .map_max_entries(map::EVENTS, 4096)
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

    /// Reports each change of `pid`'s loaded libraries (a `LIBRARIES_CHANGED` record): a uprobe,
    /// for that process only, on its dynamic loader's debugger hook at `offset` in `loader`.
    /// Dropping the returned link detaches it.
    pub fn watch_libraries(
        &mut self,
        pid: u32,
        loader: &Path,
        offset: u64,
    ) -> Result<UProbeLink, AttachError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(AttachError::BadPid)?);
        let program: &mut UProbe = program_of(&mut self.ebpf, program::LIBRARIES_CHANGED)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| load_error(program::LIBRARIES_CHANGED, e))?;
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: None,
        };
        let attach_error = |source| AttachError::Attach {
            probe: program::LIBRARIES_CHANGED,
            function: format!("{} in {}", crate::bridge::LOADER_HOOK, loader.display()),
            offset,
            source: Box::new(source),
        };
        let id = program.attach(point, loader, scope).map_err(attach_error)?;
        program.take_link(id).map_err(attach_error)
    }

    /// Process records the kernel could not queue (the ring buffer was full).
    pub fn lost(&self) -> Result<u64, AttachError> {
        Ok(read_counters(&self.ebpf)?.events_lost)
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        take_ring_buffer(&mut self.ebpf, map::PROCESS_EVENTS)
    }
}

/// The ring buffer map of this name, taken out of the loaded object to be read.
fn take_ring_buffer(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, AttachError> {
    let map = ebpf.take_map(name).ok_or(AttachError::MissingMap(name))?;
    RingBuf::try_from(map).map_err(|source| AttachError::Map { name, source })
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

    #[test]
    fn the_embedded_object_has_every_program_and_map_user_space_names() {
        assert!(
            !EBPF_OBJECT.is_empty(),
            "this build embeds no eBPF object (OBSERVER_EBPF_STUB=1); build with the BPF \
             toolchain (`cargo xtask setup`)"
        );
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for name in program::ALL {
            assert!(object.programs.contains_key(name), "no program `{name}`");
        }
        for name in map::ALL {
            assert!(object.maps.contains_key(name), "no map `{name}`");
        }
        for point in crate::probes::all_probes().flat_map(|p| p.points) {
            let mut names = point.hook.programs();
            names.extend(point.hook.callee().into_iter().flat_map(|(_, p)| p));
            for name in &names {
                assert!(
                    program::ALL.contains(name),
                    "{} runs unknown `{name}`",
                    point.function
                );
            }
        }
    }

    #[test]
    fn verifier_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail("a", 5), "a");
    }
}
