//! `temporal-observer watch`: find and follow every Temporal worker on the host.
//!
//! A scan of `/proc` at start, then the kernel's `sched_process_exec`/`sched_process_exit`
//! tracepoints (no polling) say which processes to look at. An executable found not to be a
//! worker, or to be one that cannot be observed, is passed over by file identity, so the same
//! image in many containers is refused once; workers are observed with the same session `attach`
//! runs, each with its own OTLP resource. A Python process that has not loaded the SDK bridge
//! yet is watched through its dynamic loader's debugger hook (a uprobe for that process only),
//! which fires whenever it loads a library; it is looked at again then.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use log::{debug, info, warn};
use observer_common::{EventHeader, kind};
use tokio::{io::unix::AsyncFd, sync::watch, task::JoinHandle};

use aya::programs::uprobe::UProbeLink;

use super::attach::SessionArgs;
use crate::{
    bridge,
    kernel::{self, ProcessWatch},
    plan, privileges,
    processes::{self, ExeFilter, FileIdentity},
    session::{self, Noticed, SessionConfig, StopReason},
    target::{Probed, Target, TargetError},
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only executables whose name or path matches one of these shell patterns (repeatable)
    /// [default: every executable is checked for sdk-core].
    #[arg(
        long,
        value_name = "GLOB",
        env = "TEMPORAL_OBSERVER_EXE_GLOB",
        value_delimiter = ',',
        help_heading = "Which processes"
    )]
    pub exe_glob: Vec<String>,
    /// Never executables whose name or path matches one of these patterns (repeatable).
    #[arg(
        long,
        value_name = "GLOB",
        env = "TEMPORAL_OBSERVER_EXCLUDE_GLOB",
        value_delimiter = ',',
        help_heading = "Which processes"
    )]
    pub exclude_glob: Vec<String>,
    /// Only processes at least this old; younger ones are looked at when they reach the age.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        env = "TEMPORAL_OBSERVER_MIN_AGE_MS",
        help_heading = "Which processes"
    )]
    pub min_age_ms: u64,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub duration_secs: Option<u64>,
}

pub fn run(args: &WatchArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(watch_host(args))
}

struct Observed {
    stop: watch::Sender<Option<StopReason>>,
    task: JoinHandle<()>,
    exe: PathBuf,
}

struct Watcher {
    me: u32,
    filter: ExeFilter,
    min_age: Duration,
    session: SessionConfig,
    /// Executables found not to be workers, or workers this observer cannot observe (said once
    /// per file): never read again.
    passed_over: HashSet<FileIdentity>,
    observed: HashMap<u32, Observed>,
    /// Processes too young to look at yet, and when to look.
    deferred: VecDeque<(u32, Instant)>,
    /// The kernel's news of processes, and the uprobes on the loaders of processes that may
    /// load a bridge later (dropping a link detaches it).
    news: ProcessWatch,
    awaiting_bridge: HashMap<u32, UProbeLink>,
}

