//! A minimal keep-alive HTTP/1.1 receiver for benchmarks (`scripts/bench.sh`): answers every
//! request `200 OK` at once, one thread per connection, and counts what it got.
//!
//! ```text
//! cargo run --release --example webhook_receiver [PORT [RECORD]]  # 0 or none: any free port
//! ```
//! Prints `listening on 127.0.0.1:PORT` once bound. `GET /stats` answers
//! `posts N unique M connections C` (POSTs, distinct `webhook-id`s, accepted connections).
//! With RECORD (a file, appended to): one line per POST, `WEBHOOK-ID RECEIVED T`, written
//! before the answer (one write, unbuffered: a kill never loses the line of an answered POST);
//! RECEIVED is the Unix time in seconds, T the body's first `"t":` number or `-`
//! (`scripts/soak.sh` puts the inserting transaction's clock there).
//! Not a server for anything else: no TLS, no chunked bodies, no limits.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Counts {
    posts: AtomicU64,
    connections: AtomicU64,
    ids: Mutex<HashSet<String>>,
    record: Option<Mutex<File>>,
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let record = match std::env::args().nth(2) {
        Some(path) => Some(Mutex::new(
            File::options().create(true).append(true).open(path)?,
        )),
        None => None,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let counts = Arc::new(Counts {
        record,
        ..Counts::default()
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let counts = Arc::clone(&counts);
        std::thread::spawn(move || {
            let _ = serve(stream, &counts);
        });
    }
    Ok(())
}

/// Answers requests on one connection until the client closes it.
fn serve(stream: TcpStream, counts: &Counts) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let is_stats = line.starts_with("GET /stats");
        let (mut length, mut id) = (0usize, None);
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("webhook-id") {
                    id = Some(value.to_string());
                }
            }
        }
        let mut content = Vec::new();
        (&mut reader)
            .take(length as u64)
            .read_to_end(&mut content)?;
        let body = if is_stats {
            let unique = counts.ids.lock().map(|s| s.len()).unwrap_or(0);
            format!(
                "posts {} unique {unique} connections {}\n",
                counts.posts.load(Ordering::Relaxed),
                counts.connections.load(Ordering::Relaxed)
            )
        } else {
            counts.posts.fetch_add(1, Ordering::Relaxed);
            if let (Some(file), Some(id)) = (&counts.record, &id) {
                record(file, id, &content)?;
            }
            if let (Some(id), Ok(mut ids)) = (id, counts.ids.lock()) {
                ids.insert(id);
            }
            String::new()
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// Appends `ID RECEIVED T` for one POST (see the module's header).
fn record(file: &Mutex<File>, id: &str, body: &[u8]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let text = String::from_utf8_lossy(body);
    let t = text
        .split_once("\"t\":")
        .map(|(_, rest)| {
            let rest = rest.trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
                .unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "-".into());
    let line = format!("{id} {now:.6} {t}\n");
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    f.write_all(line.as_bytes())
}
