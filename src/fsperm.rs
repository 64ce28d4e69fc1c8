//! Warnings about secret files others can read. Master key files, the generated
//! credentials file, the session-token key and the TLS private key are only as safe as
//! their permissions: when one is loaded whose mode lets the group or others in
//! (`mode & 0o077 != 0`), [`warn_if_exposed`] logs a warning with the path and the mode,
//! never the contents. Loading goes on (the operator may have reasons); on non-Unix
//! systems there is no mode to check.

use std::path::Path;

/// The permission bits of `path` when they let the group or others in; `None` when only
/// the owner has access, or the file cannot be inspected (its loader reports that).
pub fn exposed_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs a warning when `path` (a file holding `what`, e.g. "master key") is readable or
/// writable by others; returns the mode it warned about.
pub fn warn_if_exposed(path: &Path, what: &str) -> Option<u32> {
    let mode = exposed_mode(path)?;
    tracing::warn!(
        path = %path.display(),
        mode = format_args!("{mode:04o}"),
        "{what} file is accessible to other users; restrict it (chmod 600)"
    );
    Some(mode)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_bits_are_reported_owner_only_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        std::fs::write(&p, b"not shown").unwrap();
        for (mode, warned) in [
            (0o644, Some(0o644)),
            (0o640, Some(0o640)),
            (0o604, Some(0o604)),
            (0o600, None),
            (0o400, None),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(warn_if_exposed(&p, "test key"), warned, "{mode:o}");
        }
        assert_eq!(exposed_mode(&dir.path().join("missing")), None);
    }
}
