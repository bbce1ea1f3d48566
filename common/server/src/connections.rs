//! Serving connections, so that slow, idle or numerous clients cannot starve a server: a bound on
//! connections in all and from one address, a deadline for a connection's first bytes (the TLS
//! handshake and HTTP version detection included), for a request's headers, and for a
//! connection with nothing in flight (HTTP/1 keep-alive and HTTP/2 alike), HTTP/2 pings that
//! find dead peers, and a bound on HTTP/2 streams per connection.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Limits on connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Connections served at once from one IP address; more from it are closed on arrival.
    pub max_connections_per_address: usize,
    /// Time a connection has to send its first bytes: the TLS handshake, then enough to tell
    /// HTTP/1 from HTTP/2.
    pub first_bytes_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Requests in flight at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 64,
            first_bytes_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 32,
        }
    }
}

/// How long an idle connection told to close has to close by itself before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface: what a connection's first bytes are compared with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` (over TLS when given an acceptor) until `shutdown` resolves, then
/// lets requests in flight finish (up to 30 s), within [`ConnectionLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    use tower::ServiceExt;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        // Pings find peers that are gone without closing (their connection would otherwise
        // count until the idle deadline).
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = PerAddress::new(limits.max_connections_per_address);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; connection closed");
            continue;
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            tracing::warn!(%peer, "connection limit of the address reached; connection closed");
            continue;
        };
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: hyper_util::service::TowerToHyperService::new(
                app.clone()
                    .into_service()
                    .map_request(|req: hyper::Request<hyper::body::Incoming>| req.map(axum::body::Body::new)),
            ),
            activity: activity.clone(),
        };
        let builder = builder.clone();
        let tls = tls.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            // The TLS handshake and the first bytes share one deadline.
            let opened = tokio::time::timeout(limits.first_bytes_timeout, async {
                match tls {
                    Some(acceptor) => {
                        let stream = acceptor.accept(stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
                        Ok(Box::new(first_bytes(stream).await?) as Box<dyn Io>)
                    }
                    None => Ok::<_, String>(Box::new(first_bytes(stream).await?) as Box<dyn Io>),
                }
            })
            .await;
            let io = match opened {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "connection closed before its first request"),
                Err(_) => return tracing::debug!(%peer, "no first bytes in time; connection closed"),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(100)));
            let mut draining = false;
            // Set when an idle connection is told to close: HTTP/2's graceful close waits for
            // the client to answer a ping, which an idle client may never do.
            let mut idle_close: Option<Pin<Box<tokio::time::Sleep>>> = None;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stopping.changed(), if !draining => {
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    _ = tick.tick(), if !draining => {
                        if activity.idle_for() >= limits.idle_timeout {
                            tracing::debug!(%peer, "idle connection closed");
                            conn.as_mut().graceful_shutdown();
                            draining = true;
                            idle_close = Some(Box::pin(tokio::time::sleep(IDLE_CLOSE_GRACE)));
                        }
                    }
                    _ = async { idle_close.as_mut().expect("set").await }, if idle_close.is_some() => break,
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: all slots back means all connections done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open at shutdown");
    }
    Ok(())
}

/// A connection's stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads a connection's first bytes: enough to tell HTTP/2's preface from anything else (then
/// HTTP/1, whose headers have their own deadline). The bytes read are given back first.
async fn first_bytes<S: AsyncRead + AsyncWrite + Unpin + Send>(mut stream: S) -> Result<Rewound<S>, String> {
    let mut prefix = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; 24];
    while prefix.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&prefix) {
        let n = stream.read(&mut buf[..H2_PREFACE.len() - prefix.len()]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the client".into());
        }
        prefix.extend_from_slice(&buf[..n]);
    }
    Ok(Rewound { prefix, read: 0, inner: stream })
}

/// A stream whose first bytes were read already: they are read again first.
struct Rewound<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.read < self.prefix.len() {
            let n = (self.prefix.len() - self.read).min(buf.remaining());
            let start = self.read;
            buf.put_slice(&self.prefix[start..start + n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The source a connection counts against: its IPv4 address, or the /64 prefix of an IPv6 one
/// (a network hands a host a /64 whole, so one host has 2^64 addresses to choose from).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Connections open per source ([`source`]).
#[derive(Clone)]
struct PerAddress {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One connection's place in [`PerAddress`], given back when it ends.
struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self { open: Arc::default(), max: max.max(1) }
    }

    fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = source(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { open: self.open.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection's requests in flight, and when the last one ended.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the end of the last request (or to the start).
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { started: Instant::now(), in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0) }
    }

    /// How long nothing has been in flight (zero while something is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Acquire)))
    }

    fn end(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service, noting its requests in flight for the idle deadline.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let done = EndOnDrop(self.activity.clone());
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            drop(done);
            result
        })
    }
}

/// Ends a request's time in flight however its future ends (finished or dropped).
struct EndOnDrop(Arc<Activity>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_bytes_are_read_again_and_tell_http2_from_http1() {
        use tokio::io::AsyncWriteExt;
        for (sent, h2) in [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
            (b"P".to_vec(), false),
            (H2_PREFACE.to_vec(), true),
            ([H2_PREFACE, b"\0\0\0\x04\0\0\0\0\0"].concat(), true),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(&sent).await.unwrap();
            if sent == b"P" {
                // One byte that could begin the preface: the rest is awaited (the caller's
                // deadline ends the wait).
                let waiting = tokio::time::timeout(Duration::from_millis(50), first_bytes(server)).await;
                assert!(waiting.is_err(), "waits for more");
                continue;
            }
            let mut rewound = first_bytes(server).await.unwrap();
            assert!(rewound.prefix.len() <= H2_PREFACE.len(), "no more than tells the protocol apart is read first");
            assert_eq!(rewound.prefix == H2_PREFACE, h2);
            let mut again = vec![0u8; sent.len()];
            rewound.read_exact(&mut again).await.unwrap();
            assert_eq!(again, sent, "every byte, in order");
        }
        // A client that sends part of the preface and closes.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PRI * HT").await.unwrap();
        drop(client);
        assert!(first_bytes(server).await.is_err());
    }

    #[test]
    fn an_address_holds_at_most_its_share_of_connections() {
        let limits = PerAddress::new(2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let first = limits.take(a).unwrap();
        let _second = limits.take(a).unwrap();
        assert!(limits.take(a).is_none(), "a third from one address");
        assert!(limits.take(b).is_some(), "another address is not held back");
        drop(first);
        let again = limits.take(a);
        assert!(again.is_some(), "a closed connection gives its place back");
        // An IPv6 host counts by its /64: another address of it is held back too.
        let (c, d, e): (IpAddr, IpAddr, IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2:ffff::9".parse().unwrap(),
            "2001:db8:1:3::1".parse().unwrap(),
        );
        let _third = limits.take(c).unwrap();
        let _fourth = limits.take(d).unwrap();
        assert!(limits.take(c).is_none() && limits.take(d).is_none(), "a /64 holds two");
        assert!(limits.take(e).is_some(), "another /64 is not held back");
        // An IPv4 address mapped into IPv6 is that IPv4 address.
        assert!(limits.take("::ffff:127.0.0.2".parse().unwrap()).is_none(), "127.0.0.2 holds two already");
    }

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Activity::new();
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO);
        activity.end();
        assert!(activity.idle_for() < Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }
}
