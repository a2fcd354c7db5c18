//! A job's output on its way to the coordinator: a bounded queue between the build (which
//! produces lines as fast as the engine prints them) and the job stream (which sends them as
//! fast as the network and the coordinator take them). Lines are cut to a size the
//! coordinator keeps, and when the queue is full lines are dropped and counted rather than
//! held: a `--test` that prints without end cannot grow the agent's memory.

use tokio::sync::mpsc;

/// Lines queued at most per job.
pub const QUEUED_LINES: usize = 1024;
/// Longest line sent, in bytes; the coordinator keeps no more of one.
pub const MAX_LINE: usize = 8 * 1024;

/// The sending end of a job's output; cheap to clone.
#[derive(Debug, Clone)]
pub struct JobLog {
    tx: mpsc::Sender<String>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A new job's output: the sender for the build, the receiver for the job stream.
pub fn channel() -> (JobLog, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel(QUEUED_LINES);
    (JobLog { tx, dropped: Default::default() }, rx)
}

impl JobLog {
    /// Queues `line`, cut to [`MAX_LINE`]; drops it when the queue is full (and says so with
    /// the next line that fits).
    pub fn send(&self, line: String) {
        use std::sync::atomic::Ordering::Relaxed;
        let dropped = self.dropped.swap(0, Relaxed);
        if dropped > 0 {
            let notice =
                format!("({dropped} lines of output dropped: the build printed faster than they could be sent)");
            if self.tx.try_send(notice).is_err() {
                self.dropped.fetch_add(dropped, Relaxed);
            }
        }
        if self.tx.try_send(cut(line)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// `line` cut to at most [`MAX_LINE`] bytes, at a character boundary.
fn cut(mut line: String) -> String {
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" …(cut)");
    }
    line
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
        while let Ok(line) = rx.try_recv() {
            kept.push(line);
        }
        assert_eq!(kept.len(), QUEUED_LINES, "no more than the queue holds");
        assert!(kept.iter().all(|l| l.len() <= MAX_LINE + 16), "every line cut");
        // Once the stream catches up, the next line says how many went.
        log.send("after".into());
        let notice = rx.try_recv().unwrap();
        assert_eq!(
            notice,
            format!("({} lines of output dropped: the build printed faster than they could be sent)", QUEUED_LINES * 9)
        );
        assert_eq!(rx.try_recv().unwrap(), "after");
    }
}
