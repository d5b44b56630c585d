//! Reading a file the configuration names (`--dsn-file`, `--webhook-config` and its
//! `ca_file`s, the DSN's `sslrootcert`/`sslcert`/`sslkey`, the password file): one function
//! for all of them, and the same checks by path for `SSL_CERT_FILE`, which OpenSSL opens.
//!
//! Invariant: opening never blocks (`O_NONBLOCK`: a FIFO without a writer opens at once), only
//! a regular file is read (decided on the opened descriptor, so a file swapped after a look
//! at its path cannot slip through), and never more than its kind's cap plus one byte is read
//! (`/dev/zero`, or a file that grows while being read, cannot fill the memory).

use crate::error::{Error, Result};
use std::fmt;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a file holds, and the most it may hold.
#[derive(Clone, Copy, Debug)]
pub struct FileKind {
    /// For messages: "a DSN file".
    pub name: &'static str,
    /// Bytes.
    pub cap: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// `--dsn-file`: one connection string.
pub const DSN_FILE: FileKind = FileKind {
    name: "a DSN file",
    cap: 64 * KIB,
};
/// `--webhook-config`: JSON settings for a few routes.
pub const SETTINGS_FILE: FileKind = FileKind {
    name: "a webhook settings file",
    cap: MIB,
};
/// PEM certificates and keys: `ca_file`, `sslrootcert` (a whole CA bundle is ~250 KB),
/// `sslcert`, `sslkey`.
pub const PEM_FILE: FileKind = FileKind {
    name: "a certificate or key file",
    cap: 4 * MIB,
};
/// The libpq password file (`PGPASSFILE`, `~/.pgpass`).
pub const PASSWORD_FILE: FileKind = FileKind {
    name: "a password file",
    cap: MIB,
};

/// Why a file was not read.
#[derive(Debug)]
pub enum Refusal {
    /// It could not be opened or read (missing, no permission, ...).
    Io(std::io::Error),
    /// A directory, FIFO, device or socket: what it is.
    NotRegular(&'static str),
    /// Larger than its kind may be.
    TooLarge(FileKind),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Io(e) => write!(f, "cannot read it: {e}"),
            Refusal::NotRegular(what) => write!(f, "not a regular file ({what})"),
            Refusal::TooLarge(kind) => write!(
                f,
                "too large: {} holds at most {}",
                kind.name,
                human_bytes(kind.cap)
            ),
        }
    }
}

/// The whole of a regular file of `kind`, with the opened file's metadata (for permission
/// checks).
pub fn read_bounded(
    path: &Path,
    kind: FileKind,
) -> std::result::Result<(Vec<u8>, Metadata), Refusal> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refusal::Io)?;
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular(describe(&meta)));
    }
    if meta.len() > kind.cap {
        return Err(Refusal::TooLarge(kind));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(kind.cap + 1)
        .read_to_end(&mut bytes)
        .map_err(Refusal::Io)?;
    if bytes.len() as u64 > kind.cap {
        return Err(Refusal::TooLarge(kind));
    }
    Ok((bytes, meta))
}

/// For a file a library opens itself (OpenSSL's `SSL_CERT_FILE`): the same checks by its path,
/// without opening it.
pub fn check_path(path: &Path, kind: FileKind) -> std::result::Result<(), Refusal> {
    let meta = std::fs::metadata(path).map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular(describe(&meta)));
    }
    if meta.len() > kind.cap {
        return Err(Refusal::TooLarge(kind));
    }
    Ok(())
}

/// [`read_bounded`], refusals as a usage error (exit 2) naming `who` (the flag, variable or
/// field) and the file: `--dsn-file /dev/zero: not a regular file (a character device)`.
pub fn read_config_file(who: &str, path: &Path, kind: FileKind) -> Result<(Vec<u8>, Metadata)> {
    read_bounded(path, kind).map_err(|r| usage(who, path, &r))
}

/// `who path: why`, the path with its control characters escaped.
pub fn usage(who: &str, path: &Path, why: &dyn fmt::Display) -> Error {
    Error::Usage(format!(
        "{who} {}: {why}",
        crate::log::escape_controls(&path.to_string_lossy())
    ))
}

fn describe(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

fn human_bytes(n: u64) -> String {
    if n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &str, kind: FileKind) -> String {
        read_bounded(Path::new(path), kind).unwrap_err().to_string()
    }

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        assert_eq!(
            refusal("/dev/zero", PEM_FILE),
            "not a regular file (a character device)"
        );
        assert_eq!(refusal("/", DSN_FILE), "not a regular file (a directory)");
        assert!(refusal("/nonexistent/x", DSN_FILE).starts_with("cannot read it: "));
        let dir = std::env::temp_dir().join(format!("dbx-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            refusal(fifo.to_str().unwrap(), DSN_FILE),
            "not a regular file (a FIFO)"
        );
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
        assert_eq!(
            refusal(big.to_str().unwrap(), DSN_FILE),
            "too large: a DSN file holds at most 64 KiB"
        );
        std::fs::write(&big, vec![b'x'; 64 * 1024]).unwrap();
        assert_eq!(read_bounded(&big, DSN_FILE).unwrap().0.len(), 64 * 1024);
        let e = read_config_file("--dsn-file", Path::new("/dev/zero"), DSN_FILE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--dsn-file /dev/zero: not a regular file (a character device)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
