//! The `stdout` target: one JSON line per event on standard output, written before the event
//! counts as delivered. A failed write (a closed pipe, a full disk) is not the event's
//! fault: the event is given back without using an attempt and the worker stops.
//!
//! Invariant: stdout receives whole lines only.
//! - Within a process the stdout lock serialises threads. With several worker processes,
//!   every line is written under an exclusive lock on a file the supervisor created for this:
//!   a pipe takes up to 4 KiB atomically, but another process's short line can land between
//!   the pieces of a longer one.
//! - A failed or short write to a regular file is taken back (`ftruncate` to where the line
//!   started, which works on a full disk since it frees space). Where that is impossible (a
//!   pipe), the partial line is ended with a newline, best effort, and this process writes
//!   nothing more to stdout.
//! - A process's first line never continues a torn one: when a regular file does not end in
//!   a newline where that line would start (an earlier run, or a restarted worker's
//!   predecessor, died mid-line), a newline goes first. Checked once per process, not per
//!   line: a read per line costs more than the rare tear it would catch.
//!
//! At start-up the supervisor refuses a closed stdout when a route writes to it (the Rust
//! runtime would quietly reopen fd 1 on /dev/null before `main`; a constructor that runs
//! earlier records it), and warns when stdout is /dev/null.

use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome, Router};
use crate::warn;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

const FD: libc::c_int = 1;

/// Set when a partial line could be neither taken back nor proven harmless: from then on this
/// process gives every event back instead of writing.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Whether fd 1 was closed when the process started.
static CLOSED_AT_START: AtomicBool = AtomicBool::new(false);

extern "C" fn probe_fd1() {
    // SAFETY: F_GETFD only reads the descriptor's flags; no memory is touched.
    if unsafe { libc::fcntl(FD, libc::F_GETFD) } == -1 {
        CLOSED_AT_START.store(true, Ordering::SeqCst);
    }
}

/// Runs before `main`, so before the runtime reopens a closed fd 1 on /dev/null. `main_with`
/// refers to it, so that the linker keeps it when the library is linked into a binary.
#[used]
#[link_section = ".init_array"]
pub static PROBE_AT_START: extern "C" fn() = probe_fd1;

/// The supervisor's check once the routes are known: a closed stdout with a route writing to
/// it is a usage error; /dev/null is allowed (benchmarks use it) with a warning.
pub fn check_at_start(router: &Router) -> Result<()> {
    let routes = router.routes_to("stdout");
    if routes.is_empty() {
        return Ok(());
    }
    let quoted: Vec<String> = routes.iter().map(|r| format!("`{r}`")).collect();
    let which = match quoted.len() {
        1 => format!("route {} writes", quoted[0]),
        _ => format!("routes {} write", quoted.join(", ")),
    };
    if CLOSED_AT_START.load(Ordering::SeqCst) {
        return Err(Error::Usage(format!(
            "stdout is closed but {which} to it; redirect stdout to a file or a pipe \
             (or to /dev/null to discard the events), or route the events elsewhere"
        )));
    }
    if is_dev_null() {
        warn!(
            "stdout is /dev/null: events routed to it ({}) are marked done and discarded",
            routes.join(", ")
        );
    }
    Ok(())
}

fn is_dev_null() -> bool {
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(FD, &mut st) } != 0 {
        return false;
    }
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == null.rdev()
}

/// What fd 1 is, looked at once, at the first line.
struct Fd1 {
    /// A regular file: a failed write can be taken back.
    regular: bool,
    /// Opened with O_APPEND: lines land at the end of the file, not at the offset.
    append: bool,
    /// The same file opened for reading, to see whether it ends mid-line (None when it is
    /// not a regular file or cannot be read).
    reader: Option<File>,
}