async fn watch_host(args: &WatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.session.export.prometheus_listen.is_none(),
        "--prometheus-listen serves one process; `watch` exports each worker over OTLP, one \
         resource per process (use `attach --prometheus-listen` for one worker)"
    );
    privileges::check_watch()?;
    let filter = ExeFilter::new(&args.exe_glob, &args.exclude_glob)
        .context("an --exe-glob or --exclude-glob pattern is malformed")?;
    kernel::ensure_tracefs()?;
    let mut news = ProcessWatch::attach().context("attaching the exec and exit tracepoints")?;
    let ring = news.take_ring_buffer()?;
    // SAFETY: the ring buffer owns its map fd, which stays open until `ring` is dropped below.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    info!(
        "watching every process on this host for Temporal workers (exec/exit tracepoints; \
         Python processes until they load the SDK bridge)"
    );

    let mut watcher = Watcher {
        me: std::process::id(),
        filter,
        min_age: Duration::from_millis(args.min_age_ms),
        session: args.session.config(),
        passed_over: HashSet::new(),
        observed: HashMap::new(),
        deferred: VecDeque::new(),
        news,
        awaiting_bridge: HashMap::new(),
    };
    for pid in processes::all_pids(std::path::Path::new("/proc")) {
        watcher.consider(pid, None).await;
    }
    info!(
        "initial scan done: {} worker(s) observed",
        watcher.observed.len()
    );

    let stop = session::stop_requested(args.duration_secs.map(Duration::from_secs))
        .context("installing the signal handlers")?;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut lost = 0;
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the process ring buffer")?;
                let mut news = Vec::new();
                while let Some(item) = guard.get_inner_mut().next() {
                    if item.len() >= size_of::<EventHeader>() {
                        // SAFETY: the record holds at least one header, written whole by the
                        // kernel side; read_unaligned copes with any alignment.
                        news.push(unsafe { item.as_ptr().cast::<EventHeader>().read_unaligned() });
                    }
                }
                guard.clear_ready();
                for header in news {
                    match header.kind {
                        kind::PROCESS_EXEC => watcher.on_exec(header.pid, header.ktime_ns).await,
                        kind::PROCESS_EXIT => watcher.on_exit(header.pid),
                        kind::LIBRARIES_CHANGED => {
                            watcher.on_libraries_changed(header.pid, header.ktime_ns).await;
                        }
                        _ => {}
                    }
                }
            }
            _ = tick.tick() => {
                watcher.reap();
                watcher.due().await;
                // A lost exec may be a worker never attached to: say so, once per increase.
                if let Ok(now) = watcher.news.lost()
                    && now > lost
                {
                    warn!(
                        "{} exec/exit records were lost (the process ring buffer was full); a \
                         worker started meanwhile is not observed until it restarts",
                        now - lost
                    );
                    lost = now;
                }
            }
            reason = &mut stop => break reason,
        }
    };
    info!(
        "{reason}; detaching from {} worker(s)",
        watcher.observed.len()
    );
    for (_, observed) in watcher.observed.drain() {
        let _ = observed.stop.send(Some(reason));
        let _ = observed.task.await;
    }
    Ok(())
}

impl Watcher {
    async fn on_exec(&mut self, pid: u32, exec_ktime_ns: u64) {
        // A new program: whatever the old one was waiting to load does not matter.
        self.awaiting_bridge.remove(&pid);
        // The same process running a new program: its probes sit on the old file.
        if let Some(previous) = self.observed.remove(&pid) {
            info!(
                "PID {pid} exec'd a new program (was {}); re-resolving it",
                previous.exe.display()
            );
            let _ = previous.stop.send(Some(StopReason::Execd));
            let _ = previous.task.await;
        }
        self.consider(
            pid,
            Some(Noticed {
                monotonic_ns: exec_ktime_ns,
                event: "its exec",
            }),
        )
        .await;
    }

    fn on_exit(&mut self, pid: u32) {
        // Its session notices on its own within a drain interval and exports its last values.
        self.deferred.retain(|(p, _)| *p != pid);
        self.awaiting_bridge.remove(&pid);
    }

    /// A process waiting for the bridge loaded or unloaded a library: if the bridge is among
    /// its mappings now, observe it.
    async fn on_libraries_changed(&mut self, pid: u32, ktime_ns: u64) {
        if !self.awaiting_bridge.contains_key(&pid) {
            return;
        }
        if has_bridge(pid) {
            self.awaiting_bridge.remove(&pid);
            info!("PID {pid} loaded the Temporal SDK bridge");
            let noticed = Noticed {
                monotonic_ns: ktime_ns,
                event: "it loaded the SDK bridge",
            };
            self.consider(pid, Some(noticed)).await;
        }
    }

