//! When a probe that is only there to name the workers already running at attach can go
//! ([`Lifetime::UntilRunningWorkersNamed`]): pure, fed the decoded events and, by the caller,
//! the number of worker threads the process has now.

use std::collections::HashSet;

use crate::{
    events::{Event, EventBody},
    probes::{self, Lifetime},
};

/// The workers seen so far: created since the attach (their creation names them), or named by
/// the catch-up probe (workers that ran before).
#[derive(Debug, Default)]
pub struct RunningWorkers {
    /// Task queues of the workers whose creation was seen.
    created: HashSet<String>,
    /// Addresses of workers the catch-up probe named whose creation was not seen.
    named: HashSet<String>,
}

impl RunningWorkers {
    pub fn on_event(&mut self, event: &Event) {
        let EventBody::WorkerStart {
            worker,
            task_queue: Some(task_queue),
        } = &event.body
        else {
            return;
        };
        match probes::spec_by_id(event.probe_id).map(|spec| spec.lifetime) {
            // A worker created since the attach polls too: it was named at creation.
            Some(Lifetime::UntilRunningWorkersNamed) if !self.created.contains(task_queue) => {
                self.named.insert(worker.clone());
            }
            Some(Lifetime::Session) => {
                self.created.insert(task_queue.clone());
            }
            _ => {}
        }
    }

    /// Whether each of the process's `worker_threads` (one per worker) now is a worker created
    /// since the attach or one the catch-up probe named. A worker that was being created as the
    /// observer attached has a thread but neither record yet: the probe stays until it polls.
    pub fn all_named(&self, worker_threads: usize) -> bool {
        self.created.len() + self.named.len() >= worker_threads
    }

    /// Workers named by the catch-up probe.
    pub fn named(&self) -> usize {
        self.named.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(probe_id: u16, worker: &str, queue: &str) -> Event {
        Event {
            time_unix_nanos: 0,
            pid: 1,
            tid: 1,
            probe_id,
            body: EventBody::WorkerStart {
                worker: worker.into(),
                task_queue: Some(queue.into()),
            },
        }
    }

    #[test]
    fn every_worker_thread_must_be_created_or_named() {
        let ids = |lifetime: Lifetime| {
            probes::PROBES
                .iter()
                .find(|p| p.lifetime == lifetime && p.record == observer_common::kind::WORKER_START)
                .map(|p| p.id)
                .expect("a worker probe of this lifetime")
        };
        let (creation, catch_up) = (
            ids(Lifetime::Session),
            ids(Lifetime::UntilRunningWorkersNamed),
        );
        let mut workers = RunningWorkers::default();
        // Nothing running, nothing to name.
        assert!(workers.all_named(0));
        assert!(!workers.all_named(1));
        // A worker created since the attach, then polling: one worker, not two.
        workers.on_event(&start(creation, "0xc0f1", "new"));
        workers.on_event(&start(catch_up, "0x1000", "new"));
        assert_eq!(workers.named(), 0);
        assert!(workers.all_named(1));
        // Two workers ran before: named at their polls, each once.
        assert!(!workers.all_named(3));
        workers.on_event(&start(catch_up, "0x2000", "a"));
        workers.on_event(&start(catch_up, "0x2000", "a"));
        assert!(!workers.all_named(3));
        workers.on_event(&start(catch_up, "0x3000", "b"));
        assert_eq!(workers.named(), 2);
        assert!(workers.all_named(3));
    }
}
