//! temporal-observer: watches Temporal workers from outside with eBPF uprobes.
//!
//! Modules in the order data flows: [`target`] (pid → executable) → [`versions`] and
//! [`symbols`] (pure ELF reading) → [`probes`] (the probe table, data) → [`layout`] and
//! [`arguments`] (pure DWARF / shipped table) → [`plan`] (what to attach where in one binary,
//! pure) → [`kernel`] (the only module that talks to the kernel) → [`events`] (pure decoding of
//! ring-buffer records) → [`lifecycle`] (pure) → [`session`] (one observed process: the loop
//! that drives them) → [`export`] → [`cli`]. [`processes`] and
//! [`privileges`] read `/proc` for `watch` and the privilege check.

pub mod arguments;
pub mod bridge;
pub mod cli;
pub mod events;
pub mod export;
pub mod kernel;
pub mod layout;
pub mod lifecycle;
pub mod plan;
pub mod privileges;
pub mod probes;
pub mod processes;
pub mod reassembly;
pub mod session;
pub mod symbols;
pub mod target;
pub mod verify;
pub mod versions;
