//! The process to observe: its executable, read through `/proc/<pid>/exe` so that a binary in
//! another mount namespace (a container) is seen as the kernel sees it.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: u32 },
    #[error(
        "cannot read the executable of PID {pid} ({path}): permission denied; run as root, or grant \
         CAP_SYS_PTRACE to read another user's process"
    )]
    PermissionDenied { pid: u32, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A process and the bytes of its executable.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    /// `/proc/<pid>/exe`: what uprobes attach through.
    pub exe_link: PathBuf,
    /// The executable's name, e.g. `sample-worker`.
    pub exe_name: String,
    pub image: Vec<u8>,
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

    /// Like `open`, with another procfs root (tests).
    pub fn open_in(proc_root: &Path, pid: u32) -> Result<Self, TargetError> {
        let dir = proc_root.join(pid.to_string());
        if pid == 0 || !dir.exists() {
            return Err(TargetError::NoSuchProcess { pid });
        }
        let exe_link = dir.join("exe");
        let resolved = std::fs::read_link(&exe_link).map_err(|e| classify(pid, &exe_link, e))?;
        let exe_name = resolved
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .unwrap_or_else(|| format!("pid-{pid}"));
        let image = std::fs::read(&exe_link).map_err(|e| classify(pid, &exe_link, e))?;
        Ok(Self {
            pid,
            exe_link,
            exe_name,
            image,
        })
    }

    /// Whether the process still exists.
    pub fn is_alive(&self) -> bool {
        self.exe_link.parent().is_some_and(Path::exists)
    }
}

fn classify(pid: u32, path: &Path, error: std::io::Error) -> TargetError {
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
    fn a_missing_pid_is_reported_as_such() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = Target::open_in(root.path(), 4242).expect_err("no such pid");
        assert_eq!(err.to_string(), "no process with PID 4242");
    }

    #[test]
    fn the_current_process_can_be_opened() {
        let me = Target::open(std::process::id()).expect("open self");
        assert!(!me.image.is_empty());
        assert!(me.is_alive());
        assert!(me.image.starts_with(b"\x7fELF"));
    }
}
