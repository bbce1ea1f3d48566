//! Connection limits with a real server: a client that never finishes its headers is cut off,
//! and connections beyond the limit are closed on arrival while the server keeps serving.

use duet_cli::process::{sibling_binary, Output, ServerProcess};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection; how long that took (`None` if still open).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

#[test]
fn slow_headers_are_cut_off_and_excess_connections_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--database",
        &format!("sqlite:{}", dir.path().join("h.db").display()),
        "--header-read-timeout-seconds",
        "1",
        "--max-connections",
        "2",
    ]
    .map(String::from)
    .to_vec();
    let helper = ServerProcess::spawn(
        &sibling_binary("duet-helper").unwrap(),
        &args,
        &[
            ("DUET_ADMIN_TOKEN", "admin-token-for-the-limits-test-0123456789"),
            ("DUET_DATABASE_KEYS", duet_tests::DATABASE_KEY),
            ("RUST_LOG", "warn"),
        ],
        Output::Prefixed("duet-helper".into()),
    )
    .unwrap();
    // Two clients that start a request and never finish its headers.
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(helper.addr).unwrap();
            s.write_all(b"GET /hpke_config HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A third connection, over the limit, is closed at once.
    let mut third = TcpStream::connect(helper.addr).unwrap();
    let _ = third.write_all(b"GET /hpke_config HTTP/1.1\r\nHost: x\r\n\r\n");
    let closed = closed_within(&mut third, Duration::from_secs(2));
    assert!(closed.is_some_and(|d| d < Duration::from_millis(900)), "over the limit: {closed:?}");
    // The slow ones are cut off after the header timeout (1 s), not left open.
    for s in &mut slow {
        let closed = closed_within(s, Duration::from_secs(5));
        assert!(closed.is_some(), "a slow client was not cut off");
    }
    // With them gone, the server answers normally.
    let mut ok = TcpStream::connect(helper.addr).unwrap();
    ok.write_all(b"GET /hpke_config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    ok.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..answer.len().min(40)]));
}
