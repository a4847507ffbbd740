//! Where the store lives.

use std::path::PathBuf;

/// The store root: `explicit` (`--root`), else `$KILN_ROOT`, else
/// `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
pub fn resolve_root(explicit: Option<PathBuf>) -> Option<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    explicit
        .or_else(|| non_empty("KILN_ROOT"))
        .or_else(|| non_empty("XDG_DATA_HOME").map(|d| d.join("kiln")))
        .or_else(|| non_empty("HOME").map(|h| h.join(".local/share/kiln")))
}