    /// Watches a process's dynamic loader until it loads the bridge.
    fn await_bridge(&mut self, pid: u32) {
        if self.awaiting_bridge.contains_key(&pid) {
            return;
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let hooked = std::fs::read(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|exe| bridge::interpreter(&exe))
            .map(|loader| root.join(loader.strip_prefix("/").unwrap_or(&loader)))
            .and_then(|loader| {
                let offset = bridge::loader_hook_offset(&std::fs::read(&loader).ok()?)?;
                Some((loader, offset))
            });
        let Some((loader, offset)) = hooked else {
            warn!(
                "PID {pid} has not loaded the Temporal SDK bridge yet, and its dynamic loader \
                 has no {} to watch: it is looked at again only if it execs",
                bridge::LOADER_HOOK
            );
            return;
        };
        match self.news.watch_libraries(pid, &loader, offset) {
            Ok(link) => {
                debug!("PID {pid}: waiting for it to load the Temporal SDK bridge");
                self.awaiting_bridge.insert(pid, link);
                // Loaded between the look and the hook: look again at the next tick.
                if has_bridge(pid) {
                    self.awaiting_bridge.remove(&pid);
                    self.deferred.push_back((pid, Instant::now()));
                }
            }
            Err(e) => warn!("PID {pid}: cannot watch it load the SDK bridge: {e}"),
        }
    }

    /// Forgets sessions that have ended.
    fn reap(&mut self) {
        self.observed.retain(|pid, observed| {
            let running = !observed.task.is_finished();
            if !running {
                debug!("PID {pid}: session ended");
            }
            running
        });
    }

    async fn due(&mut self) {
        let now = Instant::now();
        while let Some((pid, at)) = self.deferred.front().copied() {
            if at > now {
                break;
            }
            self.deferred.pop_front();
            self.consider(pid, None).await;
        }
    }

    /// Looks at one process: attaches to it if it is a worker this observer can read.
    async fn consider(&mut self, pid: u32, noticed: Option<Noticed>) {
        if pid == self.me || self.observed.contains_key(&pid) {
            return;
        }
        let Some(exe) = processes::exe_path(pid) else {
            return; // a kernel thread, or already gone
        };
        if !self.filter.admits(&exe) {
            return;
        }
        if !self.min_age.is_zero()
            && let Some(age) = processes::age(pid)
            && age < self.min_age
        {
            self.deferred
                .push_back((pid, Instant::now() + (self.min_age - age)));
            return;
        }
        let Some(identity) = processes::exe_identity(pid) else {
            return;
        };
        if self.passed_over.contains(&identity) {
            return;
        }
        // Reading and parsing an executable takes milliseconds: off the async threads.
        let opened = tokio::task::spawn_blocking(move || {
            let target = Target::open(pid)?;
            let resolved = plan::resolve_target(&target);
            anyhow::Ok((target, resolved))
        })
        .await;
        let (target, resolved) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                if matches!(
                    e.downcast_ref::<TargetError>(),
                    Some(TargetError::BridgeNotLoaded { .. })
                ) {
                    self.await_bridge(pid);
                }
                debug!("PID {pid}: {e:#}");
                return;
            }
            Err(e) => {
                warn!("PID {pid}: resolving its executable failed: {e}");
                return;
            }
        };
        // What is known of an executable holds for every process of it; what is known of a
        // bridge library says nothing about the next process of the same interpreter.
        let executable = target.probed == Probed::Executable;
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(e) if e.is_not_a_worker() => {
                if executable {
                    self.passed_over.insert(identity);
                }
                return;
            }
            Err(e) => {
                warn!(
                    "PID {pid} ({}) is a Temporal worker that cannot be observed: {e}",
                    exe.display()
                );
                if executable {
                    self.passed_over.insert(identity);
                }
                return;
            }
        };
        session::log_plan(&target, &resolved);
        let mut session = self.session.clone();
        session.noticed = noticed;
        if let Some(id) = processes::container_id(pid) {
            session.resource.push(("container.id".to_string(), id));
        }
        session
            .resource
            .extend(processes::kubernetes_attributes(pid));
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            if let Err(e) = session::observe(target, resolved, &session, stop_rx).await {
                warn!("PID {pid}: observing it failed: {e:#}");
            }
        });
        self.observed.insert(pid, Observed { stop, task, exe });
    }
}

/// Whether the process maps an SDK bridge now.
fn has_bridge(pid: u32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    crate::target::mapped_bridge(&maps).is_some()
}
