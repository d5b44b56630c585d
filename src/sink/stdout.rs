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
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

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
    let (Ok(null), Ok(fd1)) = (
        std::fs::metadata("/dev/null"),
        std::fs::metadata("/proc/self/fd/1"),
    ) else {
        return false;
    };
    fd1.file_type().is_char_device() && fd1.rdev() == null.rdev()
}

/// What fd 1 is, looked at once, at the first batch.
struct Fd1 {
    /// fd 1, duplicated: the same open file description (offset, append flag), so writing,
    /// seeking and truncating through it is doing so on stdout, with std's safe calls.
    file: File,
    /// A regular file: a failed write can be taken back.
    regular: bool,
    /// Opened with O_APPEND: lines land at the end of the file, not at the offset.
    append: bool,
    /// The same file opened for reading, to see whether it ends mid-line (None when it is
    /// not a regular file or cannot be read).
    reader: Option<File>,
}

impl Fd1 {
    fn probe() -> io::Result<Fd1> {
        // SAFETY: fd 1 is open for the whole process (the runtime reopens a closed one on
        // /dev/null before `main`); it is only borrowed to duplicate it.
        let file = File::from(unsafe { BorrowedFd::borrow_raw(FD) }.try_clone_to_owned()?);
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        // SAFETY: F_GETFL only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let append = flags != -1 && flags & libc::O_APPEND != 0;
        let reader = regular
            .then(|| File::open("/proc/self/fd/1").ok())
            .flatten();
        Ok(Fd1 {
            file,
            regular,
            append,
            reader,
        })
    }

    /// Where the next write to the regular file lands.
    fn line_start(&self) -> Option<u64> {
        if self.append {
            self.file.metadata().ok().map(|m| m.len())
        } else {
            (&self.file).stream_position().ok()
        }
    }

    /// Truncates the file back to `pos` (and moves the shared offset there).
    fn cut_back(&self, pos: u64) -> io::Result<()> {
        self.file.set_len(pos)?;
        if !self.append {
            (&self.file).seek(SeekFrom::Start(pos))?;
        }
        Ok(())
    }

    /// `write(2)` until all of `buf` is out; on failure, how much was written and why not.
    fn write_all(&self, mut buf: &[u8]) -> std::result::Result<(), (usize, io::Error)> {
        let mut done = 0;
        while !buf.is_empty() {
            match (&self.file).write(buf) {
                Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    done += n;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }
}

pub struct Stdout {
    /// Shared with the other worker processes (each opens the file itself).
    cross_process: Option<File>,
    fd1: OnceLock<io::Result<Fd1>>,
    /// Whether this process has looked for a torn last line yet.
    tail_checked: AtomicBool,
    /// Line buffers to reuse (one per handler thread at most), so that a batch's lines cost
    /// no allocation once the first batches ran.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// A spare buffer above this size is dropped rather than kept.
const KEEP_BUFFER: usize = 1 << 20;

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
            spare: Mutex::new(Vec::new()),
        })
    }
}

impl Handler for Stdout {
    fn handle(&self, event: &Event) -> Outcome {
        let mut outcomes = self.handle_batch(std::slice::from_ref(event));
        outcomes.pop().unwrap_or(Outcome::Delivered)
    }

    /// A batch's lines go out in one write (per lock), so the cost per event is building its
    /// line.
    fn batched(&self) -> bool {
        true
    }

    fn handle_batch(&self, events: &[Event]) -> Vec<Outcome> {
        let mut buf = lock(&self.spare).pop().unwrap_or_default();
        buf.clear();
        for e in events {
            e.write_json_line(&mut buf);
            buf.push(b'\n');
        }
        let outcomes = self.write_batch(events, &buf);
        if buf.capacity() <= KEEP_BUFFER {
            lock(&self.spare).push(buf);
        }
        outcomes
    }
}

impl Stdout {
    /// Writes a batch's lines (`buf`), under the locks; one outcome per event.
    fn write_batch(&self, events: &[Event], buf: &[u8]) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; events.len()];
        // The in-process lock first: threads of one process share the lock file's open file
        // description, so only one of them at a time may take and release the file lock.
        let mut out = io::stdout().lock();
        // What a compiled-in handler printed goes out first; our lines bypass the buffer, so
        // that a failed write leaves nothing behind in it.
        let _ = out.flush();
        if BROKEN.load(Ordering::SeqCst) {
            return all(Outcome::Abort(
                "stdout is unusable: an earlier line could not be completed or taken back".into(),
            ));
        }
        let fd1 = match self.fd1.get_or_init(Fd1::probe) {
            Ok(fd1) => fd1,
            Err(e) => return all(Outcome::Abort(format!("cannot use stdout: {e}"))),
        };
        if let Some(f) = &self.cross_process {
            if let Err(e) = f.lock() {
                return all(Outcome::Retry(format!("cannot lock stdout: {e}")));
            }
        }
        let check_tail = !self.tail_checked.swap(true, Ordering::SeqCst);
        let written = write_lines(fd1, buf, check_tail);
        if let Some(f) = &self.cross_process {
            let _ = f.unlock();
        }
        drop(out);
        let Err((kept, e)) = written else {
            return all(Outcome::Delivered);
        };
        // The lines within the first `kept` bytes are out for good; the rest are not.
        let mut end = 0;
        events
            .iter()
            .zip(buf.split_inclusive(|b| *b == b'\n'))
            .map(|(_, line)| {
                end += line.len();
                if end <= kept {
                    Outcome::Delivered
                } else {
                    Outcome::Abort(format!("cannot write to stdout: {e}"))
                }
            })
            .collect()
    }
}

/// Writes whole lines (`buf` ends with a newline) to fd 1. `check_tail`: end a torn last line
/// first. Called under the locks. On failure: how many bytes of `buf` stay written, always
/// whole lines — a regular file is cut back to the last whole line; where that is impossible
/// (a pipe), a partial line is ended with a newline, best effort, and this process writes
/// nothing more.
fn write_lines(
    fd1: &Fd1,
    buf: &[u8],
    check_tail: bool,
) -> std::result::Result<(), (usize, io::Error)> {
    let start = if fd1.regular { fd1.line_start() } else { None };
    let mut out = Cow::Borrowed(buf);
    let reader = fd1.reader.as_ref().filter(|_| check_tail);
    if let (Some(pos), Some(reader)) = (start, reader) {
        let mut last = [0u8; 1];
        if pos > 0 && matches!(reader.read_at(&mut last, pos - 1), Ok(1) if last[0] != b'\n') {
            let mut fixed = Vec::with_capacity(buf.len() + 1);
            fixed.push(b'\n');
            fixed.extend_from_slice(buf);
            out = Cow::Owned(fixed);
        }
    }
    let prefix = out.len() - buf.len();
    let (n, e) = match fd1.write_all(&out) {
        Ok(()) => return Ok(()),
        Err((0, e)) => return Err((0, e)),
        Err(failed) => failed,
    };
    let done = n.saturating_sub(prefix);
    let kept = buf[..done]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if kept == done {
        return Err((kept, e));
    }
    if let Some(pos) = start {
        if fd1.cut_back(pos + (prefix + kept) as u64).is_ok() {
            return Err((kept, e));
        }
    }
    let _ = fd1.write_all(b"\n");
    BROKEN.store(true, Ordering::SeqCst);
    Err((kept, e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
