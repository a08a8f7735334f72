//! Hostile and broken inputs on the observer's resolution and decoding paths, found by seeded
//! mutation of real inputs: the sample worker's executables (what `watch` parses for every
//! process on a node: ELF, symbols, `.comment`, DWARF, package metadata), the Python and
//! TypeScript bridge libraries (what `watch` parses for every mapped library that looks like
//! one), the probe records of a recorded session, and the protobuf messages the bridges' probes
//! copy. Every input must give a result or a typed error: no panic, and each resolution bounded
//! in time and memory (the worst case is measured and printed, and held to the limits below).
//!
//! `cargo test` runs a short seeded pass; `cargo xtask fuzz --minutes N` runs each target for N
//! minutes (`FUZZ_SECONDS`, `FUZZ_TARGETS`, `FUZZ_SEED` here). An input that panics is written
//! to `target/fuzz-crashes/` to replay.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use observer_common::EventHeader;
use prost::Message as _;
use temporal_observer::{
    bridge::{self, Installed, Runtime},
    events::{self, Clock},
    layout::TargetLayout,
    plan, probes,
    session::recording::{self, Input},
};
use temporalio_protos::protos::coresdk::{
    workflow_activation::{
        InitializeWorkflow, QueryWorkflow, RemoveFromCache, WorkflowActivation,
        WorkflowActivationJob, workflow_activation_job,
    },
    workflow_commands::{
        CompleteWorkflowExecution, FailWorkflowExecution, StartTimer, WorkflowCommand,
        workflow_command,
    },
    workflow_completion::{self, WorkflowActivationCompletion, workflow_activation_completion},
};

/// Peak heap bytes since the last [`Peak::reset`]: what one resolution allocates at most.
struct Peak;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Peak {
    fn reset() {
        PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Bytes allocated above what was live at the reset.
    fn above(base: usize) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(base)
    }
}

// SAFETY: delegates every call to the system allocator; the counters only observe sizes.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Peak = Peak;

/// xorshift64*: deterministic from its seed, which every report prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// A byte range of an ELF file worth aiming at: its headers, or one section's contents.
fn regions(image: &[u8]) -> Vec<(usize, usize)> {
    use object::{Object as _, ObjectSection as _};
    let mut regions = vec![(0, 64.min(image.len()))];
    let Ok(file) = object::File::parse(image) else {
        return regions;
    };
    for section in file.sections() {
        if let Some((offset, size)) = section.file_range() {
            let (offset, size) = (offset as usize, size as usize);
            if size > 0 && offset + size <= image.len() {
                regions.push((offset, size));
            }
        }
    }
    // The section and program header tables.
    if image.len() >= 64 {
        let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap_or([0; 8]));
        for (table, count_at, entry) in [(word(0x20), 0x38, 56usize), (word(0x28), 0x3c, 64)] {
            let count = u16::from_le_bytes([image[count_at], image[count_at + 1]]) as usize;
            let (start, size) = (table as usize, count * entry);
            if start < image.len() && start + size <= image.len() {
                regions.push((start, size));
            }
        }
    }
    regions
}

