//! The process to observe and the file its sdk-core is in: its executable (a Rust SDK worker),
//! or an SDK bridge library it loaded (a Python or TypeScript worker), read through
//! `/proc/<pid>/exe` and `/proc/<pid>/root` so that a binary in another mount namespace (a
//! container) is seen as the kernel sees it.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use crate::bridge::{self, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: u32 },
    #[error(
        "cannot read {path} of PID {pid}: permission denied; run as root, or grant \
         CAP_SYS_PTRACE to read another user's process"
    )]
    PermissionDenied { pid: u32, path: PathBuf },
    #[error(
        "PID {pid} runs {exe_name}, which has not loaded the Temporal SDK bridge \
         ({} is not in /proc/{pid}/maps): it has not loaded the Temporal SDK yet, or it is no \
         Temporal worker. Attach once the worker has started (`watch` waits for it)",
        runtime.bridge_file()
    )]
    BridgeNotLoaded {
        pid: u32,
        exe_name: String,
        runtime: Runtime,
    },
    #[error(
        "PID {pid} loaded {path}, which was replaced or removed on disk since (a package \
         upgrade?): the file there now is not the one it runs. Restart the worker"
    )]
    BridgeReplaced { pid: u32, path: PathBuf },
    #[error(
        "PID {pid} runs {exe_name}, {} MiB: {}",
        bytes >> 20,
        if *links_sdk_core {
            "a Temporal worker larger than the observer reads (it holds the file in memory to \
             resolve it, with about as much again to parse it; the limit is 1 GiB)"
        } else {
            "no Temporal worker (it does not link sdk-core), and too large to read whole"
        }
    )]
    TooLarge {
        pid: u32,
        exe_name: String,
        bytes: u64,
        links_sdk_core: bool,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where in the process sdk-core is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// Linked into the executable.
    Executable,
    /// In a bridge library the runtime loaded.
    Library {
        /// The library's path as the process maps it (in its mount namespace).
        path: PathBuf,
        runtime: Runtime,
    },
}

/// A process and the bytes of the file its probes attach to.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    /// `/proc/<pid>/exe`.
    pub exe_link: PathBuf,
    /// The executable's name, e.g. `sample-worker` or `python3.11`.
    pub exe_name: String,
    pub probed: Probed,
    /// The bytes of the probed file.
    pub image: Vec<u8>,
    /// When the process started (see [`crate::processes::start_ticks`]): a process that later
    /// gets the same PID is another one.
    pub start_ticks: Option<u64>,
}

/// The largest file read whole to resolve it: resolving takes about as much memory again.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// Whether the file holds sdk-core's crate name (its symbols, or at least its panic paths),
/// read a chunk at a time: memory stays constant whatever the file's size.
fn links_sdk_core(path: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    const NEEDLES: [&[u8]; 2] = [b"temporalio_sdk_core", b"temporalio-sdk-core"];
    let finders = NEEDLES.map(memchr::memmem::Finder::new);
    let overlap = NEEDLES.iter().map(|n| n.len()).max().unwrap_or(0) - 1;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut kept = 0;
    loop {
        let read = file.read(&mut buffer[kept..])?;
        if read == 0 {
            return Ok(false);
        }
        let filled = kept + read;
        if finders.iter().any(|f| f.find(&buffer[..filled]).is_some()) {
            return Ok(true);
        }
        // A needle may straddle two chunks: keep the tail.
        kept = overlap.min(filled);
        buffer.copy_within(filled - kept..filled, 0);
    }
}

/// The name (as `comm`, cut to 15 bytes) of the thread each sdk-core worker runs its workflow
/// processing on, from its start to its shutdown.
pub const WORKER_THREAD: &str = "workflow-proces";

impl Target {
    /// How many of the process's threads are named `name` (`/proc/PID/task/*/comm`).
    pub fn threads_named(&self, name: &str) -> usize {
        let tasks = Path::new("/proc").join(self.pid.to_string()).join("task");
        let Ok(entries) = std::fs::read_dir(&tasks) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .count()
    }

