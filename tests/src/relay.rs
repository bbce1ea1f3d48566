//! A faulty relay between the leader and the helper, for the outage tests: it forwards TCP
//! connections, and can instead answer every HTTP request with `503` and `Retry-After`, refuse
//! connections, forward requests but drop the helper's answers, or delay traffic and reset the
//! connections of a share of the requests. Faults are switched while the servers run; switching drops the
//! connections open at that moment, so that every new request meets the new fault.

use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the relay does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forwards everything.
    None,
    /// Answers every request `503 Service Unavailable` with `Retry-After: {0}`, as a helper
    /// whose database is down does.
    Unavailable(u64),
    /// Answers every request `429 Too Many Requests` with a `Retry-After` in its HTTP-date form,
    /// `{0}` seconds ahead, as a helper whose queue is full may.
    TooManyRequests(u64),
    /// Refuses connections: nothing listens on the port.
    Refuse,
    /// Forwards requests to the helper, which handles them, but drops its answers: the
    /// connection closes once the answer has begun.
    DropAnswers,
    /// As `DropAnswers`, for the requests whose request line contains the string only (for
    /// instance `"POST /tasks/"` with `"/aggregation_jobs/"`: continuation steps), and whose
    /// body begins with the step number, if one is given (an `AggregationJobContinueReq` opens
    /// with its `step`, a big-endian `u16`); the others pass. The relay reads HTTP/1.1 messages
    /// of a `Content-Length` here.
    DropAnswersTo(&'static str, Option<u16>),
    /// Delays each message one way by `base` plus up to `spread` either way, and resets the
    /// connection of `reset_ratio` of the requests, before or after the helper handled them.
    Flaky { base: Duration, spread: Duration, reset_ratio: f64 },
}

/// Counts of what the relay did.
#[derive(Default)]
pub struct RelayCounts {
    pub connections: AtomicU64,
    pub unavailable_answers: AtomicU64,
    pub dropped_answers: AtomicU64,
    pub resets: AtomicU64,
}

struct Shared {
    target: SocketAddr,
    fault: Mutex<Fault>,
    conns: Mutex<Vec<JoinHandle<()>>>,
    counts: RelayCounts,
}

/// A relay listening on `addr`, forwarding to the helper.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    /// Starts a relay on `bind` (an address of port 0 takes a free port) to `target`.
    pub async fn start(bind: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            fault: Mutex::new(Fault::None),
            conns: Mutex::default(),
            counts: RelayCounts::default(),
        });
        let relay = Self { addr, shared, listener: Mutex::new(None) };
        relay.serve(listener);
        relay
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn counts(&self) -> &RelayCounts {
        &self.shared.counts
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handle = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                shared.counts.connections.fetch_add(1, Ordering::Relaxed);
                let fault = *shared.fault.lock().unwrap();
                let s = shared.clone();
                let conn = tokio::spawn(async move { handle(inbound, s.target, fault, &s.counts).await });
                let mut conns = shared.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn);
            }
        });
        *self.listener.lock().unwrap() = Some(handle);
    }

    /// Switches to `fault`; the connections open now are dropped.
    pub async fn set(&self, fault: Fault) {
        let was = std::mem::replace(&mut *self.shared.fault.lock().unwrap(), fault);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        match (was == Fault::Refuse, fault == Fault::Refuse) {
            (false, true) => {
                // Closing the listening socket makes the kernel refuse connections.
                let listening = self.listener.lock().unwrap().take();
                if let Some(l) = listening {
                    l.abort();
                    let _ = l.await;
                }
            }
            (true, false) => {
                let listener = TcpListener::bind(self.addr).await.unwrap();
                self.serve(listener);
            }
            _ => {}
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(l) = self.listener.lock().unwrap().take() {
            l.abort();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Reads HTTP/1.1 requests (a head, then a body of its `Content-Length`) and answers each with
/// `status` and `Retry-After` (`retry_after` seconds, in the HTTP-date form if `as_date`), keeping
/// the connection open.
async fn answer_unavailable(
    mut inbound: TcpStream,
    status: &str,
    retry_after: u64,
    as_date: bool,
    counts: &RelayCounts,
) {
    let mut buf = Vec::new();
    while read_message(&mut inbound, &mut buf).await.is_some() {
        counts.unavailable_answers.fetch_add(1, Ordering::Relaxed);
        let retry_after = match as_date {
            true => httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(retry_after)),
            false => retry_after.to_string(),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nretry-after: {retry_after}\r\ncontent-type: application/problem+json\r\n\
             content-length: 2\r\n\r\n{{}}"
        );
        if inbound.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn handle(inbound: TcpStream, target: SocketAddr, fault: Fault, counts: &RelayCounts) {
    match fault {
        Fault::None => {
            if let Ok(outbound) = TcpStream::connect(target).await {
                let (mut a, mut b) = (inbound, outbound);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
        }
        Fault::Refuse => drop(inbound),
        Fault::Unavailable(retry_after) => {
            answer_unavailable(inbound, "503 Service Unavailable", retry_after, false, counts).await
        }
        Fault::TooManyRequests(retry_after) => {
            answer_unavailable(inbound, "429 Too Many Requests", retry_after, true, counts).await
        }
        Fault::DropAnswers => {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let (mut cr, mut cw) = inbound.into_split();
            let (mut hr, mut hw) = outbound.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut hw).await;
            });
            // The helper's answer begins: it has handled the request. The leader never sees it.
            let mut first = [0u8; 1];
            if matches!(hr.read(&mut first).await, Ok(n) if n > 0) {
                counts.dropped_answers.fetch_add(1, Ordering::Relaxed);
                up.abort();
                let _ = cw.shutdown().await;
            }
        }
        Fault::DropAnswersTo(pattern, step) => {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            drop_matching_answers(inbound, outbound, pattern, step, counts).await;
        }
        Fault::Flaky { base, spread, reset_ratio } => {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            delayed_relay(inbound, outbound, base, spread, reset_ratio, counts).await;
        }
    }
}

/// Reads one HTTP/1.1 message (a head, then a body of its `Content-Length`) from `stream`,
/// `buf` holding what was read past the last one.
async fn read_message<R: AsyncReadExt + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf.drain(..head_end + length).collect())
}

