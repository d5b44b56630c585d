//! Finding an `exec:` or `pipe:` program at start-up the way `execvp` will find it, so that a
//! typo is a usage error rather than dead events.

use crate::error::{Error, Result};
use std::io::ErrorKind;
use std::path::Path;

/// The search path `execvp` uses when PATH is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Finds `program` the way `execvp` does — a name with a `/` is a path, otherwise each
/// directory of `path` in turn (an empty entry is the current directory) — and checks that
/// it is a regular file (or a symlink to one) we may execute. The error says what is wrong.
pub(crate) fn check_program(program: &str, path: Option<&std::ffi::OsStr>) -> Result<()> {
    let unusable = |msg: String| Err(Error::Usage(msg));
    if program.is_empty() {
        return unusable("the program name is empty".into());
    }
    if program.contains('/') {
        return match check_executable(Path::new(program)) {
            Ok(()) => Ok(()),
            Err(why) => unusable(format!("program {program} {why}")),
        };
    }
    let path = path.unwrap_or(DEFAULT_PATH.as_ref());
    let mut first_unusable = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() {
            ".".into()
        } else {
            dir
        };
        let candidate = dir.join(program);
        match check_executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(why) if candidate.exists() && first_unusable.is_none() => {
                first_unusable = Some(format!("program {program}: {} {why}", candidate.display()));
            }
            Err(_) => {}
        }
    }
    unusable(first_unusable.unwrap_or_else(|| format!("program {program} not found on PATH")))
}

/// Why a path is not a program we can run (the end of a sentence that names it).
#[derive(Debug)]
enum Unusable {
    NotFound,
    Unexaminable(std::io::Error),
    Directory,
    NotRegular,
    Nul,
    NotExecutable(std::io::Error),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::NotFound => f.write_str("not found"),
            Unusable::Unexaminable(e) => write!(f, "cannot be examined: {e}"),
            Unusable::Directory => f.write_str("is a directory"),
            Unusable::NotRegular => f.write_str("is not a regular file"),
            Unusable::Nul => f.write_str("contains a NUL byte"),
            Unusable::NotExecutable(e) => write!(f, "is not executable ({e})"),
        }
    }
}

/// Ok if `path` is a regular file (symlinks followed) with execute permission for us.
fn check_executable(path: &Path) -> std::result::Result<(), Unusable> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Unusable::NotFound),
        Err(e) => return Err(Unusable::Unexaminable(e)),
    };
    if meta.is_dir() {
        return Err(Unusable::Directory);
    }
    if !meta.is_file() {
        return Err(Unusable::NotRegular);
    }
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(Unusable::Nul);
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return Err(Unusable::NotExecutable(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when dropped (also when the test fails).
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("dbx-exec-unit-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn programs_are_found_like_execvp_finds_them() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("path");
        let dir = &tmp.0;
        let plain = dir.join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tool = dir.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&tool, dir.join("link")).unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent:{}", dir.display()));
        let path = Some(path.as_os_str());

        check_program("tool", path).unwrap();
        check_program("link", path).unwrap();
        check_program(&tool.to_string_lossy(), None).unwrap();
        check_program("sh", None).unwrap();
        let err = |p: &str| check_program(p, path).unwrap_err().to_string();
        assert_eq!(err("nosuch"), "program nosuch not found on PATH");
        assert!(
            err("plain").contains("is not executable"),
            "{}",
            err("plain")
        );
        let plain = plain.to_string_lossy().to_string();
        assert!(err(&plain).contains("is not executable"), "{}", err(&plain));
        let d = dir.to_string_lossy().to_string();
        assert_eq!(err(&d), format!("program {d} is a directory"));
        assert_eq!(err("/nonexistent/x"), "program /nonexistent/x not found");
        assert_eq!(err("/dev/null"), "program /dev/null is not a regular file");
    }
}
