//! A minimal keep-alive HTTP/1.1 receiver for benchmarks (`scripts/bench.sh`): answers every
//! request `200 OK` at once, one thread per connection, and counts what it got.
//!
//! ```text
//! cargo run --release --example webhook_receiver [PORT]     # 0 or none: any free port
//! ```
//! Prints `listening on 127.0.0.1:PORT` once bound. `GET /stats` answers
//! `posts N unique M connections C` (POSTs, distinct `webhook-id`s, accepted connections).
//! Not a server for anything else: no TLS, no chunked bodies, no limits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Counts {
    posts: AtomicU64,
    connections: AtomicU64,
    ids: Mutex<HashSet<String>>,
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let counts = Arc::new(Counts::default());
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
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        let body = if is_stats {
            let unique = counts.ids.lock().map(|s| s.len()).unwrap_or(0);
            format!(
                "posts {} unique {unique} connections {}\n",
                counts.posts.load(Ordering::Relaxed),
                counts.connections.load(Ordering::Relaxed)
            )
        } else {
            counts.posts.fetch_add(1, Ordering::Relaxed);
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
