//! A job's output on its way to the coordinator: a bounded queue between the build (which
//! produces lines as fast as the engine prints them) and the job stream (which sends them as
//! fast as the network and the coordinator take them). Lines are cut to a size the
//! coordinator keeps, and when the queue is full lines are dropped and counted rather than
//! held: a `--test` that prints without end cannot grow the agent's memory.

use tokio::sync::mpsc;

use archfarm_shared::protocol::{cut, MAX_LOG_LINE};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Lines queued at most per job.
pub const QUEUED_LINES: usize = 1024;
/// Longest line sent: room is left for the note of what was cut, so that the coordinator,
/// which keeps [`MAX_LOG_LINE`] bytes, never cuts the same line again.
const MAX_SENT: usize = MAX_LOG_LINE - 64;

/// The sending end of a job's output; cheap to clone.
#[derive(Debug, Clone)]
pub struct JobLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// The receiving end, for the job stream.
#[derive(Debug)]
pub struct JobLogReceiver {
    rx: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
}

/// A new job's output: the sender for the build, the receiver for the job stream.
pub fn channel() -> (JobLog, JobLogReceiver) {
    let (tx, rx) = mpsc::channel(QUEUED_LINES);
    let dropped = Arc::new(AtomicU64::default());
    (JobLog { tx, dropped: dropped.clone() }, JobLogReceiver { rx, dropped })
}

fn notice(dropped: u64) -> String {
    format!("({dropped} lines of output dropped: the build printed faster than they could be sent)")
}

impl JobLog {
    /// Queues `line`, cut to fit [`MAX_LOG_LINE`]; drops it when the queue is full (and says so with
    /// the next line that fits, or when the job ends).
    pub fn send(&self, line: String) {
        let dropped = self.dropped.swap(0, Relaxed);
        if dropped > 0 && self.tx.try_send(notice(dropped)).is_err() {
            self.dropped.fetch_add(dropped, Relaxed);
        }
        if self.tx.try_send(cut(line, MAX_SENT)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl JobLogReceiver {
    /// The next line, once one is queued; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }

    /// Every line still queued, then how many were dropped since the last notice: the job's
    /// last words, after which nothing more is sent.
    pub fn rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.rx.try_recv() {
            lines.push(line);
        }
        match self.dropped.swap(0, Relaxed) {
            0 => {}
            dropped => lines.push(notice(dropped)),
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_bounded_cut_and_counted() {
        let (log, mut rx) = channel();
        for i in 0..QUEUED_LINES * 10 {
            log.send(format!("{i} {}", "x".repeat(100 * 1024)));
        }
        let mut kept = Vec::new();
        while let Ok(line) = rx.rx.try_recv() {
            kept.push(line);
        }
        assert_eq!(kept.len(), QUEUED_LINES, "no more than the queue holds");
        assert!(kept.iter().all(|l| l.len() <= MAX_LOG_LINE), "every line cut to what the coordinator keeps whole");
        // Once the stream catches up, the next line says how many went.
        log.send("after".into());
        assert_eq!(rx.rx.try_recv().unwrap(), notice(QUEUED_LINES as u64 * 9));
        assert_eq!(rx.rx.try_recv().unwrap(), "after");
    }

    #[test]
    fn a_flood_that_ends_the_job_is_still_counted() {
        let (log, mut rx) = channel();
        for i in 0..QUEUED_LINES + 5 {
            log.send(format!("line {i}"));
        }
        drop(log);
        let rest = rx.rest();
        assert_eq!(rest.len(), QUEUED_LINES + 1, "the queued lines, then the notice");
        assert_eq!(rest.last().unwrap(), &notice(5));
        assert!(rx.rest().is_empty(), "said once");
    }
}
