//! temporal-observer: watches Rust Temporal workers from outside with eBPF uprobes.
//!
//! Modules in the order data flows: [`target`] (pid → executable) → [`versions`] and
//! [`symbols`] (pure ELF reading) → [`layout`] and [`arguments`] (pure DWARF / shipped table) →
//! [`resolve`] (the plan for one binary) → [`probes`] (the only module that talks to the kernel) → [`events`]
//! (pure decoding of ring-buffer records) → [`cli`].

pub mod arguments;
pub mod cli;
pub mod events;
pub mod export;
pub mod layout;
pub mod lifecycle;
pub mod privileges;
pub mod probes;
pub mod processes;
pub mod resolve;
pub mod symbols;
pub mod target;
pub mod versions;
