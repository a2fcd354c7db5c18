//! How many context uploads run at once: per client token and in all. Each upload holds a
//! permit for its whole life; one over either limit waits its turn (an upload waiting holds no
//! thread, only its stream), for at most [`QUEUE_WAIT`]. With at most [`TOTAL`] uploads
//! running, at most that many threads of the blocking pool ever wait on a client's next chunk
//! (and as many hash what those put together).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Uploads one client token runs at once. `archfarm build` runs one; a pipeline building
/// several images at once, a few; more wait.
pub const PER_CLIENT: usize = 4;
/// Uploads the coordinator runs at once.
pub const TOTAL: usize = 32;
/// Longest an upload waits for its turn.
pub const QUEUE_WAIT: Duration = Duration::from_secs(300);

/// The uploads running now.
#[derive(Debug)]
pub struct Uploads {
    total: Arc<Semaphore>,
    clients: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads { total: Arc::new(Semaphore::new(TOTAL)), clients: Mutex::default() }
    }
}

/// One running upload; dropping it ends it.
#[derive(Debug)]
pub struct Upload {
    _client: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Uploads {
    /// Starts an upload for `client` once it and the coordinator have room, waiting at most
    /// `wait`.
    pub async fn begin(&self, client: &str, wait: Duration) -> Result<Upload, String> {
        let mine = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            // Forget clients with nothing running and nobody waiting.
            clients.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < PER_CLIENT);
            clients.entry(client.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(PER_CLIENT))).clone()
        };
        let turn = async {
            let client = mine.acquire_owned().await.map_err(|e| e.to_string())?;
            let total = self.total.clone().acquire_owned().await.map_err(|e| e.to_string())?;
            Ok(Upload { _client: client, _total: total })
        };
        tokio::time::timeout(wait, turn).await.unwrap_or_else(|_| {
            Err(format!(
                "the upload waited {} s for its turn: token {client:?} may run {PER_CLIENT} uploads at once, the \
                 coordinator {TOTAL}; try again later",
                wait.as_secs()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_wait_their_turn_per_client_and_in_all() {
        let uploads = Uploads::default();
        let short = Duration::from_millis(50);
        let mine: Vec<Upload> =
            futures_util::future::try_join_all((0..PER_CLIENT).map(|_| uploads.begin("ci", short))).await.unwrap();
        let err = uploads.begin("ci", short).await.unwrap_err();
        assert!(err.contains("may run 4 uploads at once"), "{err}");
        assert!(uploads.begin("other", short).await.is_ok(), "another client is not held up");
        // A waiting upload starts as soon as one ends.
        let waiting = uploads.begin("ci", Duration::from_secs(5));
        let (started, ()) = tokio::join!(waiting, async { drop(mine) });
        assert!(started.is_ok());
        let all: Vec<Upload> = futures_util::future::try_join_all(
            (0..TOTAL - 1).map(|i| uploads.begin(["a", "b", "c", "d", "e", "f", "g", "h"][i % 8], short)),
        )
        .await
        .unwrap();
        assert!(uploads.begin("someone", short).await.is_err(), "the coordinator's {TOTAL} are taken");
        drop((all, started));
        assert!(uploads.begin("someone", short).await.is_ok());
    }
}
