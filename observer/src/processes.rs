//! What `watch` learns about a process from `/proc`: its age, its container, its Kubernetes pod.
//! The parsing is pure (and tested on literal inputs); the reading is a thin layer on top.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// Every numeric entry of `/proc`.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Identifies an executable file across processes and across mount namespaces: the same file
/// seen through two containers has one identity, and a rebuilt binary a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
}

/// The identity of the file `/proc/PID/exe` points at, without reading it.
pub fn exe_identity(pid: u32) -> Option<FileIdentity> {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some(FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
    })
}

/// The executable's path as the process sees it (inside its container, if any).
pub fn exe_path(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// How long ago the process started, from `/proc/PID/stat` (field 22, in clock ticks since
/// boot) and `/proc/uptime`.
pub fn age(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    age_from(&stat, &uptime, u64::try_from(ticks).ok()?)
}

/// When the process started, in clock ticks since boot (`/proc/PID/stat`'s field 22): with the
/// PID, what tells one process from a later one that reuses its PID.
pub fn start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn age_from(stat: &str, uptime: &str, ticks_per_second: u64) -> Option<Duration> {
    let start_ticks = start_ticks(stat)?;
    let uptime_seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let started = start_ticks as f64 / ticks_per_second.max(1) as f64;
    Some(Duration::from_secs_f64((uptime_seconds - started).max(0.0)))
}

/// The container a process runs in, from its cgroup path: the 64-hex-digit id that Docker,
/// containerd, CRI-O and Podman put in it (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, or a bare `/docker/<id>`).
pub fn container_id(pid: u32) -> Option<String> {
    container_id_from_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|segment| {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let id = segment.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
        })
    })
}

/// Kubernetes resource attributes of a worker's pod, from the worker's own environment (the
/// downward API variables its manifest may set, else `HOSTNAME`, which Kubernetes sets to the
/// pod name) and the namespace file of its service account; the node from the observer's own
/// environment (the DaemonSet sets it). Empty outside Kubernetes.
pub fn kubernetes_attributes(pid: u32) -> Vec<(String, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let namespace_file = std::fs::read_to_string(format!(
        "/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    ))
    .ok();
    let node = ["K8S_NODE_NAME", "NODE_NAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()));
    kubernetes_from(&environ, namespace_file.as_deref(), node)
}

fn kubernetes_from(
    environ: &[u8],
    namespace_file: Option<&str>,
    node: Option<String>,
) -> Vec<(String, String)> {
    let vars: Vec<(&str, &str)> = environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
        .collect();
    let var = |names: &[&str]| {
        names.iter().find_map(|name| {
            vars.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.to_string())
        })
    };
    // Only a process in a pod gets pod attributes: it has Kubernetes' service variables.
    let in_pod =
        namespace_file.is_some() || vars.iter().any(|(k, _)| *k == "KUBERNETES_SERVICE_HOST");
    let mut out = Vec::new();
    if in_pod {
        if let Some(pod) = var(&["K8S_POD_NAME", "POD_NAME", "HOSTNAME"]) {
            out.push(("k8s.pod.name".to_string(), pod));
        }
        let namespace = var(&["K8S_NAMESPACE", "POD_NAMESPACE"])
            .or_else(|| namespace_file.map(|n| n.trim().to_string()));
        if let Some(namespace) = namespace.filter(|n| !n.is_empty()) {
            out.push(("k8s.namespace.name".to_string(), namespace));
        }
    }
    if let Some(node) = node {
        out.push(("k8s.node.name".to_string(), node));
    }
    out
}

/// A shell-style pattern (`*`, `?`, `[...]`) matched against an executable's name or its path.
#[derive(Clone, Debug)]
pub struct ExeFilter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

impl ExeFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, glob::PatternError> {
        let compile = |patterns: &[String]| {
            // An empty pattern (an unset setting in a ConfigMap) stands for no pattern.
            patterns
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| glob::Pattern::new(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    /// With no include pattern every executable is considered; an exclude always wins.
    pub fn admits(&self, path: &Path) -> bool {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let full = path.to_string_lossy();
        let hit = |p: &glob::Pattern| p.matches(&name) || p.matches(&full);
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_of_the_common_runtimes() {
        let id = "3f4e1c0d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice/cri-containerd-{id}.scope\n"
            ),
            format!("0::/kubepods/besteffort/pod1234/crio-{id}.scope"),
            format!("12:pids:/docker/{id}\n0::/docker/{id}"),
            format!("0::/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&cgroup).as_deref(),
                Some(id),
                "{cgroup}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }

    #[test]
    fn age_counts_fields_after_a_command_with_spaces() {
        // Field 22 (starttime) is 500 ticks = 5 s after boot; the machine is up 12.5 s.
        let stat = "42 (my (odd) worker) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 500 \
                    1000 50 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            age_from(stat, "12.50 30.00\n", 100),
            Some(Duration::from_millis(7500))
        );
        assert_eq!(age_from("garbage", "1.0 1.0", 100), None);
    }

    #[test]
    fn pod_attributes_come_only_from_a_pod() {
        let env = b"PATH=/bin\0HOSTNAME=orders-worker-7d9f\0KUBERNETES_SERVICE_HOST=10.0.0.1\0";
        assert_eq!(
            kubernetes_from(env, Some("payments\n"), Some("node-a".into())),
            vec![
                ("k8s.pod.name".to_string(), "orders-worker-7d9f".to_string()),
                ("k8s.namespace.name".to_string(), "payments".to_string()),
                ("k8s.node.name".to_string(), "node-a".to_string()),
            ]
        );
        // The downward API variables win over HOSTNAME.
        let env = b"HOSTNAME=x\0POD_NAME=p\0POD_NAMESPACE=n\0KUBERNETES_SERVICE_HOST=h\0";
        assert_eq!(
            kubernetes_from(env, None, None),
            vec![
                ("k8s.pod.name".to_string(), "p".to_string()),
                ("k8s.namespace.name".to_string(), "n".to_string()),
            ]
        );
        // A process outside Kubernetes gets none, whatever its HOSTNAME.
        assert!(kubernetes_from(b"HOSTNAME=laptop\0", None, None).is_empty());
    }

    #[test]
    fn executable_filters_match_name_or_path_and_exclude_wins() {
        let filter = ExeFilter::new(&["*worker*".into()], &["*test*".into()]).expect("valid");
        assert!(filter.admits(Path::new("/app/orders-worker")));
        assert!(!filter.admits(Path::new("/usr/bin/bash")));
        assert!(!filter.admits(Path::new("/app/test-worker")));
        let everything = ExeFilter::new(&[], &["".into()]).expect("valid");
        assert!(everything.admits(Path::new("/usr/bin/bash")));
        let by_path = ExeFilter::new(&["/srv/*".into()], &[]).expect("valid");
        assert!(by_path.admits(Path::new("/srv/bin/w")));
        assert!(ExeFilter::new(&["[".into()], &[]).is_err());
    }
}
