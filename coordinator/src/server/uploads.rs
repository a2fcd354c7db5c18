//! How many context uploads run at once: per client token and in all. Each upload holds a
//! permit for its whole life; one over either limit is refused at once, with the limit in the
//! message, rather than queued on a stream. With at most [`TOTAL`] uploads, at most that many
//! threads of the blocking pool ever wait on a client's next chunk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Uploads one client token may run at once. `archfarm build` runs one; a pipeline building
/// several images at once, a few.
pub const PER_CLIENT: usize = 4;
/// Uploads the coordinator runs at once.
pub const TOTAL: usize = 32;

/// The uploads running now, by client token name.
#[derive(Debug, Default)]
pub struct Uploads {
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// One running upload; dropping it ends it.
#[derive(Debug)]
pub struct Upload {
    running: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl Uploads {
    /// Starts an upload for `client`, unless it or the coordinator runs as many as allowed.
    pub fn begin(&self, client: &str) -> Result<Upload, String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = running.values().sum();
        let mine = running.get(client).copied().unwrap_or(0);
        if mine >= PER_CLIENT {
            return Err(format!(
                "token {client:?} already uploads {mine} build contexts at once, the most one client may; \
                 try again when one has finished"
            ));
        }
        if total >= TOTAL {
            return Err(format!(
                "the coordinator already receives {total} build contexts at once, the most it takes; try again shortly"
            ));
        }
        *running.entry(client.to_owned()).or_default() += 1;
        Ok(Upload { running: self.running.clone(), client: client.to_owned() })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_limited_per_client_and_in_all() {
        let uploads = Uploads::default();
        let mine: Vec<Upload> = (0..PER_CLIENT).map(|_| uploads.begin("ci").unwrap()).collect();
        let err = uploads.begin("ci").unwrap_err();
        assert!(err.contains("already uploads 4 build contexts at once"), "{err}");
        drop(mine);
        let all: Vec<Upload> = (0..TOTAL).map(|i| uploads.begin(&format!("client-{}", i % 16)).unwrap()).collect();
        let err = uploads.begin("someone").unwrap_err();
        assert!(err.contains("already receives 32 build contexts at once"), "{err}");
        drop(all);
        assert!(uploads.begin("ci").is_ok());
        assert!(uploads.running.lock().unwrap().is_empty());
    }
}
