//! The user-space pipeline's own capacity, without a kernel: a session recorded from the real
//! sample worker (`tests/fixtures/recordings/every-end-state.rec`, 19 runs of every end state)
//! is replayed as fast as one thread can, through decode → verification → lifecycle → the
//! metric instruments and a Prometheus registry (the export path but the network).
//!
//! Throughput: the recording is copied until the stream holds `--events` records, each copy's
//! run ids made its own (so every copy's runs start and end again), and the whole stream is
//! replayed `--rounds` times on one thread; each round's thread CPU time gives events per second.
//! The counts are checked: the stream must count exactly `copies` times what one copy counts.
//!
//! Memory: `--open-runs` first activations of distinct runs are fed to a fresh pipeline, and the
//! process's resident memory before and after gives the bytes one open run costs.
//!
//! `cargo bench -p observer --bench pipeline -- [--events N] [--rounds N] [--open-runs N]
//! [--json]`; `cargo xtask bench` runs it and puts its figures in its table.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{Context as _, bail, ensure};
use temporal_observer::{
    events::{self, Clock, EventBody},
    export::Metrics,
    session::recording::{self, Header, Input},
};

/// A run id's length (a UUID's text form).
const RUN_ID_LEN: usize = 36;

/// Where run ids sit in a record: every UUID-shaped run of 36 bytes.
fn run_id_offsets(record: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + RUN_ID_LEN <= record.len() {
        if events::is_uuid_text(&record[at..at + RUN_ID_LEN]) {
            offsets.push(at);
            at += RUN_ID_LEN;
        } else {
            at += 1;
        }
    }
    offsets
}

/// Writes `n` over the first 8 hex digits of every run id in `record`, so that copy `n`'s runs
/// are runs of their own (the other 28 digits tell a copy's runs apart).
fn relabel(record: &mut [u8], offsets: &[usize], n: u32) {
    let prefix = format!("{n:08x}");
    for at in offsets {
        record[*at..*at + 8].copy_from_slice(prefix.as_bytes());
    }
}

fn flag(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a number"))?
            .parse()
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// This thread's CPU time in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The process's resident memory, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?
        .split_whitespace()
        .next()
        .context("VmRSS has no value")?
        .parse()?;
    Ok(kib * 1024)
}

type Counts = BTreeMap<&'static str, BTreeMap<String, u64>>;