/// A few edits of `input`, mostly inside `regions`: bytes flipped or overwritten with values
/// parsers trip on, blocks copied elsewhere, or the file cut short.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, regions: &[(usize, usize)]) {
    const EDGES: [u64; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0xffff_ffff, u64::MAX];
    for _ in 0..1 + rng.below(8) {
        if input.is_empty() {
            return;
        }
        let (start, size) = if regions.is_empty() || rng.chance(8) {
            (0, input.len())
        } else {
            regions[rng.below(regions.len())]
        };
        let at = (start + rng.below(size)).min(input.len() - 1);
        match rng.below(6) {
            0 => input[at] ^= 1 << rng.below(8),
            1 => input[at] = rng.next() as u8,
            2 => {
                let value = EDGES[rng.below(EDGES.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let end = (at + width).min(input.len());
                input[at..end].copy_from_slice(&value[..end - at]);
            }
            3 => {
                let len = rng.below(256).min(input.len() - at);
                let from = rng.below(input.len() - len);
                let block = input[from..from + len].to_vec();
                input[at..at + len].copy_from_slice(&block);
            }
            4 if rng.chance(4) => input.truncate(at),
            _ => {
                let len = rng.below(64).min(input.len() - at);
                for byte in &mut input[at..at + len] {
                    *byte = rng.next() as u8;
                }
            }
        }
    }
}

/// What one target's run found.
#[derive(Debug, Default)]
struct Report {
    runs: u64,
    /// Outcomes by the first words of their result: how far the inputs got.
    outcomes: BTreeMap<String, u64>,
    panics: Vec<(String, PathBuf)>,
    worst_time: Duration,
    worst_heap: usize,
}

impl Report {
    fn print(&self, target: &str, seed: u64, spent: Duration) {
        eprintln!(
            "fuzz {target}: seed {seed:#x}, {} inputs in {:.0} s, {} panics, worst {:.1} ms and \
             {:.1} MiB of heap per input",
            self.runs,
            spent.as_secs_f64(),
            self.panics.len(),
            self.worst_time.as_secs_f64() * 1e3,
            self.worst_heap as f64 / (1 << 20) as f64
        );
        for (outcome, count) in &self.outcomes {
            eprintln!("  {count:>8}  {outcome}");
        }
        for (message, path) in &self.panics {
            eprintln!("  panic: {message} (input: {})", path.display());
        }
    }
}

fn outcome_of<T, E: std::fmt::Display>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            let text = e.to_string();
            // Error texts carry numbers and names from the input: keep the kind of message.
            let words: Vec<&str> = text
                .split_whitespace()
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .take(6)
                .collect();
            format!("error: {}", words.join(" "))
        }
    }
}

/// Runs `check` on mutations of `seeds` until `budget` is spent or `max_runs` are done; `check`
/// is told which seed the input was made from.
fn fuzz(
    target: &str,
    seed: u64,
    seeds: &[Vec<u8>],
    budget: Duration,
    max_runs: u64,
    check: &dyn Fn(usize, &[u8]) -> String,
) -> Report {
    let regions: Vec<Vec<(usize, usize)>> = seeds.iter().map(|s| regions(s)).collect();
    let mut rng = Rng(seed | 1);
    let mut report = Report::default();
    let started = Instant::now();
    let crashes = e2e::workspace_root().join("target/fuzz-crashes");
    while report.runs < max_runs && started.elapsed() < budget {
        let which = rng.below(seeds.len());
        let mut input = seeds[which].clone();
        mutate(&mut rng, &mut input, &regions[which]);
        let base = CURRENT.load(Ordering::Relaxed);
        Peak::reset();
        let began = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| check(which, &input)));
        report.worst_time = report.worst_time.max(began.elapsed());
        report.worst_heap = report.worst_heap.max(Peak::above(base));
        report.runs += 1;
        match result {
            Ok(outcome) => *report.outcomes.entry(outcome).or_default() += 1,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let _ = std::fs::create_dir_all(&crashes);
                let path = crashes.join(format!("{target}-{seed:x}-{}", report.runs));
                let _ = std::fs::write(&path, &input);
                report.panics.push((message, path));
            }
        }
    }
    report.print(target, seed, started.elapsed());
    report
}

/// The sample worker's release and fat-LTO executables, as `watch` would read them, and with
/// `FUZZ_WITH_DWARF` its full-debug-info build (`cargo xtask fuzz` builds it), which resolution
/// reads through its DWARF.
fn executables() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut profiles = vec!["release", "lto"];
    if std::env::var_os("FUZZ_WITH_DWARF").is_some() {
        profiles.push("debug-info");
    }
    profiles
        .into_iter()
        .map(|profile| Ok(std::fs::read(e2e::fixture_worker(profile)?)?))
        .collect()
}

fn resolve(image: &[u8]) -> String {
    outcome_of(&plan::resolve(image))
}

