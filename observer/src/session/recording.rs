//! A session's inputs, recorded as they arrive (`attach --record-to FILE`), and read back: the
//! raw ring-buffer records and each tick's time and kernel counters, with the layout and clock
//! needed to decode them. Replaying a recording through [`super::Pipeline`] gives exactly the
//! values the live session exported, without a kernel; the tests and the benchmark use it.
//!
//! Format: a first line `temporal-observer-recording 1`, a second line of JSON ([`Header`]),
//! then frames `kind: u8, length: u32 LE, payload`.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{Pipeline, Sink};
use crate::{
    events::Clock,
    kernel::KernelCounters,
    layout::TargetLayout,
    lifecycle::Limits,
    verify::{Candidate, Verification, Verifier},
};

fn certain() -> Verification {
    Verification::Certain
}

const MAGIC: &str = "temporal-observer-recording 1";
const RECORD: u8 = 1;
const TICK: u8 = 2;
const EXISTING_WORKERS: u8 = 3;
const PROCESS_EXIT: u8 = 4;
const HEALTH: u8 = 5;
const SESSION_END: u8 = 6;
const PROBES_ATTACHED: u8 = 7;

/// What decoding the records needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    /// `observer_common::ABI_VERSION` of the records: another shape cannot be decoded.
    pub abi_version: u32,
    pub pid: u32,
    pub executable: String,
    /// Wall-clock minus monotonic time when the session started (see [`crate::events::Clock`]).
    pub realtime_minus_monotonic: i128,
    pub probes_attached: i64,
    /// The layout of a session with one (recordings made before candidates were, too).
    pub layout: TargetLayout,
    /// The candidate layouts the records were read with, by the records' candidate index;
    /// empty: `layout` alone, known for certain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    #[serde(default = "certain")]
    pub verification: Verification,
    /// The session's lifecycle settings and configured workers, which the values depend on.
    pub max_open_runs: usize,
    pub timeout_grace_nanos: i128,
    /// Absent in recordings made before runs expired: the default then.
    #[serde(default = "default_idle_expiry")]
    pub idle_expiry_nanos: i128,
    pub configured_workers: Option<i64>,
}

fn default_idle_expiry() -> i128 {
    Limits::default().idle_expiry_nanos
}

/// One input of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A ring-buffer record, as the kernel wrote it.
    Record(Vec<u8>),
    /// A tick: the time and what the kernel had counted (lost records, timeouts).
    Tick {
        now_unix_nanos: i128,
        counters: KernelCounters,
    },
    /// A health report: what the kernel had counted, and the targets observed.
    Health {
        counters: KernelCounters,
        targets: i64,
    },
    /// Workers found running at attach (counted from their threads).
    ExistingWorkers(usize),
    /// The observed process exited.
    ProcessExit,
    /// The session ends: records still held for an undecided layout count as unverified.
    SessionEnd,
    /// Probes were detached: this many stay attached.
    ProbesAttached(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a temporal-observer recording")]
    NotARecording { path: String },
    #[error("{path}: its header is malformed: {source}")]
    Header {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: frame {index} is malformed")]
    Frame { path: String, index: usize },
    #[error("{path}: a frame of {len} bytes does not fit the format")]
    TooLong { path: String, len: usize },
    #[error(
        "{path} holds records of ABI version {found}; this observer reads version {expected}: \
         record it again"
    )]
    Abi {
        path: String,
        found: u32,
        expected: u32,
    },
}

/// Writes a recording as the session goes.
#[derive(Debug)]
pub struct Recorder {
    out: BufWriter<File>,
    path: String,
}