impl Fd1 {
    fn probe() -> Fd1 {
        // SAFETY: fstat writes into the zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let regular =
            unsafe { libc::fstat(FD, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        // SAFETY: F_GETFL only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(FD, libc::F_GETFL) };
        let append = flags != -1 && flags & libc::O_APPEND != 0;
        let reader = regular
            .then(|| File::open("/proc/self/fd/1").ok())
            .flatten();
        Fd1 {
            regular,
            append,
            reader,
        }
    }
}

pub struct Stdout {
    /// Shared with the other worker processes (each opens the file itself).
    cross_process: Option<File>,
    fd1: OnceLock<Fd1>,
    /// Whether this process has looked for a torn last line yet.
    tail_checked: AtomicBool,
}

impl Stdout {
    pub fn new(lock_path: Option<&Path>) -> Result<Stdout> {
        let cross_process = match lock_path {
            Some(p) => Some(File::open(p).map_err(|e| {
                Error::Other(format!("cannot open stdout lock {}: {e}", p.display()))
            })?),
            None => None,
        };
        Ok(Stdout {
            cross_process,
            fd1: OnceLock::new(),
            tail_checked: AtomicBool::new(false),
        })
    }
}

impl Handler for Stdout {
    fn handle(&self, event: &Event) -> Outcome {
        let mut line = event.to_json_line();
        line.push('\n');
        // The in-process lock first: threads of one process share the lock file's open file
        // description, so only one of them at a time may take and release the file lock.
        let mut out = io::stdout().lock();
        // What a compiled-in handler printed goes out first; our lines bypass the buffer, so
        // that a failed write leaves nothing behind in it.
        let _ = out.flush();
        if BROKEN.load(Ordering::SeqCst) {
            return Outcome::Abort(
                "stdout is unusable: an earlier line could not be completed or taken back".into(),
            );
        }
        if let Some(f) = &self.cross_process {
            if let Err(e) = f.lock() {
                return Outcome::Retry(format!("cannot lock stdout: {e}"));
            }
        }
        let fd1 = self.fd1.get_or_init(Fd1::probe);
        let check_tail = !self.tail_checked.swap(true, Ordering::SeqCst);
        let written = write_line(fd1, line.as_bytes(), check_tail);
        if let Some(f) = &self.cross_process {
            let _ = f.unlock();
        }
        drop(out);
        match written {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Abort(format!("cannot write to stdout: {e}")),
        }
    }
}

/// Writes one line to fd 1; on failure nothing of it stays (or, on a pipe, it is ended).
/// `check_tail`: end a torn last line first. Called under the locks.
fn write_line(fd1: &Fd1, line: &[u8], check_tail: bool) -> io::Result<()> {
    let start = if fd1.regular {
        line_start(fd1.append)
    } else {
        None
    };
    let mut buf = Cow::Borrowed(line);
    let reader = fd1.reader.as_ref().filter(|_| check_tail);
    if let (Some(pos), Some(reader)) = (start, reader) {
        let mut last = [0u8; 1];
        if pos > 0 && matches!(reader.read_at(&mut last, pos - 1), Ok(1) if last[0] != b'\n') {
            let mut fixed = Vec::with_capacity(line.len() + 1);
            fixed.push(b'\n');
            fixed.extend_from_slice(line);
            buf = Cow::Owned(fixed);
        }
    }
    match write_all(&buf) {
        Ok(()) => Ok(()),
        Err((0, e)) => Err(e),
        Err((_, e)) => {
            if let Some(pos) = start {
                if cut_back(pos, fd1.append).is_ok() {
                    return Err(e);
                }
            }
            let _ = write_all(b"\n");
            BROKEN.store(true, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// Where the next write to the regular file on fd 1 lands.
fn line_start(append: bool) -> Option<u64> {
    // SAFETY: fstat and lseek only read descriptor state into values we own.
    let pos = if append {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(FD, &mut st) } != 0 {
            return None;
        }
        st.st_size
    } else {
        unsafe { libc::lseek(FD, 0, libc::SEEK_CUR) }
    };
    u64::try_from(pos).ok()
}

/// Truncates the file on fd 1 back to `pos` (and moves the shared offset there).
fn cut_back(pos: u64, append: bool) -> io::Result<()> {
    let off = libc::off_t::try_from(pos).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: plain syscalls on fd 1.
    if unsafe { libc::ftruncate(FD, off) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if !append && unsafe { libc::lseek(FD, off, libc::SEEK_SET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `write(2)` until all of `buf` is out; on failure, how much was written and why not.
fn write_all(mut buf: &[u8]) -> std::result::Result<(), (usize, io::Error)> {
    let mut done = 0;
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`, which outlives the call.
        let n = unsafe { libc::write(FD, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((done, e));
        }
        if n == 0 {
            return Err((done, io::ErrorKind::WriteZero.into()));
        }
        let n = n as usize;
        done += n;
        buf = &buf[n..];
    }
    Ok(())
}
