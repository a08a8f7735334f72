//! The probes: for each, what it yields, the sdk-core functions it can attach to (best first)
//! with the inputs it reads there, the record its program sends and the decoder of that record.
//! A probe is declared once, in its family's table: [`structs`] reads sdk-core's Rust structs
//! with a layout (Rust SDK workers); [`messages`] reads the encoded protobuf messages an SDK
//! bridge hands over (Python and TypeScript workers). [`crate::plan`] picks the points one binary has,
//! [`crate::kernel`] attaches them, [`crate::events`] hands each record to its probe's decoder.

pub mod messages;
mod structs;

use serde::Serialize;

use crate::{
    events::{DecodeError, EventBody},
    layout::TargetLayout,
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
    /// The integer argument in this register (0 = rdi) by the calling convention, where the
    /// signature leaves it no choice: a C-ABI function, or one whose only argument is a
    /// reference and that returns nothing. Used where there is no DWARF to ask.
    CArgument(u8),
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
    /// A per-thread gate around a call into the language runtime: `gate_open` at the point's
    /// entry and `gate_close` at its return; inside the gate, the C function `callee` that the
    /// runtime exports (from its executable or a library it maps) is hooked at `entry` and
    /// `exit`. For bytes the bridge only ever sees through that runtime call.
    Gated {
        gate_open: &'static str,
        gate_close: &'static str,
        callee: &'static str,
        entry: &'static str,
        exit: &'static str,
    },
}

impl Hook {
    /// The programs hooked on the point's own functions.
    pub fn programs(&self) -> Vec<&'static str> {
        match *self {
            Self::Entry { program } => vec![program],
            Self::EntryAndReturn { entry, exit } => vec![entry, exit],
            Self::Gated {
                gate_open,
                gate_close,
                ..
            } => vec![gate_open, gate_close],
        }
    }

    /// The runtime function hooked inside the gate, and its programs.
    pub fn callee(&self) -> Option<(&'static str, [&'static str; 2])> {
        match *self {
            Self::Gated {
                callee,
                entry,
                exit,
                ..
            } => Some((callee, [entry, exit])),
            _ => None,
        }
    }
}

/// Where a point attaches instead of `function` itself: a C-ABI function of the bridge's
/// binding library, generic over the Rust function it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The one instance of this name whose code refers to `function` (pyo3 gives each method
    /// such a trampoline).
    Caller(&'static str),
    /// The one instance of this generic function whose type arguments name `function` (neon's
    /// `call_boxed`, into which the function is inlined).
    InstanceFor(&'static str),
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Self::Caller(name) | Self::InstanceFor(name) => name,
        }
    }
}

/// How a message probe's bytes frame the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// A fixed record (not a message), or a message's bytes exactly.
    Bare,
    /// The message after its length as a varint (protobuf's `encodeDelimited`).
    LengthDelimited,
}

/// One place a probe can attach: a function of sdk-core and where its inputs are.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbePoint {
    /// Normalized demangled path of the function (see `symbols::normalize`).
    pub function: &'static str,
    /// Attach not to `function` itself but to its C-ABI wrapper (see [`Via`]). Its registers
    /// are then the C ABI's, not guesses at rustc's.
    pub via: Option<Via>,
    pub hook: Hook,
    pub inputs: [Input; 2],
    /// What this point misses compared with the first choice, if anything.
    pub caveat: Option<&'static str>,
    /// The point fires only when a worker is created, so the workers that already run when the
    /// observer attaches are counted from their `workflow-processing` threads instead.
    pub count_existing_workers: bool,
}

/// How long a probe stays attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// The whole session.
    Session,
    /// Until every worker that already ran when the observer attached is named: the probe sits
    /// on a function each poll calls (a trap per poll), for the workers that no creation will
    /// name. The workers created later are named by their creation.
    UntilRunningWorkersNamed,
}

/// Turns one record of a probe into what it says.
pub type Decoder = fn(&[u8], &TargetLayout) -> Result<EventBody, DecodeError>;

/// One probe: what it yields, the points it can attach to (best first), and its record. Release
/// builds keep every first choice; LTO inlines some away, and the next point that the binary has
/// is used.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbeSpec {
    pub id: u16,
    /// Short name shown in events and logs.
    pub name: &'static str,
    pub points: &'static [ProbePoint],
    /// A missing required probe means this binary cannot be observed correctly.
    pub required: bool,
    pub yields: &'static str,
    /// The kind of record its programs send (`observer_common::kind`).
    pub record: u32,
    /// How a message record's bytes frame the message.
    pub framing: Framing,
    pub lifetime: Lifetime,
    /// Decodes that record.
    #[serde(skip)]
    pub decode: Decoder,
}

pub use messages::{PYTHON_PROBES, TYPESCRIPT_PROBES};
pub use structs::PROBES;

/// A set of probes that observe one kind of target together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// sdk-core's Rust structs, read with a layout: Rust SDK workers.
    Structs,
    /// Encoded messages at the Python bridge's boundary: Python workers.
    PythonMessages,
    /// Encoded messages at the TypeScript bridge's boundary: Node.js workers.
    TypeScriptMessages,
}

impl Family {
    pub fn probes(self) -> &'static [ProbeSpec] {
        match self {
            Self::Structs => PROBES,
            Self::PythonMessages => PYTHON_PROBES,
            Self::TypeScriptMessages => TYPESCRIPT_PROBES,
        }
    }

    /// Whether its programs read structs with a layout.
    pub fn needs_layout(self) -> bool {
        matches!(self, Self::Structs)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Structs => "sdk-core's Rust structs",
            Self::PythonMessages => "protobuf messages at the Python bridge",
            Self::TypeScriptMessages => "protobuf messages at the TypeScript bridge",
        })
    }
}

/// Every probe of every family (ids are unique across families).
pub fn all_probes() -> impl Iterator<Item = &'static ProbeSpec> {
    PROBES.iter().chain(PYTHON_PROBES).chain(TYPESCRIPT_PROBES)
}

pub fn spec_by_id(id: u16) -> Option<&'static ProbeSpec> {
    all_probes().find(|p| p.id == id)
}

/// Every function any probe point of the struct family names (the functions whose arguments
/// DWARF or the layout table describe).
pub fn probe_functions() -> impl Iterator<Item = &'static str> {
    PROBES
        .iter()
        .flat_map(|spec| spec.points.iter().map(|point| point.function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_probe_decodes_a_record_of_its_own_kind() {
        let layout = crate::layout::sample_layout();
        let clock = crate::events::Clock::fixed(0);
        for spec in all_probes().filter(|p| p.record != observer_common::kind::MESSAGE_CHUNK) {
            let mut record = vec![0u8; 1024];
            record[0..4].copy_from_slice(&spec.record.to_le_bytes());
            record[4..8].copy_from_slice(&u32::from(spec.id).to_le_bytes());
            let event = crate::events::decode(&record, &layout, &clock)
                .unwrap_or_else(|e| panic!("probe {}: {e}", spec.name));
            assert_eq!(event.probe_id, spec.id, "probe {}", spec.name);
        }
    }

    #[test]
    fn probe_ids_are_unique() {
        let mut ids: Vec<u16> = all_probes().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all_probes().count());
    }
}