impl Recorder {
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordingError> {
        let name = path.display().to_string();
        let io = |source| RecordingError::Io {
            path: name.clone(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        let header = serde_json::to_string(header).map_err(|source| RecordingError::Header {
            path: name.clone(),
            source,
        })?;
        writeln!(out, "{MAGIC}\n{header}").map_err(io)?;
        Ok(Self { out, path: name })
    }

    /// Writes a ring-buffer record, as it is (without copying it into an [`Input`] first).
    pub fn write_record(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.frame(RECORD, bytes)
    }

    pub fn write(&mut self, input: &Input) -> Result<(), RecordingError> {
        let (kind, payload) = match input {
            Input::Record(bytes) => return self.write_record(bytes),
            Input::Tick {
                now_unix_nanos,
                counters,
            } => {
                let mut p = Vec::with_capacity(32);
                p.extend_from_slice(&now_unix_nanos.to_le_bytes());
                p.extend_from_slice(&counters.events_lost.to_le_bytes());
                p.extend_from_slice(&counters.read_faults.to_le_bytes());
                (TICK, p)
            }
            Input::Health { counters, targets } => {
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&counters.events_lost.to_le_bytes());
                p.extend_from_slice(&counters.read_faults.to_le_bytes());
                p.extend_from_slice(&targets.to_le_bytes());
                (HEALTH, p)
            }
            Input::ExistingWorkers(count) => {
                (EXISTING_WORKERS, (*count as u64).to_le_bytes().to_vec())
            }
            Input::ProcessExit => (PROCESS_EXIT, Vec::new()),
            Input::SessionEnd => (SESSION_END, Vec::new()),
            Input::ProbesAttached(count) => {
                (PROBES_ATTACHED, (*count as u64).to_le_bytes().to_vec())
            }
        };
        self.frame(kind, &payload)
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<(), RecordingError> {
        // Ring-buffer records are far below 4 GiB; a longer payload could not be read back.
        let length = u32::try_from(payload.len()).map_err(|_| RecordingError::TooLong {
            path: self.path.clone(),
            len: payload.len(),
        })?;
        let io = |source| RecordingError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&[kind]).map_err(io)?;
        self.out.write_all(&length.to_le_bytes()).map_err(io)?;
        self.out.write_all(payload).map_err(io)
    }

    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.out.flush().map_err(|source| RecordingError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Feeds a recording's inputs through a pipeline, as the live session did, and returns its sink.
pub fn replay<S: Sink>(header: &Header, inputs: &[Input], sink: S) -> S {
    let mut pipeline = pipeline(header, sink);
    for input in inputs {
        feed(&mut pipeline, input);
    }
    pipeline.into_sink()
}

/// A pipeline set up as the recorded session's was: its candidate layouts, verification,
/// clock and limits.
pub fn pipeline<S: Sink>(header: &Header, sink: S) -> Pipeline<S> {
    let limits = Limits {
        max_open_runs: header.max_open_runs,
        timeout_grace_nanos: header.timeout_grace_nanos,
        idle_expiry_nanos: header.idle_expiry_nanos,
        ..Limits::default()
    };
    let (candidates, verification) = if header.candidates.is_empty() {
        // Made before candidates were: one layout, or none for a target whose records are
        // encoded messages.
        let verification = if header.layout == TargetLayout::default() {
            Verification::Off
        } else {
            header.verification
        };
        let recorded = Candidate {
            label: "the recorded layout".into(),
            layout: header.layout.clone(),
        };
        (vec![recorded], verification)
    } else {
        (header.candidates.clone(), header.verification)
    };
    Pipeline::new(
        Verifier::new(candidates, verification),
        Clock::fixed(header.realtime_minus_monotonic),
        limits,
        header.configured_workers,
        header.probes_attached,
        sink,
    )
}

/// One recorded input, fed as the live session fed it.
pub fn feed<S: Sink>(pipeline: &mut Pipeline<S>, input: &Input) {
    match input {
        Input::Record(bytes) => pipeline.record(bytes),
        Input::Tick {
            now_unix_nanos,
            counters,
        } => pipeline.tick(*now_unix_nanos, Some(*counters)),
        Input::Health { counters, targets } => pipeline.health(Some(*counters), *targets),
        Input::ExistingWorkers(count) => pipeline.existing_workers(*count),
        Input::ProcessExit => pipeline.process_exit(),
        Input::SessionEnd => {
            pipeline.finish_verification();
        }
        Input::ProbesAttached(count) => pipeline.probes_attached(*count as i64),
    }
}

/// Reads a whole recording.
pub fn read(path: &Path) -> Result<(Header, Vec<Input>), RecordingError> {
    let name = path.display().to_string();
    let io = |source| RecordingError::Io {
        path: name.clone(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io)?;
    if line.trim_end() != MAGIC {
        return Err(RecordingError::NotARecording { path: name });
    }
    line.clear();
    reader.read_line(&mut line).map_err(io)?;
    let header: Header = serde_json::from_str(&line).map_err(|source| RecordingError::Header {
        path: name.clone(),
        source,
    })?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map_err(io)?;
    let inputs = parse_frames(&rest).map_err(|index| RecordingError::Frame {
        path: name.clone(),
        index,
    })?;
    Ok((header, inputs))
}

/// Kernel counters from 16 bytes: events lost, read faults.
fn counters(bytes: &[u8]) -> Option<KernelCounters> {
    Some(KernelCounters {
        events_lost: u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?),
        read_faults: u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
    })
}

/// The frames of a recording's body; `Err(index)` names the first malformed one.
fn parse_frames(mut body: &[u8]) -> Result<Vec<Input>, usize> {
    let mut inputs = Vec::new();
    while !body.is_empty() {
        let index = inputs.len();
        let (&kind, rest) = body.split_first().ok_or(index)?;
        let length = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(index)? as usize;
        let payload = rest.get(4..4 + length).ok_or(index)?;
        body = &rest[4 + length..];
        let number = |range: std::ops::Range<usize>| payload.get(range).ok_or(index);
        inputs.push(match kind {
            RECORD => Input::Record(payload.to_vec()),
            TICK if length == 32 => Input::Tick {
                now_unix_nanos: i128::from_le_bytes(number(0..16)?.try_into().map_err(|_| index)?),
                counters: counters(number(16..32)?).ok_or(index)?,
            },
            HEALTH if length == 24 => Input::Health {
                counters: counters(number(0..16)?).ok_or(index)?,
                targets: i64::from_le_bytes(number(16..24)?.try_into().map_err(|_| index)?),
            },
            EXISTING_WORKERS if length == 8 => Input::ExistingWorkers(u64::from_le_bytes(
                number(0..8)?.try_into().map_err(|_| index)?,
            ) as usize),
            PROBES_ATTACHED if length == 8 => Input::ProbesAttached(u64::from_le_bytes(
                number(0..8)?.try_into().map_err(|_| index)?,
            ) as usize),
            PROCESS_EXIT if length == 0 => Input::ProcessExit,
            SESSION_END if length == 0 => Input::SessionEnd,
            _ => return Err(index),
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_frame_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r");
        let header = Header {
            abi_version: observer_common::ABI_VERSION,
            pid: 7,
            executable: "w".into(),
            realtime_minus_monotonic: -5,
            probes_attached: 3,
            layout: crate::layout::sample_layout(),
            candidates: vec![Candidate {
                label: "a".into(),
                layout: crate::layout::sample_layout(),
            }],
            verification: Verification::Live,
            max_open_runs: 10,
            timeout_grace_nanos: 1_000_000_000,
            idle_expiry_nanos: 3_600_000_000_000,
            configured_workers: None,
        };
        let inputs = vec![
            Input::Record(vec![1, 2, 3]),
            Input::Tick {
                now_unix_nanos: 1_800_000_000_000_000_000,
                counters: KernelCounters {
                    events_lost: 2,
                    read_faults: 1,
                },
            },
            Input::Record(Vec::new()),
            Input::ExistingWorkers(2),
            Input::ProbesAttached(5),
            Input::ProcessExit,
            Input::SessionEnd,
            Input::Health {
                counters: KernelCounters::default(),
                targets: 0,
            },
        ];
        let mut recorder = Recorder::create(&path, &header).expect("create");
        for input in &inputs {
            recorder.write(input).expect("write");
        }
        recorder.flush().expect("flush");
        let (read_header, read_inputs) = read(&path).expect("read");
        assert_eq!(read_header.pid, 7);
        assert_eq!(read_header.layout, header.layout);
        assert_eq!(read_inputs, inputs);

        let bytes = std::fs::read(&path).expect("bytes");
        // Into frame 1, the tick (after it: 70 bytes of frames, 5 to 29 bytes each).
        std::fs::write(&path, &bytes[..bytes.len() - 75]).expect("cut");
        let err = read(&path).expect_err("cut");
        assert!(
            matches!(err, RecordingError::Frame { index: 1, .. }),
            "{err}"
        );
        std::fs::write(&path, b"something else\n").expect("write");
        assert!(matches!(
            read(&path),
            Err(RecordingError::NotARecording { .. })
        ));
    }
}
