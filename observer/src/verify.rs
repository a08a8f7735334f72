//! Which of a target's candidate layouts is the right one, decided by the target's own records
//! before any of them counts.
//!
//! A binary without DWARF and without a table row for its exact rustc has several candidates
//! (the table's rows for its sdk-core); the kernel reads every probe hit once per candidate,
//! each copy tagged with its candidate. Every record is checked against the rules below for the
//! candidate it was read with: a record that breaks one contradicts that candidate for good; a
//! record whose reads faulted says nothing by its contents, but a candidate whose reads fault far
//! more often than another's is contradicted. A candidate is confirmed by a run seen whole through it: an activation, then a successful
//! completion of the same run id that carries a command. The records are held (bounded) until
//! exactly one candidate is confirmed and every other is contradicted; then the chosen one's
//! records go on, in order, and the others' are dropped. When every candidate is contradicted the
//! target is rejected, with what did not fit. A candidate known for certain (the binary's DWARF,
//! the row of its exact rustc) passes its records at once, and is still checked: a misfit
//! rejects it too. Nothing here reads the kernel or the clock: recorded records replay to the
//! same decision.

use std::collections::{BTreeSet, VecDeque};

use observer_common::{
    ActivationEvent, CompletionEvent, EventHeader, EvictionEvent, MAX_JOBS, Str, WorkerEvent,
    flags, kind,
};
use serde::{Deserialize, Serialize};

use crate::{
    events::read_record,
    layout::{EnumTags, OptionTime, Tag, TargetLayout},
};

/// Records held while the candidates are undecided; past it the oldest is dropped and counted
/// as unverified.
pub const HOLD_RECORDS: usize = 16_384;

/// Before the decision, a candidate whose reads faulted this many times more than those of the
/// candidate with the fewest faults is contradicted: the right layout reads memory the worker
/// has just written, so its reads (nearly) never fault, while offsets that point elsewhere often
/// leave the target's data. A few faults of its own never contradict the only candidate.
const FAULT_MARGIN: u64 = 3;

/// The values a niche-encoded enum's dataful variant can hold in its tag field: that field is
/// a length or capacity, a discriminant, a flag or a user-space pointer, all below 2^47 on
/// x86-64. A value in the niche area read as the dataful variant means the wrong niche scheme.
const PLAUSIBLE_NICHE_VALUES: u64 = 1 << 47;
/// Longest name (workflow type, task queue) taken as text; longer is read wrongly.
const MAX_NAME_LEN: u64 = 64 * 1024;
/// Most jobs in one activation, commands in one completion.
const MAX_ITEMS: u64 = 1 << 20;
/// Temporal run ids: 36-character UUIDs.
const RUN_ID_LEN: u64 = 36;
/// A start time before 2015 or after 2100 is not one.
const START_TIME_SECONDS: std::ops::RangeInclusive<i64> = 1_420_070_400..=4_102_444_800;
/// A workflow timeout longer than 1,000 years is not one.
const MAX_TIMEOUT_SECONDS: i64 = 1_000 * 365 * 86_400;
/// An execution expiration is a start time plus a timeout.
const EXPIRATION_SECONDS: std::ops::RangeInclusive<i64> =
    1_420_070_400..=4_102_444_800 + MAX_TIMEOUT_SECONDS;

/// What each record is checked for, in words (`inspect` lists them).
pub const RULES: &[&str] = &[
    "run ids (activations, completions, evictions, tasks) are 36-character UUIDs",
    "every enum tag read names a variant of the candidate, and a niche-encoded variant's value \
     is one its field can hold (below 2^47), never a value of the niche area",
    "replay and init flags are 0 or 1; job and command counts are plausible",
    "workflow types and task queues are non-empty UTF-8 of sane length; start times fall \
     between 2015 and 2100, timeouts are non-negative",
    "worker addresses are user-space addresses",
    "a candidate is confirmed by a run seen through it: an activation, then a successful \
     completion of the same run id carrying a command; it is chosen when it is the only one \
     confirmed and every other candidate is contradicted",
];