    pub fn open(pid: u32) -> Result<Self, TargetError> {
        Self::open_in(Path::new("/proc"), pid)
    }

    /// The path uprobes attach through: the executable's link, or the library under the
    /// process's root.
    pub fn attach_path(&self) -> PathBuf {
        match &self.probed {
            Probed::Executable => self.exe_link.clone(),
            Probed::Library { path, .. } => in_root(&self.exe_link, path),
        }
    }

    /// The probed file's name, e.g. `sample-worker` or `temporal_sdk_bridge.abi3.so`.
    pub fn probed_name(&self) -> String {
        match &self.probed {
            Probed::Executable => self.exe_name.clone(),
            Probed::Library { path, .. } => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// Like `open`, with another procfs root (tests).
    pub fn open_in(proc_root: &Path, pid: u32) -> Result<Self, TargetError> {
        let dir = proc_root.join(pid.to_string());
        if pid == 0 || !dir.exists() {
            return Err(TargetError::NoSuchProcess { pid });
        }
        let exe_link = dir.join("exe");
        let start_ticks = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| crate::processes::start_ticks(&stat));
        let resolved = std::fs::read_link(&exe_link).map_err(|e| classify(pid, &exe_link, e))?;
        let exe_name = resolved
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .unwrap_or_else(|| format!("pid-{pid}"));
        // A bridge the process maps first: a runtime's executable (node's is 100 MB) need not
        // be read then.
        let maps_path = dir.join("maps");
        let maps = std::fs::read_to_string(&maps_path).map_err(|e| classify(pid, &maps_path, e))?;
        match mapped_bridge(&maps) {
            Some((path, _)) if maps.contains(&format!("{} (deleted)", path.display())) => {
                return Err(TargetError::BridgeReplaced { pid, path });
            }
            Some((path, runtime)) => {
                let file = in_root(&exe_link, &path);
                let image = std::fs::read(&file).map_err(|e| classify(pid, &file, e))?;
                return Ok(Self {
                    pid,
                    exe_link,
                    exe_name,
                    probed: Probed::Library { path, runtime },
                    image,
                    start_ticks,
                });
            }
            None => {}
        }
        // node's executable (100 MB) is no Rust worker: not read at all.
        if Runtime::Node.runs(&exe_name) {
            return Err(TargetError::BridgeNotLoaded {
                pid,
                exe_name,
                runtime: Runtime::Node,
            });
        }
        // A Rust SDK worker links sdk-core (its symbols, or at least its panic paths). Scanned
        // without holding the file: `watch` looks at every executable on a node, and most are
        // no worker, some of them large.
        let links_sdk_core = links_sdk_core(&exe_link).map_err(|e| classify(pid, &exe_link, e))?;
        let size = std::fs::metadata(&exe_link)
            .map_err(|e| classify(pid, &exe_link, e))?
            .len();
        if size > MAX_IMAGE_BYTES {
            return Err(TargetError::TooLarge {
                pid,
                exe_name,
                bytes: size,
                links_sdk_core,
            });
        }
        let image = std::fs::read(&exe_link).map_err(|e| classify(pid, &exe_link, e))?;
        if links_sdk_core {
            return Ok(Self {
                pid,
                exe_link,
                exe_name,
                probed: Probed::Executable,
                image,
                start_ticks,
            });
        }
        match [Runtime::Python, Runtime::Node]
            .into_iter()
            .find(|runtime| runtime.runs(&exe_name))
        {
            Some(runtime) => Err(TargetError::BridgeNotLoaded {
                pid,
                exe_name,
                runtime,
            }),
            // Not a worker, as the plan will say.
            None => Ok(Self {
                pid,
                exe_link,
                exe_name,
                probed: Probed::Executable,
                image,
                start_ticks,
            }),
        }
    }

    /// The files of the process that may export its runtime's C API: the executable, then each
    /// shared library it maps (a `libnode.so`), as paths uprobes attach through.
    pub fn runtime_files(&self) -> Vec<PathBuf> {
        let maps =
            std::fs::read_to_string(self.exe_link.with_file_name("maps")).unwrap_or_default();
        std::iter::once(self.exe_link.clone())
            .chain(
                mapped_files(&maps)
                    .into_iter()
                    .filter(|path| path.to_string_lossy().contains(".so"))
                    .map(|path| in_root(&self.exe_link, &path)),
            )
            .collect()
    }

    /// Whether the process still exists.
    /// Whether the process still runs: its PID is there and is still this process (a PID is
    /// reused once its process is gone).
    pub fn is_alive(&self) -> bool {
        let Some(dir) = self.exe_link.parent() else {
            return false;
        };
        match self.start_ticks {
            Some(started) => {
                std::fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|stat| crate::processes::start_ticks(&stat))
                    == Some(started)
            }
            None => dir.exists(),
        }
    }
}

