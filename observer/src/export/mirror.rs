//! The in-memory copy of every value exported, for the printed table and for tests.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;

/// A point-in-time copy of every value, as exported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// instrument name -> workflow type -> value
    pub counters: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// workflow type -> (count, sum of seconds)
    pub durations: BTreeMap<String, (u64, f64)>,
    pub workers_running: i64,
    pub workers_configured: i64,
}

/// The in-memory copy of the values, shared with the instruments that write it.
#[derive(Clone, Debug, Default)]
pub struct Mirror(Arc<Mutex<Snapshot>>);

impl Mirror {
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Mirror {
    /// Changes the values under the lock.
    pub(super) fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
