//! Which rustc built a binary and which sdk-core it links, read from the binary itself.
//!
//! Both facts survive `strip`: `.comment` names the compiler, and panic-location paths name the
//! crates (`…/temporalio-sdk-core-0.10.1/src/…`).

use object::{Object, ObjectSection};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BinaryVersions {
    /// e.g. `1.95.0`
    pub rustc: Option<String>,
    /// e.g. `0.10.1`
    pub sdk_core: Option<String>,
    /// The SDK package a bridge library was installed with (bridges name no version inside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<crate::bridge::Package>,
    /// The GNU build id, hex: names one build exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// Reads what the binary says about itself; any of it may be missing.
pub fn detect(data: &[u8]) -> BinaryVersions {
    let file = object::File::parse(data).ok();
    let rustc = file.as_ref().and_then(|file| {
        let comment = file.section_by_name(".comment")?.uncompressed_data().ok()?;
        rustc_from_comment(&comment)
    });
    let build_id = file
        .as_ref()
        .and_then(|file| file.build_id().ok().flatten())
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
    BinaryVersions {
        rustc,
        sdk_core: crate_version(data, "temporalio-sdk-core"),
        package: None,
        build_id,
    }
}

/// `rustc version 1.95.0 (59807616e 2026-04-14)` -> `1.95.0`.
pub fn rustc_from_comment(comment: &[u8]) -> Option<String> {
    comment
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("rustc version "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// The version in the first `<name>-X.Y.Z/` path the binary holds.
pub fn crate_version(data: &[u8], name: &str) -> Option<String> {
    let needle = format!("{name}-");
    for start in memchr::memmem::find_iter(data, needle.as_bytes()) {
        let rest = &data[start + needle.len()..];
        let end = rest.iter().position(|b| *b == b'/' || *b == b'\\')?;
        let candidate = &rest[..end.min(64)];
        if is_semver(candidate) {
            return std::str::from_utf8(candidate).ok().map(str::to_string);
        }
    }
    None
}

fn is_semver(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let core = text.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustc_version_from_comment_section() {
        let comment =
            b"\0GCC: (Debian 12.2.0-14) 12.2.0\0rustc version 1.95.0 (59807616e 2026-04-14)\0";
        assert_eq!(rustc_from_comment(comment).as_deref(), Some("1.95.0"));
        assert_eq!(rustc_from_comment(b"GCC: (Debian) 12\0"), None);
        let nightly = b"rustc version 1.97.0-nightly (e50aa6fba 2026-05-19)\0";
        assert_eq!(
            rustc_from_comment(nightly).as_deref(),
            Some("1.97.0-nightly")
        );
    }

    #[test]
    fn crate_version_from_panic_paths() {
        let data = b"xx temporalio-sdk-core-fake/ yy /root/.cargo/registry/src/index/temporalio-sdk-core-0.10.1/src/worker/mod.rs zz";
        assert_eq!(
            crate_version(data, "temporalio-sdk-core").as_deref(),
            Some("0.10.1")
        );
        assert_eq!(
            crate_version(b"temporalio-sdk-1.1.1/src", "temporalio-sdk-core"),
            None
        );
        assert_eq!(crate_version(b"no paths here", "temporalio-sdk-core"), None);
    }
}
