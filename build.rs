//! Build facts for `--version`: the target triple and the git revision the binary was built
//! from (`git rev-parse --short HEAD`), or "unknown" when there is no git or no repository of
//! this crate (a crate tarball, a vendored copy inside another repository). Never fails.
//!
//! The variables are not named `DISPATCHBOX_*`: cargo also sets them when it runs the binary
//! (`cargo run`, `cargo test`), and the binary warns about unknown `DISPATCHBOX_*` variables.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=DBX_BUILD_TARGET={target}");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let rev = git(&dir, &["rev-parse", "--short", "HEAD"])
        .filter(|_| is_our_repository(&dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DBX_BUILD_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=build.rs");
    // A new commit or checkout changes these; without them cargo would keep an old revision.
    if rev != "unknown" {
        for name in ["HEAD", "packed-refs"] {
            watch(&dir, name);
        }
        if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch(&dir, &branch);
        }
    }
}

/// The output of `git ARGS` run in `dir`, trimmed; None on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// The repository's top level is this crate's directory (not an enclosing repository).
fn is_our_repository(dir: &Path) -> bool {
    let Some(top) = git(dir, &["rev-parse", "--show-toplevel"]) else {
        return false;
    };
    match (Path::new(&top).canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Rebuild when the git file `name` (`HEAD`, `refs/heads/main`) changes, if it exists.
fn watch(dir: &Path, name: &str) {
    if let Some(path) = git(dir, &["rev-parse", "--git-path", name]) {
        let path = dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
