//! Child processes and bounded waits: every process a test starts is a [`Proc`], killed on drop,
//! and every wait or command run has a deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running child process with its log file; killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    /// Short name for log dumps.
    pub name: String,
    /// Combined stdout and stderr.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output sent to `log`.
    pub fn start(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        running().lock().unwrap_or_else(|e| e.into_inner()).insert(child.id());
        Proc { name: name.to_owned(), log, child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.log_or_exit(needle, timeout)
            .unwrap_or_else(|text| panic!("{} exited before logging {needle:?}; its log:\n{text}", self.name))
    }

    /// Waits (bounded) until the log contains `needle`; `Err` with the log if the process exits
    /// first (it will not log it later).
    pub fn log_or_exit(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(text);
            }
            if !self.running() {
                return Err(text);
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {} to log {needle:?}; its log:\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL, as a crash or a power cut would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit on its own; returns whether it did.
    pub fn terminate_and_wait(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Sends SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.running() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        running().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.child.id());
    }
}

fn running() -> &'static std::sync::Mutex<std::collections::HashSet<u32>> {
    static RUNNING: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> = std::sync::OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Kills every process a [`Proc`] started and has not stopped yet: for a harness interrupted by
/// a signal, which unwinds no stack and so runs no `Drop`.
pub fn kill_started_processes() {
    let pids: Vec<u32> = running().lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for pid in pids {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) for a spawned command and returns its output. Its pipes are drained while
/// it runs, so a command that prints more than a pipe holds cannot block.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("command did not finish within {timeout:?}: {out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_output(child, timeout)
}

/// Runs a command and fails the test unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let program = format!("{cmd:?}");
    let out = run_bounded(std::mem::replace(cmd, Command::new("true")), Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Output as text, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A process's resident memory, KiB (`VmRSS`); NaN when it cannot be read.
pub fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(f64::NAN)
}

/// A process's peak resident memory so far, KiB (`VmHWM`); NaN when it cannot be read.
pub fn peak_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(f64::NAN)
}