/// Static evidence: tag values of one variant that differ between the candidates and that the
/// compiled code has to load whole (a 64-bit immediate, `movabs`), found in the code of
/// `functions`. The code of `validate_completion`, for one, loads the `Successful` status value
/// it compares against. Returns, per candidate, `(what, value, function)` for each value found.
/// A hint for people (`inspect`, the log), not a decision: the same value may mean something
/// else there, and a value absent from the code says nothing.
pub fn code_constants(
    image: &[u8],
    functions: &[&crate::symbols::FunctionSymbol],
    candidates: &[&TargetLayout],
) -> Vec<Vec<(String, u64, String)>> {
    let enums = |layout: &TargetLayout| {
        [
            ("job", layout.job.clone()),
            ("completion status", layout.completion_status.clone()),
            ("command", layout.command.clone()),
            ("failure info", layout.failure_info.clone()),
        ]
    };
    // Values a sign-extended 32-bit immediate can hold are compared without `movabs`.
    let wide = |tag: Tag| match tag {
        Tag::Exact(v) if i32::try_from(v as i64).is_err() => Some(v),
        _ => None,
    };
    let in_code = |value: u64| -> Vec<String> {
        let wanted = value.to_le_bytes();
        functions
            .iter()
            .filter(|function| {
                let start = function.file_offset as usize;
                image
                    .get(start..start.saturating_add(function.size as usize))
                    .is_some_and(|code| {
                        // REX.W (+B), then `mov r64, imm64` (B8+r), then the value.
                        code.windows(10).any(|w| {
                            matches!(w[0], 0x48 | 0x49)
                                && (0xb8..=0xbf).contains(&w[1])
                                && w[2..] == wanted
                        })
                    })
            })
            .map(|f| f.path.clone())
            .collect()
    };
    candidates
        .iter()
        .enumerate()
        .map(|(i, layout)| {
            let mut found = Vec::new();
            for (name, tags) in enums(layout) {
                for (variant, tag) in &tags.variants {
                    let Some(value) = wide(*tag) else { continue };
                    let differs = candidates.iter().enumerate().all(|(j, other)| {
                        j == i
                            || enums(other)
                                .into_iter()
                                .find(|(n, _)| *n == name)
                                .and_then(|(_, t)| t.variants.get(variant).copied())
                                != Some(*tag)
                    });
                    if differs {
                        for function in in_code(value) {
                            found.push((format!("{name} {variant}"), value, function));
                        }
                    }
                }
            }
            found
        })
        .collect()
}

/// One candidate: a layout and the name it goes by in logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// e.g. `the table's row for sdk-core 0.10.1 + rustc 1.95.0 (release registers)`.
    pub label: String,
    pub layout: TargetLayout,
}

/// Whether the records must pick among the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// One candidate, known for certain: its records pass at once, and are checked.
    Certain,
    /// The live records decide.
    Live,
    /// The records are encoded messages, not structs: no layout to verify.
    Off,
}

/// Why a record does not fit a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misfit(pub String);

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn misfit(what: impl Into<String>) -> Misfit {
    Misfit(what.into())
}

/// A run id that passed the rules: its 36 bytes, kept without an allocation (every record is
/// checked, also after the decision).
pub type RunId = [u8; RUN_ID_LEN as usize];

/// What a record that fits says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fit {
    Activation {
        run_id: RunId,
    },
    /// A successful completion that carries at least one command.
    CompletionWithCommands {
        run_id: RunId,
    },
    Other,
    /// Some of its memory could not be read (the kernel flagged it): it says nothing either way.
    Unread,
}

/// The variant a tag value names under `tags`, where the value is one that variant can hold.
pub fn fitting_variant(tags: &EnumTags, raw: u64) -> Option<&str> {
    tags.variants
        .iter()
        .find(|(_, tag)| tag_fits(**tag, raw))
        .map(|(name, _)| name.as_str())
}

fn tag_fits(tag: Tag, raw: u64) -> bool {
    match tag {
        Tag::Exact(value) => value == raw,
        Tag::Outside { .. } | Tag::Within { .. } => {
            tag.matches(raw) && raw < PLAUSIBLE_NICHE_VALUES
        }
    }
}

fn run_id<const N: usize>(s: &Str<N>, what: &str) -> Result<RunId, Misfit> {
    if s.len != RUN_ID_LEN {
        return Err(misfit(format!(
            "{what} run id is {} bytes long (run ids are {RUN_ID_LEN})",
            s.len
        )));
    }
    let bytes = &s.bytes[..RUN_ID_LEN as usize];
    if !crate::events::is_uuid_text(bytes) {
        return Err(misfit(format!("{what} run id is not a UUID")));
    }
    let mut id = [0; RUN_ID_LEN as usize];
    id.copy_from_slice(bytes);
    Ok(id)
}

fn name<const N: usize>(s: &Str<N>, what: &str) -> Result<(), Misfit> {
    if s.len == 0 || s.len > MAX_NAME_LEN {
        return Err(misfit(format!("{what} is {} bytes long", s.len)));
    }
    let copied = &s.bytes[..(s.len as usize).min(N - 1)];
    match std::str::from_utf8(copied) {
        Ok(_) => Ok(()),
        // A copy cut inside a character is still text.
        Err(e) if s.len as usize > copied.len() && e.error_len().is_none() => Ok(()),
        Err(_) => Err(misfit(format!("{what} is not UTF-8"))),
    }
}

