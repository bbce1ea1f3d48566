//! duet's servers as child processes: found next to the running binary, started on a port the
//! OS picks, and stopped gracefully (SIGTERM) or hard (SIGKILL). `duet demo` and the end-to-end
//! tests run their leader and helper this way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where `name` (e.g. `duet-leader`) lives: next to the current executable, or one folder up
/// (test binaries run from `target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the running binary: {e}"))?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let candidate = d.join(&file);
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    Err(format!(
        "{name} was not found next to {}; build every binary first (cargo build --release --workspace)",
        exe.display()
    ))
}

/// What to do with a server's output after its start-up line.
#[derive(Clone, Debug)]
pub enum Output {
    /// Copied to our standard error, each line prefixed (tests: shown when a test fails).
    Prefixed(String),
    /// Kept in memory, each line, for a test to inspect.
    Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
    Discard,
}

/// A running server process.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`), when the server has one.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin API's own listener (`--admin-listen`), when the server has one.
    pub admin_addr: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `binary` with `args` and waits for its `listening on ADDR` line (noting the
    /// `metrics listening on ADDR` and `admin listening on ADDR` lines printed before it).
    pub fn spawn(binary: &Path, args: &[String], envs: &[(&str, &str)], output: Output) -> Result<Self, String> {
        let mut cmd = Command::new(binary);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let listener = ["", "metrics ", "admin "]
                        .iter()
                        .any(|prefix| line.strip_prefix(prefix).is_some_and(|l| l.starts_with("listening on ")));
                    if listener {
                        let _ = tx.send(line.clone());
                    }
                    match &output {
                        Output::Prefixed(p) => eprintln!("[{p}] {line}"),
                        Output::Capture(lines) => lines.lock().unwrap_or_else(|e| e.into_inner()).push(line),
                        Output::Discard => {}
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut metrics_addr, mut admin_addr) = (None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let (which, rest) = line.split_once("listening on ").unwrap_or_default();
                    let addr: SocketAddr = rest
                        .trim()
                        .parse()
                        .map_err(|e| format!("{}: bad start-up line {line:?}: {e}", binary.display()))?;
                    match which {
                        "metrics " => metrics_addr = Some(addr),
                        "admin " => admin_addr = Some(addr),
                        _ => return Ok(Self { child, addr, metrics_addr, admin_addr }),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if left > Duration::ZERO => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("{} exited at start-up ({status})", binary.display()));
                    }
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!("{} did not start listening ({status})", binary.display()));
                }
            }
        }
    }

    /// The server's base URL, `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's PID has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL: the process gets no chance to clean up, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh database key (32 random bytes, URL-safe base64), for `duet database-key` and for the
/// servers `duet demo` and `duet bench` start on databases that live as long as the run.
pub fn database_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
