//! Group commit. Every change to the state database runs on one writer thread, which applies
//! the changes waiting at that moment in one transaction and syncs the disk once for all of
//! them. A caller hears back only after the commit holding its change is durable, so "recorded
//! before acted on" holds as before; concurrent builds share the disk sync instead of queueing
//! for one each. A change that fails rolls back to its own savepoint and leaves the others in
//! its batch alone.

use super::{Result, StoreError};
use rusqlite::Connection;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Changes applied in one transaction at most.
const MAX_BATCH: usize = 512;

/// Told whether the transaction holding a change committed.
type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A change: applied to the writer's connection, it returns how to answer its caller.
type Change = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The handle callers send changes through; the thread ends when it is dropped.
#[derive(Debug)]
pub(super) struct Writer {
    changes: mpsc::Sender<Change>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: Connection) -> Result<Writer> {
        let (changes, rx) = mpsc::channel::<Change>();
        std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || run(&conn, &rx))
            .map_err(|e| StoreError::Commit(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { changes })
    }

    /// Applies `change` and returns its result once it is committed to disk.
    pub(super) async fn write<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let change: Change = Box::new(move |conn| {
            let outcome = in_savepoint(conn, change);
            Box::new(move |committed| {
                let _ = tx.send(committed.map_err(StoreError::Commit).and(outcome));
            })
        });
        self.changes.send(change).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn in_savepoint<T>(conn: &Connection, change: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT change")?;
    let outcome = change(conn);
    if outcome.is_err() {
        conn.execute_batch("ROLLBACK TO change")?;
    }
    conn.execute_batch("RELEASE change")?;
    outcome
}

fn run(conn: &Connection, rx: &mpsc::Receiver<Change>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        // Should BEGIN fail, each change's savepoint is its own transaction: slower, still right.
        let grouped = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        let replies: Vec<Reply> = batch.into_iter().map(|change| change(conn)).collect();
        let committed = if grouped {
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                format!("commit failed, nothing of it was kept: {e}")
            })
        } else {
            Ok(())
        };
        for reply in replies {
            reply(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn open(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").unwrap();
        conn
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_commit_together_and_a_failing_one_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = Arc::new(Writer::start(open(&path)).unwrap());
        let mut tasks = Vec::new();
        for k in 0..200i64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write(move |c| {
                        c.execute("INSERT INTO t (k, v) VALUES (?1, 'a')", [k])?;
                        if k % 10 == 7 {
                            // Half applied, then refused: the savepoint takes the insert back.
                            c.execute("INSERT INTO t (k, v) VALUES (?1, NULL)", [k + 1000])?;
                        }
                        Ok(k)
                    })
                    .await
            }));
        }
        let mut failed = 0;
        for (k, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(v) => assert_eq!(v, k as i64),
                Err(e) => {
                    assert_eq!(k % 10, 7, "only the changes that violate NOT NULL fail: {e}");
                    assert!(e.to_string().contains("NOT NULL"), "{e}");
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 20);
        // What the callers were told is what a fresh connection finds on disk.
        let check = Connection::open(&path).unwrap();
        let rows: i64 = check.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 180);
        let stray: i64 = check.query_row("SELECT COUNT(*) FROM t WHERE k % 10 = 7", [], |r| r.get(0)).unwrap();
        assert_eq!(stray, 0);
    }

    #[tokio::test]
    async fn a_closed_writer_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (changes, rx) = mpsc::channel::<Change>();
        drop(rx);
        let writer = Writer { changes };
        let _ = open(&dir.path().join("t.db"));
        let err = writer.write(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, StoreError::Closed), "{err}");
    }
}