fn time(
    layout: &OptionTime,
    window: &[u8; observer_common::OPTION_TIME_WINDOW],
    seconds: &std::ops::RangeInclusive<i64>,
    what: &str,
) -> Result<(), Misfit> {
    match layout.decode(window) {
        None => Ok(()),
        Some((s, n)) if seconds.contains(&s) && (0..1_000_000_000).contains(&n) => Ok(()),
        Some((s, n)) => Err(misfit(format!("{what} is {s} s + {n} ns"))),
    }
}

/// Checks one record against a candidate layout. `Ok(Fit::Other)` for records no rule reads.
pub fn check(bytes: &[u8], layout: &TargetLayout) -> Result<Fit, Misfit> {
    let Ok(header) = read_record::<EventHeader>(bytes, 0) else {
        return Ok(Fit::Other);
    };
    if header.flags & flags::READ_FAULT != 0 {
        return Ok(Fit::Unread);
    }
    let short = || misfit(format!("a record of kind {} is short", header.kind));
    match header.kind {
        kind::ACTIVATION => {
            let e: ActivationEvent = read_record(bytes, header.kind).map_err(|_| short())?;
            let run_id = run_id(&e.run_id, "an activation's")?;
            if e.is_replaying > 1 {
                return Err(misfit(format!(
                    "an activation's replay flag is {}",
                    e.is_replaying
                )));
            }
            if e.job_count == 0 || e.job_count > MAX_ITEMS {
                return Err(misfit(format!("an activation has {} jobs", e.job_count)));
            }
            for tag in &e.job_tags[..(e.job_count as usize).min(MAX_JOBS)] {
                if fitting_variant(&layout.job, *tag).is_none_or(|v| v == "None") {
                    return Err(misfit(format!("job tag {tag:#x} names no job")));
                }
            }
            if e.has_init > 1 {
                return Err(misfit("the init flag is not 0 or 1"));
            }
            name(&e.workflow_type, "an activation's workflow type")?;
            if e.has_init == 1 {
                let timeouts = 0..=MAX_TIMEOUT_SECONDS;
                let [execution, run, expiration, start] = &e.init_times;
                time(
                    &layout.duration,
                    execution,
                    &timeouts,
                    "the execution timeout",
                )?;
                time(&layout.duration, run, &timeouts, "the run timeout")?;
                time(
                    &layout.timestamp,
                    expiration,
                    &EXPIRATION_SECONDS,
                    "the execution expiration",
                )?;
                time(
                    &layout.timestamp,
                    start,
                    &START_TIME_SECONDS,
                    "the start time",
                )?;
            }
            Ok(Fit::Activation { run_id })
        }
        kind::COMPLETION => {
            let e: CompletionEvent = read_record(bytes, header.kind).map_err(|_| short())?;
            let run_id = run_id(&e.run_id, "a completion's")?;
            let status =
                fitting_variant(&layout.completion_status, e.status_tag).ok_or_else(|| {
                    misfit(format!(
                        "completion status tag {:#x} names no status",
                        e.status_tag
                    ))
                })?;
            if status != "Successful" {
                return Ok(Fit::Other);
            }
            if e.command_count > MAX_ITEMS {
                return Err(misfit(format!(
                    "a completion has {} commands",
                    e.command_count
                )));
            }
            if e.command_count == 0 {
                return Ok(Fit::Other);
            }
            match fitting_variant(&layout.command, e.last_command_tag) {
                Some(v) if v != "None" => Ok(Fit::CompletionWithCommands { run_id }),
                _ => Err(misfit(format!(
                    "command tag {:#x} names no command",
                    e.last_command_tag
                ))),
            }
        }
        kind::EVICTION => {
            let e: EvictionEvent = read_record(bytes, header.kind).map_err(|_| short())?;
            run_id(&e.run_id, "an eviction's")?;
            // `EvictionReason` has 11 values; room for a few more in newer sdk-cores.
            if e.reason >= 64 {
                return Err(misfit(format!("eviction reason {}", e.reason)));
            }
            Ok(Fit::Other)
        }
        kind::WORKER_START | kind::WORKER_SHUTDOWN => {
            let e: WorkerEvent = read_record(bytes, header.kind).map_err(|_| short())?;
            if e.worker == 0 || e.worker >= PLAUSIBLE_NICHE_VALUES {
                return Err(misfit(format!("worker address {:#x}", e.worker)));
            }
            name(&e.task_queue, "a worker's task queue")?;
            Ok(Fit::Other)
        }
        _ => Ok(Fit::Other),
    }
}

