//! The coordinator's durable state: builds, jobs, attempts, verified digests, published
//! indexes, agent standing and tokens, in one SQLite file (WAL, synchronous=FULL). Every change
//! is committed before the coordinator acts on it or acknowledges it: changes go to one writer
//! thread that commits whatever is waiting together ([`writer`]), so a thousand builds share
//! disk syncs and no async task blocks on one. Reads run on the blocking pool, on a few reader
//! connections of their own, never on an async worker. The only user of rusqlite.
//!
//! # Layout
//! - this file: opening the database, its schema, how reads and writes run.
//! - [`builds`]: builds, their jobs and attempts, verified digests.
//! - [`agents`]: agent standing: failures, quarantine, revocation.
//! - [`tokens`]: join tokens and client tokens.
//! - [`writer`]: the writer thread and group commit.

mod agents;
pub mod builds;
mod tokens;
mod writer;

use rusqlite::Connection;
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::Semaphore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds something this version cannot read.
    #[error("state database: {0}")]
    Corrupt(String),
    /// The transaction holding a change could not be committed.
    #[error("state database: {0}")]
    Commit(String),
    /// A read could not run (the runtime is stopping).
    #[error("state database: a read failed: {0}")]
    Read(String),
    /// The writer thread is gone (the coordinator is stopping).
    #[error("state database: the writer has stopped")]
    Closed,
}

type Result<T> = std::result::Result<T, StoreError>;

/// Reads that run at once, each on its own connection. More wait their turn on the async side,
/// so a burst of reads never fills the blocking pool.
const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS builds (
    id          TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    state       TEXT NOT NULL,
    request     TEXT NOT NULL,
    index_digest TEXT,
    error       TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    build       TEXT NOT NULL REFERENCES builds(id),
    position    INTEGER NOT NULL,
    platform    TEXT NOT NULL,
    state       TEXT NOT NULL,
    digest      TEXT,
    media_type  TEXT,
    size        INTEGER,
    agent       TEXT,
    duration_ms INTEGER,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_build ON jobs(build, position);
CREATE TABLE IF NOT EXISTS attempts (
    job         TEXT NOT NULL REFERENCES jobs(id),
    number      INTEGER NOT NULL,
    agent       TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome     TEXT,
    detail      TEXT,
    PRIMARY KEY (job, number)
);
CREATE TABLE IF NOT EXISTS join_tokens (
    hash        TEXT PRIMARY KEY,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER,
    used_by     TEXT
);
CREATE TABLE IF NOT EXISTS client_tokens (
    name        TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE TABLE IF NOT EXISTS revoked_agents (
    name        TEXT PRIMARY KEY,
    revoked_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    name        TEXT PRIMARY KEY,
    quarantined INTEGER NOT NULL DEFAULT 0,
    reason      TEXT,
    failures    INTEGER NOT NULL DEFAULT 0
);
";

/// The state database.
#[derive(Debug)]
pub struct Store {
    readers: Mutex<Vec<Connection>>,
    reading: Semaphore,
    writer: writer::Writer,
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(path)?;
                reader.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(reader)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            readers: Mutex::new(readers),
            reading: Semaphore::new(READERS),
            writer: writer::Writer::start(conn)?,
        })
    }

    /// Runs `read` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self.reading.acquire().await.map_err(|e| StoreError::Read(e.to_string()))?;
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop().expect("a reader per permit");
        let done = tokio::task::spawn_blocking(move || {
            let result = read(&conn);
            (conn, result)
        })
        .await;
        match done {
            Ok((conn, result)) => {
                // Back in the pool before the permit is.
                self.readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                drop(permit);
                result
            }
            Err(e) => {
                // The connection went down with the read: one reader fewer from now on.
                permit.forget();
                Err(StoreError::Read(e.to_string()))
            }
        }
    }

    /// One statement as one change; returns the rows it changed.
    async fn execute(&self, sql: &'static str, params: impl rusqlite::Params + Send + 'static) -> Result<usize> {
        self.writer.write(move |c| Ok(c.execute(sql, params)?)).await
    }
}
