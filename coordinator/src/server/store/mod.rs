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
//! - [`agents`]: agent standing: failures, quarantine; names revoked before certificates were.
//! - [`certificates`]: agent certificates by serial, join tokens and their bindings.
//! - [`tokens`]: client tokens.
//! - [`contexts`]: who uploaded each build context.
//! - [`tags`]: each tag's last write, by which build.
//! - [`history`]: what garbage collection needs: contexts in use, old builds.
//! - [`writer`]: the writer thread and group commit.

pub mod agents;
pub mod builds;
pub mod certificates;
mod contexts;
mod history;
mod retry;
mod tags;
mod tokens;
mod writer;

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_sha256  TEXT NOT NULL,
    issued_ms   INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    platforms   TEXT NOT NULL DEFAULT '',
    origin      TEXT NOT NULL,
    replaces    TEXT,
    revoked_ms  INTEGER,
    revoked_why TEXT
);
CREATE INDEX IF NOT EXISTS certificates_by_name ON certificates(name);
CREATE TABLE IF NOT EXISTS tags (
    tag         TEXT PRIMARY KEY,
    build       TEXT NOT NULL,
    build_created_ms INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    written_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS context_owners (
    digest      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    PRIMARY KEY (digest, owner)
);
CREATE TABLE IF NOT EXISTS tag_intents (
    tag         TEXT PRIMARY KEY,
    build       TEXT NOT NULL,
    build_created_ms INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    started_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    name        TEXT PRIMARY KEY,
    quarantined INTEGER NOT NULL DEFAULT 0,
    reason      TEXT,
    failures    INTEGER NOT NULL DEFAULT 0
);
";

/// Columns added after the first release, to tables that may already exist without them.
const COLUMNS: &[(&str, &str, &str)] = &[
    // NULL for tokens from before roles: read as admins.
    ("client_tokens", "role", "TEXT"),
    ("client_tokens", "scopes", "TEXT NOT NULL DEFAULT ''"),
    // A join token bound to one name and its platforms ('' for any).
    ("join_tokens", "name", "TEXT"),
    ("join_tokens", "platforms", "TEXT NOT NULL DEFAULT ''"),
    // NULL for builds from before owners.
    ("builds", "owner", "TEXT"),
    // The scopes of the token that started the build, space-separated ('' for none): its jobs
    // read only inside them, also when resumed after a restart.
    ("builds", "scopes", "TEXT NOT NULL DEFAULT ''"),
    // The verified image's provenance attestation (JSON), if it has one.
    ("jobs", "attestation", "TEXT"),
    // Attempts made before `builds retry` ran the job again: its new attempts count from here.
    ("jobs", "attempts_base", "INTEGER NOT NULL DEFAULT 0"),
    // Why the scheduler chose the attempt's agent; NULL for attempts from before.
    ("attempts", "placement", "TEXT"),
    // Drained by an administrator: no new jobs until undrained.
    ("agents", "drained", "INTEGER NOT NULL DEFAULT 0"),
];

fn add_column(conn: &Connection, table: &str, column: &str, declaration: &str) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
    if !stmt.exists([column])? {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
    }
    Ok(())
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    readers: Arc<Mutex<Vec<Connection>>>,
    reading: Arc<Semaphore>,
    writer: writer::Writer,
}

/// A reader connection lent to one read. However the read ends (done, panicked, or its caller
/// gone), dropping the lease puts the connection back in the pool before its permit is freed.
struct Lease {
    conn: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
    }
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
        for (table, column, declaration) in COLUMNS {
            add_column(&conn, table, column, declaration)?;
        }
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(path)?;
                reader.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(reader)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            readers: Arc::new(Mutex::new(readers)),
            reading: Arc::new(Semaphore::new(READERS)),
            writer: writer::Writer::start(conn)?,
        })
    }

    /// Runs `read` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self.reading.clone().acquire_owned().await.map_err(|e| StoreError::Read(e.to_string()))?;
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop().expect("a reader per permit");
        let lease = Lease { conn: Some(conn), pool: self.readers.clone(), _permit: permit };
        tokio::task::spawn_blocking(move || read(lease.conn.as_ref().expect("lent until dropped")))
            .await
            .map_err(|e| StoreError::Read(e.to_string()))?
    }

    /// Whether `sql` (`SELECT 1 … WHERE … = ?1`) finds a row for `param`.
    async fn exists(&self, sql: &'static str, param: String) -> Result<bool> {
        self.read(move |c| Ok(c.query_row(sql, [param], |_| Ok(())).optional()?.is_some())).await
    }

    /// One statement as one change; returns the rows it changed.
    async fn execute(&self, sql: &'static str, params: impl rusqlite::Params + Send + 'static) -> Result<usize> {
        self.writer.write(move |c| Ok(c.execute(sql, params)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_survive_panics_abandoned_callers_and_bursts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
        let err = store.read(|_| -> Result<()> { panic!("a read that panics") }).await.unwrap_err();
        assert!(matches!(err, StoreError::Read(_)), "{err}");
        // Callers that give up while their read still runs on the blocking pool.
        for _ in 0..READERS * 2 {
            let slow = store.read(|_| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            });
            assert!(tokio::time::timeout(Duration::from_millis(1), slow).await.is_err());
        }
        // More reads at once than there are readers: each waits its turn and gets its answer.
        let reads = (0..READERS as i64 * 4).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.read(move |c| Ok(c.query_row("SELECT ?1", [i], |r| r.get::<_, i64>(0))?)).await
            })
        });
        for (i, read) in futures_util::future::join_all(reads).await.into_iter().enumerate() {
            assert_eq!(read.unwrap().unwrap(), i as i64);
        }
        // Every connection came back to the pool.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.readers.lock().unwrap().len() < READERS {
            assert!(tokio::time::Instant::now() < deadline, "a reader connection was lost");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.reading.available_permits(), READERS);
    }
}