/// What the evidence says of one candidate so far.
#[derive(Clone, Debug, Default)]
struct Evidence {
    contradicted: Option<Misfit>,
    fitting: u64,
    /// Its records whose reads faulted (flagged by the kernel).
    faulted: u64,
    confirmed: bool,
    /// Run ids of activations seen through it, until it is confirmed.
    activations: BTreeSet<RunId>,
}

/// How the pipeline should treat a record it offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Decode it now, with this candidate's layout.
    Now(usize),
    /// Kept until the candidates are decided.
    Held,
    /// Read with a candidate that lost, or after the target was rejected.
    Dropped,
    /// The decision: the chosen candidate's held records, in order (this one among them when
    /// it was the chosen candidate's). `lost`: some of its records were dropped for room before,
    /// so the runs open now may have missed news.
    Decided {
        chosen: usize,
        records: Vec<Vec<u8>>,
        lost: bool,
    },
    /// No candidate fits: the target must not be observed further.
    Rejected,
}

/// Every candidate contradicted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no candidate layout fits this binary's live records: {}", .misfits.join("; "))]
pub struct Rejection {
    /// `label: what did not fit`, per candidate.
    pub misfits: Vec<String>,
}

/// The candidate a record was read with.
fn candidate_of(record: &[u8]) -> Option<usize> {
    read_record::<EventHeader>(record, 0)
        .ok()
        .map(|h| usize::from(h.candidate))
}

/// The decision among one target's candidates.
#[derive(Debug)]
pub struct Verifier {
    candidates: Vec<Candidate>,
    verification: Verification,
    evidence: Vec<Evidence>,
    chosen: Option<usize>,
    /// The standing candidates' copies of the records, until the decision.
    held: VecDeque<Vec<u8>>,
    /// Held records dropped for room, per candidate.
    dropped: Vec<u64>,
    /// Records offered before the decision, per candidate: without a decision, every one of
    /// them goes uncounted.
    offered: Vec<u64>,
    /// Probe hits never counted, each once (not once per candidate's copy): the chosen
    /// candidate's records dropped for room, what was held when the target was rejected or the
    /// session ended undecided, and every hit after a rejection.
    unverified: u64,
    rejection: Option<Rejection>,
    /// Records checked until the decision (each candidate's copy), and all records of a layout
    /// known for certain.
    checked: u64,
}

impl Verifier {
    /// A [`Verification::Certain`] or [`Verification::Off`] verifier uses the first candidate;
    /// without any, it reads nothing with a layout (`Off`, the empty layout).
    pub fn new(mut candidates: Vec<Candidate>, mut verification: Verification) -> Self {
        if candidates.is_empty() {
            candidates.push(Candidate {
                label: "no layout".into(),
                layout: TargetLayout::default(),
            });
            verification = Verification::Off;
        }
        let chosen = (verification != Verification::Live).then_some(0);
        Self {
            evidence: vec![Evidence::default(); candidates.len()],
            dropped: vec![0; candidates.len()],
            offered: vec![0; candidates.len()],
            candidates,
            verification,
            chosen,
            held: VecDeque::new(),
            unverified: 0,
            rejection: None,
            checked: 0,
        }
    }