/// The SDK bridges the Python and TypeScript sample workers load (what `watch` parses for every
/// process that maps one), each with what its installed package says.
fn bridges() -> anyhow::Result<Vec<(Runtime, Installed, Vec<u8>)>> {
    [
        (Runtime::Python, e2e::python_bridge()?),
        (Runtime::Node, e2e::typescript_bridge()?),
    ]
    .into_iter()
    .map(|(runtime, path)| {
        let installed = bridge::installed(runtime, &path);
        Ok((runtime, installed, std::fs::read(&path)?))
    })
    .collect()
}

/// The recorded every-end-state session: its records and the layout they were read with.
fn recorded() -> anyhow::Result<(TargetLayout, Clock, Vec<Vec<u8>>)> {
    let path = e2e::workspace_root().join("tests/fixtures/recordings/every-end-state.rec");
    let (header, inputs) = recording::read(&path)?;
    let records = inputs
        .into_iter()
        .filter_map(|input| match input {
            Input::Record(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    Ok((
        header.layout,
        Clock::fixed(header.realtime_minus_monotonic),
        records,
    ))
}

/// Activations and completions as the bridges' probes copy them (plain and length-delimited).
fn messages() -> Vec<Vec<u8>> {
    let job = |variant| WorkflowActivationJob {
        variant: Some(variant),
    };
    let activation = WorkflowActivation {
        run_id: "01a23f4b-ffdf-7f0c-a5ce-a3c7d0678e1e".into(),
        is_replaying: false,
        history_length: 3,
        jobs: vec![
            job(workflow_activation_job::Variant::InitializeWorkflow(
                InitializeWorkflow {
                    workflow_type: "CompleteWorkflow".into(),
                    workflow_id: "fuzz-1".into(),
                    workflow_execution_timeout: Some(prost_wkt_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    start_time: Some(prost_wkt_types::Timestamp {
                        seconds: 1_796_358_275,
                        nanos: 39_987_082,
                    }),
                    ..Default::default()
                },
            )),
            job(workflow_activation_job::Variant::QueryWorkflow(
                QueryWorkflow::default(),
            )),
        ],
        ..Default::default()
    };
    let eviction = WorkflowActivation {
        run_id: "01a23f4b-ffdf-7f0c-a5ce-a3c7d0678e1e".into(),
        jobs: vec![job(workflow_activation_job::Variant::RemoveFromCache(
            RemoveFromCache {
                message: "fuzz".into(),
                reason: 10,
            },
        ))],
        ..Default::default()
    };
    let command = |variant| WorkflowCommand {
        variant: Some(variant),
        ..Default::default()
    };
    let completion = |commands| WorkflowActivationCompletion {
        run_id: "01a23f4b-ffdf-7f0c-a5ce-a3c7d0678e1e".into(),
        status: Some(workflow_activation_completion::Status::Successful(
            workflow_completion::Success {
                commands,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let completions = [
        completion(vec![command(workflow_command::Variant::StartTimer(
            StartTimer::default(),
        ))]),
        completion(vec![command(
            workflow_command::Variant::CompleteWorkflowExecution(
                CompleteWorkflowExecution::default(),
            ),
        )]),
        completion(vec![command(
            workflow_command::Variant::FailWorkflowExecution(FailWorkflowExecution::default()),
        )]),
    ];
    let mut messages = vec![activation.encode_to_vec(), eviction.encode_to_vec()];
    for c in &completions {
        messages.push(c.encode_to_vec());
        messages.push(c.encode_length_delimited_to_vec());
    }
    messages
}

/// Every probe's decoder on `bytes`, as a record of its own kind.
fn decode_as_every_probe(bytes: &[u8], layout: &TargetLayout, clock: &Clock) -> String {
    let mut outcomes = Vec::new();
    for spec in probes::all_probes() {
        let header = EventHeader {
            kind: spec.record,
            probe_id: spec.id,
            candidate: 0,
            flags: 0,
            pid: 1,
            tid: 1,
            ktime_ns: 1,
        };
        outcomes.push(outcome_of(&events::decode_message(
            header, bytes, layout, clock,
        )));
    }
    outcomes.sort();
    outcomes.dedup();
    outcomes.join("; ")
}

struct Limits {
    /// Worst time one input may take before it counts as a hang.
    time: Duration,
    /// Worst heap one resolution may take above what was live before it.
    heap: usize,
}

/// Resolution parses executables of up to hundreds of MiB; its worst case measured on the
/// sample workers (about 30 MiB each) is printed by every run. The limits are a hang and a
/// runaway, several times the worst seen.
const RESOLVE_LIMITS: Limits = Limits {
    time: Duration::from_secs(30),
    heap: 1 << 30,
};
const DECODE_LIMITS: Limits = Limits {
    time: Duration::from_secs(1),
    heap: 64 << 20,
};

fn assert_clean(target: &str, report: &Report, limits: &Limits) {
    assert!(
        report.panics.is_empty(),
        "{target}: {} inputs panicked: {:?}",
        report.panics.len(),
        report.panics
    );
    assert!(
        report.worst_time < limits.time && report.worst_heap < limits.heap,
        "{target}: an input took {:?} and {} bytes of heap",
        report.worst_time,
        report.worst_heap
    );
    assert!(report.runs > 0, "{target}: nothing ran");
}

/// One pass over the three targets: `FUZZ_SECONDS` each (default: a short seeded pass of a
/// fixed number of inputs), the targets in `FUZZ_TARGETS` (default all), from `FUZZ_SEED`.
#[test]
fn hostile_inputs_never_panic_hang_or_exhaust_the_observer() -> anyhow::Result<()> {
    let seconds: Option<u64> = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let targets =
        std::env::var("FUZZ_TARGETS").unwrap_or("resolve,bridges,records,messages".into());
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5eed_0b5e_4e00_0016);
    let (budget, runs) = match seconds {
        Some(s) => (Duration::from_secs(s), [u64::MAX; 4]),
        None => (Duration::from_secs(3600), [24, 24, 20_000, 20_000]),
    };
    for target in targets.split(',') {
        match target {
            "resolve" => {
                let seeds = executables()?;
                // The seeds themselves resolve: the mutations start from a working input.
                for seed in &seeds {
                    assert_eq!(resolve(seed), "ok");
                }
                let report = fuzz(target, seed, &seeds, budget, runs[0], &|_, image| {
                    resolve(image)
                });
                assert_clean(target, &report, &RESOLVE_LIMITS);
            }
            "bridges" => {
                let bridges = bridges()?;
                let resolve_bridge = |which: usize, image: &[u8]| {
                    let (runtime, installed, _) = &bridges[which];
                    outcome_of(&plan::resolve_bridge(*runtime, image, installed))
                };
                for (which, (.., image)) in bridges.iter().enumerate() {
                    assert_eq!(resolve_bridge(which, image), "ok");
                }
                let seeds: Vec<Vec<u8>> = bridges.iter().map(|(.., image)| image.clone()).collect();
                let report = fuzz(target, seed, &seeds, budget, runs[1], &resolve_bridge);
                assert_clean(target, &report, &RESOLVE_LIMITS);
            }
            "records" => {
                let (layout, clock, records) = recorded()?;
                let report = fuzz(target, seed, &records, budget, runs[2], &|_, bytes| {
                    outcome_of(&events::decode(bytes, &layout, &clock))
                });
                assert_clean(target, &report, &DECODE_LIMITS);
            }
            "messages" => {
                let layout = TargetLayout::default();
                let clock = Clock::fixed(0);
                let report = fuzz(target, seed, &messages(), budget, runs[3], &|_, bytes| {
                    decode_as_every_probe(bytes, &layout, &clock)
                });
                assert_clean(target, &report, &DECODE_LIMITS);
            }
            other => anyhow::bail!("no fuzz target {other} (resolve, bridges, records, messages)"),
        }
    }
    Ok(())
}