/// Replays `stream` once; returns the counters and the thread CPU seconds it took, the final
/// scrape included.
fn replay_once(header: &Header, stream: &[Input]) -> anyhow::Result<(Counts, f64, usize)> {
    let (metrics, scrape) = Metrics::scraped().map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = thread_cpu_seconds();
    let metrics = recording::replay(header, stream, metrics);
    let text = scrape.text().map_err(|e| anyhow::anyhow!("{e}"))?;
    let seconds = thread_cpu_seconds() - start;
    Ok((metrics.snapshot().counters, seconds, text.len()))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events_wanted = flag(&args, "--events", 1_000_000)?;
    let rounds = flag(&args, "--rounds", 5)?.max(1);
    let open_runs = flag(&args, "--open-runs", 100_000)?;
    let json = args.iter().any(|a| a == "--json");

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/recordings/every-end-state.rec");
    let (header, inputs) = recording::read(&path)?;
    let records = inputs
        .iter()
        .filter(|i| matches!(i, Input::Record(_)))
        .count();
    ensure!(records > 0, "{} holds no records", path.display());
    let offsets: Vec<Vec<usize>> = inputs
        .iter()
        .map(|i| match i {
            Input::Record(bytes) => run_id_offsets(bytes),
            _ => Vec::new(),
        })
        .collect();
    // Memory per open run: the first activation of a run (with its InitializeWorkflow), for
    // `open_runs` distinct runs, none of which ends.
    let layout = &header.layout;
    let clock = Clock::fixed(header.realtime_minus_monotonic);
    let first = inputs
        .iter()
        .zip(&offsets)
        .find_map(|(input, offsets)| match input {
            Input::Record(bytes) => match events::decode(bytes, layout, &clock) {
                Ok(event)
                    if matches!(
                        &event.body,
                        EventBody::Activation {
                            init: Some(_),
                            replaying: false,
                            ..
                        }
                    ) =>
                {
                    Some((bytes.clone(), offsets.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .context("the recording holds no first activation of a run")?;
    let mut header_for_runs = header.clone();
    header_for_runs.max_open_runs = header_for_runs.max_open_runs.max(open_runs);
    let mut pipeline = recording::pipeline(&header_for_runs, Metrics::in_memory());
    let (mut template, run_offsets) = first;
    // Warm the allocator and the tables with a first thousand, then measure the rest.
    let warm = open_runs.min(1000);
    let mut rss_before = 0;
    let started = Instant::now();
    for n in 0..open_runs {
        if n == warm {
            rss_before = rss_bytes()?;
        }
        relabel(&mut template, &run_offsets, n as u32);
        pipeline.record(&template);
    }
    let rss_after = rss_bytes()?;
    let open = pipeline.open_runs();
    ensure!(
        open == open_runs,
        "{open_runs} first activations left {open} runs open"
    );
    let bytes_per_run =
        rss_after.saturating_sub(rss_before) as f64 / (open_runs - warm).max(1) as f64;
    let feed_seconds = started.elapsed().as_secs_f64();
    // Before the stream below is built, which takes far more memory than the pipeline.
    drop(pipeline);

    let copies = events_wanted.div_ceil(records).max(1);
    let mut stream = Vec::with_capacity(copies * inputs.len());
    for n in 0..copies {
        for (input, offsets) in inputs.iter().zip(&offsets) {
            stream.push(match input {
                Input::Record(bytes) => {
                    let mut copy = bytes.clone();
                    relabel(&mut copy, offsets, n as u32);
                    Input::Record(copy)
                }
                other => other.clone(),
            });
        }
    }
    let events = records * copies;

    // One copy's counts, times the copies, is what the stream must count.
    let (single, _, _) = replay_once(&header, &inputs)?;
    let runs: u64 = single
        .get(temporal_observer::export::name::STARTED)
        .map(|by_type| by_type.values().sum())
        .unwrap_or(0);
    ensure!(runs > 0, "the recording counts no started runs");
    let expected: Counts = single
        .iter()
        .map(|(name, by_type)| {
            let scaled = by_type
                .iter()
                .map(|(t, v)| (t.clone(), v * copies as u64))
                .collect();
            (*name, scaled)
        })
        .collect();
    let mut per_second = Vec::new();
    let mut scrape_bytes = 0;
    for round in 0..rounds {
        let (counts, seconds, bytes) = replay_once(&header, &stream)?;
        if counts != expected {
            bail!(
                "round {round}: {copies} copies of the recording counted {counts:?}, not \
                 {copies} × {single:?}"
            );
        }
        scrape_bytes = bytes;
        per_second.push(events as f64 / seconds);
    }
    let events_per_workflow = records as f64 / runs as f64;
    let mut sorted = per_second.clone();
    let med = median(&mut sorted);
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    // The share of one core that 1,000 workflows a second cost at that rate.
    let core_share_at_1000 = 1000.0 * events_per_workflow / med;

    if json {
        println!(
            "{}",
            serde_json::json!({
                "recording": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "records_per_copy": records,
                "runs_per_copy": runs,
                "copies": copies,
                "events": events,
                "rounds": rounds,
                "events_per_second": per_second,
                "events_per_second_median": med,
                "events_per_workflow": events_per_workflow,
                "core_share_at_1000_workflows_per_second": core_share_at_1000,
                "scrape_bytes": scrape_bytes,
                "open_runs": open_runs,
                "bytes_per_open_run": bytes_per_run,
                "rss_bytes_with_open_runs": rss_after,
                "rss_bytes_before_open_runs": rss_before,
                "open_runs_feed_seconds": feed_seconds,
            })
        );
    } else {
        println!(
            "pipeline: {events} events ({copies} copies of {records} records, {runs} runs each), \
             {rounds} round(s) on one thread: {:.2} M events/s (min {:.2}, max {:.2}); \
             {events_per_workflow:.1} events per workflow, so 1,000 workflows/s take {:.2} % of a \
             core; counts exact ({copies} × one copy's)",
            med / 1e6,
            min / 1e6,
            max / 1e6,
            core_share_at_1000 * 100.0,
        );
        println!(
            "open runs: {open_runs} held, {bytes_per_run:.0} bytes each; this process's RSS \
             {:.1} MB with them ({:.1} MB before)",
            rss_after as f64 / 1048576.0,
            rss_before as f64 / 1048576.0
        );
    }
    Ok(())
}