    pub fn layout(&self, candidate: usize) -> &TargetLayout {
        let last = self.candidates.len() - 1;
        &self.candidates[candidate.min(last)].layout
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub fn verification(&self) -> Verification {
        self.verification
    }

    pub fn chosen_index(&self) -> Option<usize> {
        self.chosen
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejection.as_ref()
    }

    /// Probe hits never counted because no candidate was decided for them.
    pub fn unverified(&self) -> u64 {
        self.unverified
    }

    /// Records checked before the decision (every candidate's copy), or all of them for a
    /// layout known for certain.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Offers one (non-chunk) record.
    pub fn admit(&mut self, bytes: &[u8]) -> Admit {
        if self.verification == Verification::Off {
            return Admit::Now(0);
        }
        let Some(candidate) = candidate_of(bytes) else {
            // The pipeline counts it as undecodable.
            return Admit::Now(self.chosen.unwrap_or(0));
        };
        if self.rejection.is_some() {
            // Every candidate's copy arrives until the probes are gone: count each hit once.
            if candidate == 0 {
                self.unverified += 1;
            }
            return Admit::Dropped;
        }
        if candidate >= self.candidates.len() {
            // No attachment carries such a candidate: a malformed record.
            self.unverified += 1;
            return Admit::Dropped;
        }
        if let Some(chosen) = self.chosen {
            if candidate != chosen {
                return Admit::Dropped;
            }
            if self.verification == Verification::Certain {
                self.checked += 1;
            }
            return match check(bytes, &self.candidates[chosen].layout) {
                Ok(_) => Admit::Now(chosen),
                Err(m) => {
                    self.evidence[chosen].contradicted = Some(m);
                    self.unverified += 1;
                    self.reject();
                    Admit::Rejected
                }
            };
        }
        self.checked += 1;
        self.offered[candidate] += 1;
        self.weigh(candidate, bytes);
        if self.evidence.iter().all(|e| e.contradicted.is_some()) {
            self.reject();
            return Admit::Rejected;
        }
        // Only a candidate still in the running keeps its records.
        if self.evidence[candidate].contradicted.is_none() {
            if self.held.len() == HOLD_RECORDS
                && let Some(oldest) = self.held.pop_front()
                && let Some(c) = candidate_of(&oldest)
            {
                self.dropped[c] += 1;
            }
            self.held.push_back(bytes.to_vec());
        }
        let mut standing =
            (0..self.candidates.len()).filter(|i| self.evidence[*i].contradicted.is_none());
        match (standing.next(), standing.next()) {
            (Some(only), None) if self.evidence[only].confirmed => {
                self.chosen = Some(only);
                let records = std::mem::take(&mut self.held)
                    .into_iter()
                    .filter(|r| candidate_of(r) == Some(only))
                    .collect();
                let lost = self.dropped[only];
                self.unverified += lost;
                Admit::Decided {
                    chosen: only,
                    records,
                    lost: lost > 0,
                }
            }
            _ => Admit::Held,
        }
    }

    /// What one record of `candidate` says about it, before the decision.
    fn weigh(&mut self, candidate: usize, bytes: &[u8]) {
        let evidence = &mut self.evidence[candidate];
        if evidence.contradicted.is_some() {
            return;
        }
        match check(bytes, &self.candidates[candidate].layout) {
            Err(m) => {
                evidence.contradicted = Some(m);
                // Its copies will never be passed on, and must not take the others' room.
                self.held.retain(|r| candidate_of(r) != Some(candidate));
            }
            Ok(Fit::Unread) => {
                evidence.faulted += 1;
                self.weigh_faults();
            }
            Ok(fit) => {
                evidence.fitting += 1;
                match fit {
                    Fit::Activation { run_id } if !evidence.confirmed => {
                        // Bounded: past this many unconfirmed runs, start over.
                        if evidence.activations.len() >= HOLD_RECORDS {
                            evidence.activations.clear();
                        }
                        evidence.activations.insert(run_id);
                    }
                    Fit::CompletionWithCommands { run_id }
                        if evidence.activations.contains(&run_id) =>
                    {
                        evidence.confirmed = true;
                        evidence.activations.clear();
                    }
                    _ => {}
                }
            }
        }
    }

    /// Contradicts the candidates whose reads faulted far more often than another's.
    fn weigh_faults(&mut self) {
        let fewest = self.evidence.iter().map(|e| e.faulted).min().unwrap_or(0);
        for (c, evidence) in self.evidence.iter_mut().enumerate() {
            if evidence.contradicted.is_none() && evidence.faulted >= fewest + FAULT_MARGIN {
                evidence.contradicted = Some(misfit(format!(
                    "{} of its records could not be read (another candidate's: {fewest}): its \
                     offsets point outside the target's data",
                    evidence.faulted
                )));
                self.held.retain(|r| candidate_of(r) != Some(c));
            }
        }
    }

    /// The probe hits offered while undecided, each once (every candidate gets a copy of each;
    /// the most any candidate got).
    fn undecided_hits(&self) -> u64 {
        self.offered.iter().copied().max().unwrap_or(0)
    }

    /// The session ends. What is still held was never verified, and is counted so; returns where
    /// the decision stood when there was none.
    pub fn finish(&mut self) -> Option<String> {
        if self.chosen.is_some() || self.rejection.is_some() {
            return None;
        }
        self.unverified += self.undecided_hits();
        self.held.clear();
        self.offered.iter_mut().for_each(|n| *n = 0);
        Some(self.standing())
    }

    fn reject(&mut self) {
        if self.chosen.is_none() {
            self.unverified += self.undecided_hits();
        }
        self.held.clear();
        self.chosen = None;
        let misfits = self
            .candidates
            .iter()
            .zip(&self.evidence)
            .map(|(c, e)| {
                format!(
                    "{}: {} (after {} fitting records)",
                    c.label,
                    e.contradicted
                        .as_ref()
                        .map_or_else(|| "no contradiction".to_string(), ToString::to_string),
                    e.fitting
                )
            })
            .collect();
        self.rejection = Some(Rejection { misfits });
    }

    /// One line on where the decision stands, per candidate.
    pub fn standing(&self) -> String {
        self.candidates
            .iter()
            .zip(&self.evidence)
            .map(|(c, e)| {
                let state = match (&e.contradicted, e.confirmed) {
                    (Some(m), _) => format!("contradicted: {m}"),
                    (None, true) => "confirmed".to_string(),
                    (None, false) => "fits, not yet confirmed".to_string(),
                };
                format!("{} [{state}; {} fitting records]", c.label, e.fitting)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use observer_common::{RUN_ID_CAP, Str};

    use super::*;
    use crate::{
        layout::{SHIPPED_TABLE, from_table},
        session::recording::{self, Input},
    };

    fn recorded() -> (recording::Header, Vec<Vec<u8>>) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/recordings/every-end-state.rec");
        let (header, inputs) = recording::read(&path).expect("the recording reads");
        let records = inputs
            .into_iter()
            .filter_map(|i| match i {
                Input::Record(bytes) => Some(bytes),
                _ => None,
            })
            .collect();
        (header, records)
    }

    fn candidate(label: &str, layout: TargetLayout) -> Candidate {
        Candidate {
            label: label.into(),
            layout,
        }
    }

    /// The same record as read by another candidate's attachment. The bytes are what a
    /// candidate with the same offsets copies (the kernel's own tag decisions may differ, but
    /// every rule reads the raw tags).
    fn as_candidate(record: &[u8], index: u8) -> Vec<u8> {
        let mut copy = record.to_vec();
        copy[std::mem::offset_of!(EventHeader, candidate)] = index;
        copy
    }

    fn faulted(record: &[u8]) -> Vec<u8> {
        let mut copy = record.to_vec();
        copy[std::mem::offset_of!(EventHeader, flags)] |= flags::READ_FAULT;
        copy
    }

    fn kind_of(record: &[u8]) -> u32 {
        read_record::<EventHeader>(record, 0).expect("header").kind
    }

    /// Offers every record once per candidate, as the kernel sends them; returns what the
    /// pipeline would decode and the decision.
    fn offer_all(verifier: &mut Verifier, records: &[Vec<u8>], candidates: u8) -> Vec<Vec<u8>> {
        let mut passed = Vec::new();
        for record in records {
            for index in 0..candidates {
                let copy = as_candidate(record, index);
                match verifier.admit(&copy) {
                    Admit::Now(_) => passed.push(copy),
                    Admit::Decided { records, .. } => passed.extend(records),
                    Admit::Held | Admit::Dropped | Admit::Rejected => {}
                }
            }
        }
        passed
    }

    #[test]
    fn the_recorded_worker_fits_its_own_rows_layout_and_not_the_other_niche_scheme() {
        let (header, records) = recorded();
        let nightly = from_table(SHIPPED_TABLE, "0.10.1", "1.97.0-nightly").expect("row");
        let (mut fits, mut misfits) = (0, Vec::new());
        for record in &records {
            check(record, &header.layout).expect("every record fits the layout it was read with");
            match check(record, &nightly) {
                Ok(_) => fits += 1,
                Err(m) => misfits.push((kind_of(record), m)),
            }
        }
        // Jobs, workers and evictions read alike under both schemes; every completion's
        // status does not.
        let completions = records
            .iter()
            .filter(|r| kind_of(r) == kind::COMPLETION)
            .count();
        assert!(completions > 0 && fits > 0);
        assert_eq!(misfits.len(), completions, "{misfits:?}");
        assert!(
            misfits
                .iter()
                .all(|(k, m)| *k == kind::COMPLETION && m.0.contains("completion status tag"))
        );
    }

    #[test]
    fn live_records_pick_the_one_fitting_candidate_and_pass_only_its_records_in_order() {
        let (header, records) = recorded();
        let nightly = from_table(SHIPPED_TABLE, "0.10.1", "1.97.0-nightly").expect("row");
        let mut verifier = Verifier::new(
            vec![
                candidate("nightly", nightly),
                candidate("stable", header.layout.clone()),
            ],
            Verification::Live,
        );
        let passed = offer_all(&mut verifier, &records, 2);
        assert_eq!(verifier.chosen_index(), Some(1), "{}", verifier.standing());
        assert!(verifier.rejection().is_none());
        assert_eq!(verifier.unverified(), 0);
        // Exactly the stable candidate's copy of every record, in the kernel's order.
        let expected: Vec<Vec<u8>> = records.iter().map(|r| as_candidate(r, 1)).collect();
        assert_eq!(passed, expected);
        // It decided at the first confirmed run, long before the end.
        assert!(verifier.checked() < records.len() as u64 * 2);
    }

    #[test]
    fn no_fitting_candidate_rejects_the_target_and_passes_nothing() {
        let (header, records) = recorded();
        let nightly = from_table(SHIPPED_TABLE, "0.10.1", "1.97.0-nightly").expect("row");
        // The right layout with its activation run id one word off.
        let mut moved = header.layout.clone();
        moved.offsets.activation_run_id += 8;
        moved.rustc = "1.95.0 (run id moved)".into();
        // What the kernel would copy through the moved offset: the run id's capacity word read
        // as its pointer and its pointer as its length.
        let moved_records: Vec<Vec<u8>> = records
            .iter()
            .map(|r| {
                let mut copy = r.clone();
                if kind_of(r) == kind::ACTIVATION {
                    let at = std::mem::offset_of!(ActivationEvent, run_id);
                    let len = std::mem::offset_of!(Str<RUN_ID_CAP>, len);
                    copy[at + len..at + len + 8]
                        .copy_from_slice(&0x7f00_dead_0000u64.to_le_bytes());
                }
                copy
            })
            .collect();
        let mut verifier = Verifier::new(
            vec![candidate("moved", moved), candidate("nightly", nightly)],
            Verification::Live,
        );
        let mut passed = Vec::new();
        for (right, moved) in records.iter().zip(&moved_records) {
            for (index, record) in [(0, moved), (1, right)] {
                if let Admit::Now(_) | Admit::Decided { .. } =
                    verifier.admit(&as_candidate(record, index))
                {
                    passed.push(index);
                }
            }
        }
        assert!(passed.is_empty(), "records passed: {passed:?}");
        let rejection = verifier.rejection().expect("rejected");
        let text = rejection.to_string();
        assert!(
            text.contains("moved: an activation's run id is")
                && text.contains("nightly: completion status tag"),
            "{text}"
        );
        assert!(verifier.unverified() > 0);
    }

    #[test]
    fn a_record_whose_reads_faulted_says_nothing_either_way() {
        let (header, records) = recorded();
        let activation = records
            .iter()
            .find(|r| kind_of(r) == kind::ACTIVATION)
            .expect("an activation");
        // Stand-ins where the read faulted: a zeroed run id, which no rule would let pass.
        let mut stand_in = faulted(activation);
        let at = std::mem::offset_of!(ActivationEvent, run_id);
        stand_in[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(check(&stand_in, &header.layout), Ok(Fit::Unread));
        let mut certain = Verifier::new(
            vec![candidate("dwarf", header.layout.clone())],
            Verification::Certain,
        );
        assert_eq!(certain.admit(&stand_in), Admit::Now(0));
        assert!(certain.rejection().is_none());
        let mut live = Verifier::new(
            vec![candidate("stable", header.layout.clone())],
            Verification::Live,
        );
        assert_eq!(live.admit(&stand_in), Admit::Held);
        assert!(live.rejection().is_none());
        // Reads that fault far more often through one candidate than through another contradict
        // it: its offsets lead out of the target's data.
        let mut two = Verifier::new(
            vec![
                candidate("off", header.layout.clone()),
                candidate("right", header.layout.clone()),
            ],
            Verification::Live,
        );
        for _ in 0..FAULT_MARGIN {
            two.admit(&as_candidate(&stand_in, 0));
            two.admit(&as_candidate(activation, 1));
        }
        let standing = two.standing();
        assert!(
            standing.contains("off") && standing.contains("could not be read"),
            "{standing}"
        );
        assert!(!standing.contains("right [contradicted"), "{standing}");
    }

    #[test]
    fn what_is_held_at_the_end_or_at_a_rejection_counts_once_per_hit() {
        let (header, records) = recorded();
        let nightly = from_table(SHIPPED_TABLE, "0.10.1", "1.97.0-nightly").expect("row");
        // Worker starts only: both candidates fit, neither is confirmed.
        let starts: Vec<Vec<u8>> = records
            .iter()
            .filter(|r| kind_of(r) == kind::WORKER_START)
            .cloned()
            .collect();
        assert!(!starts.is_empty());
        let two = || {
            Verifier::new(
                vec![
                    candidate("stable", header.layout.clone()),
                    candidate("nightly", nightly.clone()),
                ],
                Verification::Live,
            )
        };
        let mut ended = two();
        offer_all(&mut ended, &starts, 2);
        let standing = ended.finish().expect("undecided");
        assert!(standing.contains("not yet confirmed"), "{standing}");
        assert_eq!(ended.unverified(), starts.len() as u64);
        // A rejection counts what was held, and every later hit, once.
        let mut rejected = Verifier::new(vec![candidate("nightly", nightly)], Verification::Live);
        offer_all(&mut rejected, &starts, 1);
        let completion = records
            .iter()
            .find(|r| kind_of(r) == kind::COMPLETION)
            .expect("a completion");
        // The rejecting record is one of the hits never counted.
        assert_eq!(rejected.admit(completion), Admit::Rejected);
        assert_eq!(rejected.unverified(), starts.len() as u64 + 1);
        assert_eq!(rejected.admit(completion), Admit::Dropped);
        assert_eq!(rejected.unverified(), starts.len() as u64 + 2);
        assert_eq!(rejected.finish(), None);
    }

    #[test]
    fn a_certain_layout_passes_at_once_and_is_still_checked() {
        let (header, records) = recorded();
        let mut verifier = Verifier::new(
            vec![candidate("dwarf", header.layout.clone())],
            Verification::Certain,
        );
        let first = &records[0];
        assert_eq!(verifier.admit(first), Admit::Now(0));
        // A record that breaks a rule stops the target rather than counting garbage.
        let activation = records
            .iter()
            .find(|r| kind_of(r) == kind::ACTIVATION)
            .expect("an activation");
        let mut broken = activation.clone();
        let at = std::mem::offset_of!(ActivationEvent, is_replaying);
        broken[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(verifier.admit(&broken), Admit::Rejected);
        assert_eq!(verifier.admit(first), Admit::Dropped);
        assert!(verifier.rejection().is_some());
    }

    #[test]
    fn a_candidate_that_fits_but_is_never_confirmed_keeps_the_records_held_and_bounded() {
        let (header, records) = recorded();
        // Worker and eviction records only: they fit, but confirm nothing.
        let unconfirming: Vec<Vec<u8>> = records
            .iter()
            .filter(|r| matches!(kind_of(r), kind::WORKER_START | kind::EVICTION))
            .cloned()
            .collect();
        assert!(!unconfirming.is_empty());
        let mut verifier =
            Verifier::new(vec![candidate("stable", header.layout)], Verification::Live);
        let mut offered = 0;
        while offered <= HOLD_RECORDS + 10 {
            for record in &unconfirming {
                assert_eq!(verifier.admit(record), Admit::Held);
                offered += 1;
            }
        }
        assert_eq!(verifier.chosen_index(), None);
        assert_eq!(verifier.held.len(), HOLD_RECORDS);
        assert_eq!(verifier.dropped[0], (offered - HOLD_RECORDS) as u64);
        // Undecided to the end: every hit goes uncounted, and is counted as such.
        assert_eq!(verifier.unverified(), 0);
        assert!(verifier.finish().is_some());
        assert_eq!(verifier.unverified(), offered as u64);
    }

    #[test]
    fn rules_on_single_fields() {
        let mut s = Str::<RUN_ID_CAP> {
            len: 36,
            bytes: [0; RUN_ID_CAP],
        };
        s.bytes[..36].copy_from_slice(b"0193f3c2-6d6e-7b59-9b51-2f5f0b8a3c1d");
        assert!(run_id(&s, "a").is_ok());
        s.bytes[8] = b'x';
        assert!(run_id(&s, "a").is_err());
        s.len = 35;
        assert!(run_id(&s, "a").is_err());
        // A name cut inside a character is text; invalid bytes are not.
        let mut n = Str::<8> {
            len: 20,
            bytes: [b'a'; 8],
        };
        n.bytes[6] = 0xc3;
        assert!(name(&n, "n").is_ok());
        n.len = 7;
        assert!(name(&n, "n").is_err());
        n.len = 0;
        assert!(name(&n, "n").is_err());
        // A dataful variant holds plausible values only.
        let outside = Tag::Outside {
            lo: 1 << 63,
            hi: (1 << 63) + 2,
        };
        assert!(tag_fits(outside, 24));
        assert!(!tag_fits(outside, u64::MAX - 1));
        assert!(!tag_fits(outside, (1 << 63) + 1));
        assert!(tag_fits(Tag::Exact(u64::MAX - 1), u64::MAX - 1));
    }
}
