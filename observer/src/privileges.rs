//! Whether this process may load BPF programs and open uprobes, checked before trying so that the
//! error names the missing capability instead of a bare EPERM.

/// Capability numbers from `linux/capability.h`.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

#[derive(Debug, thiserror::Error)]
#[error(
    "missing privileges: {missing} (effective capabilities {effective:#x}). Opening uprobes needs \
     CAP_SYS_ADMIN: kernels up to at least 6.18 refuse uprobe perf events to CAP_PERFMON alone, \
     and CAP_SYS_ADMIN also covers loading the programs{watch}; run with sudo"
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
/// processes it did not start (root's included: their capabilities exceed ours).
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
        missing.push("CAP_SYS_ADMIN");
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

    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;

    #[test]
    fn root_passes() {
        assert!(check_status("CapEff:\t000001ffffffffff\n").is_ok());
        assert!(check_status_for("CapEff:\t000001ffffffffff\n", true).is_ok());
    }

    #[test]
    fn bpf_and_perfmon_alone_are_not_enough_for_uprobes() {
        let bpf_perfmon = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        let err = check_status(&format!("CapEff:\t{bpf_perfmon:016x}\n")).expect_err("no admin");
        assert_eq!(err.missing, "CAP_SYS_ADMIN");
        assert!(err.to_string().contains("sudo"));
        let err = check_status("CapEff:\t0000000000000000\n").expect_err("no caps");
        assert_eq!(err.missing, "CAP_SYS_ADMIN");
    }

    #[test]
    fn watch_also_needs_ptrace() {
        let admin = 1u64 << CAP_SYS_ADMIN;
        let err =
            check_status_for(&format!("CapEff:\t{admin:016x}\n"), true).expect_err("no ptrace");
        assert_eq!(err.missing, "CAP_SYS_PTRACE");
        let both = admin | (1u64 << CAP_SYS_PTRACE);
        assert!(check_status_for(&format!("CapEff:\t{both:016x}\n"), true).is_ok());
        let err = check_status_for("CapEff:\t0000000000000000\n", true).expect_err("none");
        assert_eq!(err.missing, "CAP_SYS_ADMIN and CAP_SYS_PTRACE");
    }
}
