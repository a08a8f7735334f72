//! Whether this process may load BPF programs and open uprobes, checked before trying so that the
//! error names the missing capability instead of a bare EPERM.

/// Capability numbers from `linux/capability.h`.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "missing privileges: {missing} (effective capabilities {effective:#x}). Loading the uprobes needs \
     CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN){watch}; run with sudo"
)]
pub struct PrivilegeError {
    pub missing: String,
    pub effective: u64,
    watch: &'static str,
}

/// Reads `CapEff` from `/proc/self/status` and checks it.
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_status(&status)
}

/// What `watch` needs besides: CAP_SYS_PTRACE to read the executables and environments of
/// processes that other users run.
pub fn check_watch() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_status_for(&status, true)
}

/// Pure part of [`check`]: the text of a `/proc/<pid>/status`.
pub fn check_status(status: &str) -> Result<(), PrivilegeError> {
    check_status_for(status, false)
}

fn check_status_for(status: &str, watch: bool) -> Result<(), PrivilegeError> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing: Vec<&str> = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        missing.extend(
            [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
                .into_iter()
                .filter(|(cap, _)| !has(*cap))
                .map(|(_, name)| name),
        );
    }
    if watch && !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrivilegeError {
        missing: missing.join(" and "),
        effective,
        watch: if watch {
            ", and reading other processes' executables needs CAP_SYS_PTRACE"
        } else {
            ""
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_bpf_perfmon_pass() {
        assert!(check_status("CapEff:\t000001ffffffffff\n").is_ok());
        let bpf_perfmon = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        assert!(check_status(&format!("CapEff:\t{bpf_perfmon:016x}\n")).is_ok());
    }

    #[test]
    fn missing_capabilities_are_named() {
        let err = check_status("CapEff:\t0000000000000000\n").expect_err("no caps");
        assert_eq!(err.missing, "CAP_BPF and CAP_PERFMON");
        let only_bpf = 1u64 << CAP_BPF;
        let err = check_status(&format!("CapEff:\t{only_bpf:016x}\n")).expect_err("no perfmon");
        assert_eq!(err.missing, "CAP_PERFMON");
        assert!(err.to_string().contains("sudo"));
    }

    #[test]
    fn watch_also_needs_ptrace() {
        let bpf_perfmon = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        let err = check_status_for(&format!("CapEff:\t{bpf_perfmon:016x}\n"), true)
            .expect_err("no ptrace");
        assert_eq!(err.missing, "CAP_SYS_PTRACE");
        let all = bpf_perfmon | (1u64 << CAP_SYS_PTRACE);
        assert!(check_status_for(&format!("CapEff:\t{all:016x}\n"), true).is_ok());
    }
}
