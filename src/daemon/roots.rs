//! Where the daemon may put data and read .torrent files from: the
//! configured `download_roots` (default: `download_dir`) and the watch dir.
//!
//! Layer: control plane. [`is_under`] and [`split_tail`] are pure; the
//! resolving functions touch the file system only to canonicalise (resolve
//! symlinks and `..`) what already exists.
//!
//! Invariants:
//! * a path is checked after every symlink in its existing part is resolved;
//!   the part that does not exist yet may hold only plain names (no `..`,
//!   `.` or root), so creating it cannot leave the root;
//! * a directory is re-resolved after it was created and refused if it then
//!   lies outside the roots (a symlink swapped in between).

use std::path::{Component, Path, PathBuf};

/// Why a path is refused.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("{} is not an absolute path", path.display())]
    NotAbsolute { path: PathBuf },
    #[error("{} resolves to {}, outside the allowed roots ({roots}); see download_roots in the config", path.display(), resolved.display())]
    Outside { path: PathBuf, resolved: PathBuf, roots: String },
    #[error("{} has a `..` or `.` below its existing part", path.display())]
    DotInTail { path: PathBuf },
    #[error("cannot resolve {}: {source}", path.display())]
    Resolve { path: PathBuf, source: std::io::Error },
}

/// True when the canonical `path` is one of `roots` (canonical) or below one.
/// Compared by components, so `/srv/data2` is not under `/srv/data`.
pub fn is_under(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// Splits an absolute path into its longest existing ancestor (found with
/// `exists`) and the names below it; refuses `..` and `.` in those names.
pub fn split_tail(
    path: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, Vec<std::ffi::OsString>), RootsError> {
    if !path.is_absolute() {
        return Err(RootsError::NotAbsolute { path: path.to_path_buf() });
    }
    let mut base = path.to_path_buf();
    let mut tail = Vec::new();
    while !exists(&base) {
        match base.components().next_back() {
            Some(Component::Normal(name)) => tail.push(name.to_os_string()),
            Some(Component::RootDir) | None => break,
            Some(_) => return Err(RootsError::DotInTail { path: path.to_path_buf() }),
        }
        base.pop();
    }
    tail.reverse();
    Ok((base, tail))
}

fn describe(roots: &[PathBuf]) -> String {
    roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Resolves `path` (which need not exist yet) to a canonical path and checks
/// that it lies under `roots` (canonical).
pub fn resolve_under(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, RootsError> {
    let (base, tail) = split_tail(path, |p| std::fs::symlink_metadata(p).is_ok())?;
    let mut resolved = base
        .canonicalize()
        .map_err(|source| RootsError::Resolve { path: path.to_path_buf(), source })?;
    resolved.extend(tail);
    if !is_under(&resolved, roots) {
        return Err(RootsError::Outside {
            path: path.to_path_buf(),
            resolved,
            roots: describe(roots),
        });
    }
    Ok(resolved)
}

/// [`resolve_under`] for a directory, then creates it and checks again.
pub fn create_dir_under(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, RootsError> {
    let resolved = resolve_under(path, roots)?;
    std::fs::create_dir_all(&resolved)
        .map_err(|source| RootsError::Resolve { path: path.to_path_buf(), source })?;
    resolve_under(&resolved, roots)
}

/// Canonicalises the configured roots (each must exist).
pub fn canonical_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>, RootsError> {
    roots
        .iter()
        .map(|r| r.canonicalize().map_err(|source| RootsError::Resolve { path: r.clone(), source }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_compares_components() {
        let roots = vec![PathBuf::from("/srv/data"), PathBuf::from("/mnt/b")];
        assert!(is_under(Path::new("/srv/data"), &roots));
        assert!(is_under(Path::new("/srv/data/x/y"), &roots));
        assert!(is_under(Path::new("/mnt/b/z"), &roots));
        assert!(!is_under(Path::new("/srv/data2"), &roots));
        assert!(!is_under(Path::new("/srv"), &roots));
        assert!(!is_under(Path::new("/etc"), &roots));
        assert!(!is_under(Path::new("/srv/data"), &[]));
    }

    #[test]
    fn tail_takes_plain_names_only() {
        let exists = |p: &Path| p == Path::new("/") || p == Path::new("/srv");
        let (base, tail) = split_tail(Path::new("/srv/a/b"), exists).unwrap();
        assert_eq!(base, Path::new("/srv"));
        assert_eq!(tail, ["a", "b"]);
        assert!(matches!(
            split_tail(Path::new("/srv/a/../../etc"), exists),
            Err(RootsError::DotInTail { .. })
        ));
        assert!(matches!(
            split_tail(Path::new("rel/a"), exists),
            Err(RootsError::NotAbsolute { .. })
        ));
        let (base, tail) = split_tail(Path::new("/srv"), exists).unwrap();
        assert_eq!((base.as_path(), tail.len()), (Path::new("/srv"), 0));
    }

    #[test]
    fn symlinks_and_dotdot_are_resolved_before_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let roots = canonical_roots(std::slice::from_ref(&root)).unwrap();
        let real_root = &roots[0];
        assert_eq!(resolve_under(&root.join("sub"), &roots).unwrap(), real_root.join("sub"));
        assert_eq!(
            resolve_under(&root.join("new/dir"), &roots).unwrap(),
            real_root.join("new/dir")
        );
        assert_eq!(resolve_under(&root.join("sub/../sub"), &roots).unwrap(), real_root.join("sub"));
        for bad in
            [root.join("../outside"), root.join("link"), root.join("link/new"), outside.clone()]
        {
            assert!(
                matches!(resolve_under(&bad, &roots), Err(RootsError::Outside { .. })),
                "{}",
                bad.display()
            );
        }
        assert!(resolve_under(&root.join("new/../../outside"), &roots).is_err());
        assert!(create_dir_under(&root.join("link/new"), &roots).is_err());
        assert!(!outside.join("new").exists(), "nothing created outside");
        assert!(create_dir_under(&root.join("made/here"), &roots).is_ok());
        assert!(root.join("made/here").is_dir());
    }
}