/// Forwards requests one at a time; the helper's answer to a request whose request line
/// contains `pattern` (and whose body begins with `step`, if given) is dropped (the connection
/// closes), after the helper handled it.
async fn drop_matching_answers(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    pattern: &str,
    step: Option<u16>,
    counts: &RelayCounts,
) {
    let (mut from_leader, mut from_helper) = (Vec::new(), Vec::new());
    while let Some(request) = read_message(&mut inbound, &mut from_leader).await {
        let line_end = request.iter().position(|b| *b == b'\r').unwrap_or(request.len());
        let body = request.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &request[i + 4..]);
        let matches = String::from_utf8_lossy(&request[..line_end]).contains(pattern)
            && step.is_none_or(|step| body.is_some_and(|b| b.starts_with(&step.to_be_bytes())));
        if outbound.write_all(&request).await.is_err() {
            return;
        }
        let Some(answer) = read_message(&mut outbound, &mut from_helper).await else { return };
        if matches {
            counts.dropped_answers.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if inbound.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Copies both ways, each message (the bytes sent one way before the other side answers) held
/// back by a delay drawn from `base ± spread`. Each request has a `reset_ratio` chance of having
/// its connection reset: before the helper sees it, or once the helper's answer begins (the
/// helper then handled it, and the leader never learns its answer).
async fn delayed_relay(
    inbound: TcpStream,
    outbound: TcpStream,
    base: Duration,
    spread: Duration,
    reset_ratio: f64,
    counts: &RelayCounts,
) {
    let delay = move || {
        let jitter = spread.as_secs_f64() * (rand::rng().random::<f64>() * 2.0 - 1.0);
        Duration::from_secs_f64((base.as_secs_f64() + jitter).max(0.0))
    };
    let (mut cr, mut cw) = inbound.into_split();
    let (mut hr, mut hw) = outbound.into_split();
    let (mut cbuf, mut hbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // Which way the last bytes went (`true`: towards the helper); a change starts a message.
    let mut upstream = None;
    let mut reset_on_answer = false;
    loop {
        tokio::select! {
            read = cr.read(&mut cbuf) => {
                let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                if upstream != Some(true) {
                    upstream = Some(true);
                    if rand::rng().random_bool(reset_ratio.clamp(0.0, 1.0)) {
                        counts.resets.fetch_add(1, Ordering::Relaxed);
                        if rand::rng().random_bool(0.5) {
                            let _ = cr.as_ref().set_zero_linger();
                            return;
                        }
                        reset_on_answer = true;
                    }
                    tokio::time::sleep(delay()).await;
                }
                if hw.write_all(&cbuf[..n]).await.is_err() {
                    break;
                }
            }
            read = hr.read(&mut hbuf) => {
                let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                if reset_on_answer {
                    let _ = cr.as_ref().set_zero_linger();
                    return;
                }
                if upstream != Some(false) {
                    upstream = Some(false);
                    tokio::time::sleep(delay()).await;
                }
                if cw.write_all(&hbuf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = cw.shutdown().await;
}
