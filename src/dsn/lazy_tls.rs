//! A TLS connector set up on first use: building a native-tls context reads and parses the
//! system's CA bundle (~45 ms of CPU), which `sslmode=prefer` — the default — needs only when
//! the server accepts TLS. With a server that refuses it (or a connection that never gets that
//! far) nothing is built. Clones share the context, so a process builds it at most once.
//!
//! Invariant: a connection that uses TLS gets exactly the settings the DSN asked for (the
//! builder made and checked at start-up); a context that cannot be built fails that
//! connection with the reason, as a TLS error.

use native_tls::{TlsConnector, TlsConnectorBuilder};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;
use postgres_native_tls::TlsStream;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct LazyTls {
    shared: Arc<Shared>,
}

struct Shared {
    /// Taken by the first connection that needs TLS.
    builder: Mutex<Option<TlsConnectorBuilder>>,
    built: OnceLock<Result<TlsConnector, String>>,
}

impl LazyTls {
    pub fn new(builder: TlsConnectorBuilder) -> LazyTls {
        LazyTls {
            shared: Arc::new(Shared {
                builder: Mutex::new(Some(builder)),
                built: OnceLock::new(),
            }),
        }
    }
}

impl Shared {
    fn connector(&self) -> Result<TlsConnector, BoxError> {
        let built = self.built.get_or_init(|| {
            let builder = self
                .builder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match builder {
                Some(b) => b.build().map_err(|e| format!("cannot set up TLS: {e}")),
                None => Err("cannot set up TLS: its settings are gone".into()),
            }
        });
        built.clone().map_err(Into::into)
    }
}

impl MakeTlsConnect<Socket> for LazyTls {
    type Stream = TlsStream<Socket>;
    type TlsConnect = LazyConnect;
    type Error = BoxError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<LazyConnect, BoxError> {
        Ok(LazyConnect {
            shared: Arc::clone(&self.shared),
            domain: domain.to_string(),
        })
    }
}

/// One connection's TLS set-up, for `domain`.
pub struct LazyConnect {
    shared: Arc<Shared>,
    domain: String,
}

type Inner = <postgres_native_tls::TlsConnector as TlsConnect<Socket>>::Future;

impl TlsConnect<Socket> for LazyConnect {
    type Stream = TlsStream<Socket>;
    type Error = BoxError;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        match self.shared.connector() {
            Ok(c) => Handshake::Running(
                postgres_native_tls::TlsConnector::new(c, &self.domain).connect(stream),
            ),
            Err(e) => Handshake::Failed(Some(e)),
        }
    }
}

/// The handshake, or why it could not start.
pub enum Handshake {
    Running(Inner),
    Failed(Option<BoxError>),
}

impl Future for Handshake {
    type Output = Result<TlsStream<Socket>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the inner future is boxed).
        match self.get_mut() {
            Handshake::Running(inner) => inner.as_mut().poll(cx).map_err(Into::into),
            Handshake::Failed(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| "TLS handshake polled after it ended".into()))),
        }
    }
}