/// `path` inside the root directory of the process whose `exe` link is `exe_link`.
fn in_root(exe_link: &Path, path: &Path) -> PathBuf {
    let root = exe_link.with_file_name("root");
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The SDK bridge among the files a process maps (`/proc/<pid>/maps`), and its runtime.
pub fn mapped_bridge(maps: &str) -> Option<(PathBuf, Runtime)> {
    mapped_files(maps)
        .into_iter()
        .find_map(|path| bridge::bridge_runtime(&path).map(|runtime| (path, runtime)))
}

/// The files a process maps, from `/proc/<pid>/maps`, each once, in order.
pub fn mapped_files(maps: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces)
        let mut fields = line.splitn(6, ' ');
        let Some(path) = fields.nth(5).map(str::trim_start) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let path = PathBuf::from(path.trim_end_matches(" (deleted)"));
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files
}

pub fn classify(pid: u32, path: &Path, error: std::io::Error) -> TargetError {
    match error.kind() {
        ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
        ErrorKind::PermissionDenied => TargetError::PermissionDenied {
            pid,
            path: path.to_path_buf(),
        },
        _ => TargetError::Io {
            path: path.to_path_buf(),
            source: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_core_scan_finds_the_name_anywhere_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let needle = b"temporalio_sdk_core";
        // At the start, straddling the first chunk boundary, at the very end, and nowhere.
        for at in [Some(0), Some((1 << 20) - 7), Some(3 << 20), None] {
            let mut bytes = vec![0u8; (3 << 20) + needle.len()];
            if let Some(at) = at {
                bytes[at..at + needle.len()].copy_from_slice(needle);
            }
            let path = dir.path().join("exe");
            std::fs::write(&path, &bytes).expect("write");
            assert_eq!(
                links_sdk_core(&path).expect("scan"),
                at.is_some(),
                "at {at:?}"
            );
        }
    }

    #[test]
    fn a_missing_pid_is_reported_as_such() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = Target::open_in(root.path(), 4242).expect_err("no such pid");
        assert_eq!(err.to_string(), "no process with PID 4242");
    }

    #[test]
    fn mapped_files_are_listed_once_with_their_whole_path() {
        let maps = "\
5583a0000000-5583a0001000 r--p 00000000 08:01 123 /usr/bin/python3.11
7f0000000000-7f0000100000 r-xp 00001000 08:01 456 /srv/my app/temporalio/bridge/temporal_sdk_bridge.abi3.so
7f0000100000-7f0000200000 r--p 00101000 08:01 456 /srv/my app/temporalio/bridge/temporal_sdk_bridge.abi3.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f0000300000-7f0000301000 rw-p 00000000 00:00 0
";
        assert_eq!(
            mapped_bridge(maps),
            Some((
                PathBuf::from("/srv/my app/temporalio/bridge/temporal_sdk_bridge.abi3.so"),
                Runtime::Python
            ))
        );
        assert_eq!(
            mapped_files(maps),
            vec![
                PathBuf::from("/usr/bin/python3.11"),
                PathBuf::from("/srv/my app/temporalio/bridge/temporal_sdk_bridge.abi3.so"),
            ]
        );
    }

    #[test]
    fn the_current_process_can_be_opened() {
        let me = Target::open(std::process::id()).expect("open self");
        assert!(!me.image.is_empty());
        assert!(me.is_alive());
        assert!(me.image.starts_with(b"\x7fELF"));
    }
}
