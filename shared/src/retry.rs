//! Retrying with backoff: one named [`Policy`] per kind of call, and [`retry`], which runs an
//! operation under a policy, logs each failed try and ends with an error that says how often it
//! tried. Built on `backon`'s exponential backoff.
//!
//! ```no_run
//! # async fn fetch() -> Result<u32, String> { Ok(1) }
//! # async fn demo() -> Result<(), String> {
//! use archfarm_shared::retry::{retry, Policy};
//! let n = retry(Policy::REGISTRY, "fetching the manifest", || fetch()).await.map_err(|e| e.to_string())?;
//! # Ok(()) }
//! ```

use backon::{BackoffBuilder, ExponentialBuilder};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently one kind of call is retried. The pause before try `n + 1` is
/// drawn between half and all of `first · 2^(n-1)`, capped at `max`: the pauses grow, and
/// callers that failed together (agents after a coordinator restart) do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Tries in all, the first included; `None` tries for ever.
    tries: Option<u32>,
    /// Upper bound of the first pause.
    first: Duration,
    /// Upper bound of any pause.
    max: Duration,
}

impl Policy {
    /// A registry call (a manifest or blob fetched or pushed, the index published): 5 tries,
    /// pauses of 0.5-1, 1-2, 2-4 and 4-8 s, so a registry restart of 7.5 s at least is ridden out.
    pub const REGISTRY: Policy = Policy::new(5, Duration::from_secs(1), Duration::from_secs(8));

    /// A client connecting to the coordinator and saying hello: 3 tries, pauses of 0.5-1 and
    /// 1-2 s. A handshake lost on a loaded coordinator is worth another try; a refusal is not
    /// (see [`retry_if`]).
    pub const COORDINATOR_CONNECT: Policy = Policy::new(3, Duration::from_secs(1), Duration::from_secs(2));

    /// An agent pushing a built image by digest: 4 tries, pauses of 0.5-1, 1-2 and 2-4 s. The
    /// push is idempotent, and a registry blip should not cost a rebuild.
    pub const IMAGE_PUSH: Policy = Policy::new(4, Duration::from_secs(1), Duration::from_secs(4));

    /// An agent reconnecting to the coordinator: for ever, pauses from up to 0.5 s growing to
    /// up to `max_backoff` (its `max_backoff_secs`).
    pub fn agent_reconnect(max_backoff: Duration) -> Policy {
        Policy { tries: None, ..Policy::new(1, Duration::from_millis(500), max_backoff) }
    }

    /// A policy of `tries` tries in all (at least one), pauses up to `first` doubling up to `max`.
    pub const fn new(tries: u32, first: Duration, max: Duration) -> Policy {
        let first = if first.as_nanos() > max.as_nanos() { max } else { first };
        Policy { tries: Some(if tries == 0 { 1 } else { tries }), first, max }
    }

    /// Tries in all, the first included; `None` for a policy that never gives up.
    pub fn tries(&self) -> Option<u32> {
        self.tries
    }

    /// The same kind of backoff as a `backon` builder, for code that drives `backon` itself.
    pub fn builder(&self) -> ExponentialBuilder {
        // backon's jitter adds up to 100 % to each pause; halving the bounds first puts each
        // pause between half and all of its bound.
        let builder = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.first / 2)
            .with_max_delay(self.max / 2)
            .with_jitter();
        match self.tries {
            Some(tries) => builder.with_max_times(tries.saturating_sub(1) as usize),
            None => builder.without_max_times(),
        }
    }

    /// The pauses between tries, each freshly jittered: one fewer than the tries, or endless.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + 'static {
        self.builder().build()
    }
}

/// How a retried call ended without success.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// Every try the policy allows failed.
    #[error("{what} failed {tries} times; last error: {last}")]
    Exhausted {
        /// What was tried, as given to [`retry`].
        what: String,
        /// How many tries were made.
        tries: u32,
        /// The error of the last try.
        last: E,
    },
    /// A try failed in a way another try would not mend; no more were made.
    #[error("{what} failed: {error}")]
    Permanent {
        /// What was tried.
        what: String,
        /// How many tries were made, that one included.
        tries: u32,
        /// Its error.
        error: E,
    },
}

impl<E> RetryError<E> {
    /// The error of the last try.
    pub fn into_last(self) -> E {
        match self {
            RetryError::Exhausted { last, .. } => last,
            RetryError::Permanent { error, .. } => error,
        }
    }

    /// How many tries were made.
    pub fn tries(&self) -> u32 {
        match self {
            RetryError::Exhausted { tries, .. } | RetryError::Permanent { tries, .. } => *tries,
        }
    }
}

/// Runs `op` until it succeeds or `policy` runs out of tries, pausing between tries. Each
/// failed try is logged as "{what} failed (try n of m), retrying in x s: {error}"; the final
/// error says "{what} failed N times; last error: {error}".
pub async fn retry<T, E, F, Fut>(policy: Policy, what: &str, op: F) -> Result<T, RetryError<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_if(policy, what, op, |_| true).await
}

/// [`retry`], but an error for which `transient` is false ends it at once
/// ([`RetryError::Permanent`]): a refusal, say, as opposed to a timeout.
pub async fn retry_if<T, E, F, Fut>(
    policy: Policy,
    what: &str,
    mut op: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, RetryError<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(e) if !transient(&e) => return Err(RetryError::Permanent { what: what.to_owned(), tries, error: e }),
            Err(e) => e,
        };
        let Some(pause) = delays.next() else {
            return Err(RetryError::Exhausted { what: what.to_owned(), tries, last: error });
        };
        let secs = pause.as_secs_f64();
        match policy.tries {
            Some(m) => tracing::warn!("{what} failed (try {tries} of {m}), retrying in {secs:.1} s: {error}"),
            None => tracing::warn!("{what} failed (try {tries}), retrying in {secs:.1} s: {error}"),
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    /// Runs `policy` on an operation that fails `failures` times, then answers its try number.
    async fn failing(policy: Policy, failures: u32) -> (Result<u32, RetryError<String>>, u32, Duration) {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = retry(policy, "fetching x", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= failures {
                Err(format!("boom {n}"))
            } else {
                Ok(n)
            }
        })
        .await;
        (result, calls.load(Ordering::SeqCst), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_policys_tries_with_jittered_pauses() {
        for _ in 0..20 {
            let (result, calls, elapsed) = failing(Policy::REGISTRY, u32::MAX).await;
            assert_eq!(calls, 5);
            let err = result.unwrap_err();
            assert_eq!(err.to_string(), "fetching x failed 5 times; last error: boom 5");
            assert_eq!(err.tries(), 5);
            // Pauses of 0.5-1, 1-2, 2-4 and 4-8 s, each rounded up to the timer's millisecond: never
            // less in all than the fixed 0.5, 1, 2 and 4 s registry calls had before jitter.
            let (low, high) = (Duration::from_millis(7500), Duration::from_millis(15000 + 10));
            assert!(elapsed >= low && elapsed <= high, "{elapsed:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_failures_without_further_tries() {
        let (result, calls, elapsed) = failing(Policy::IMAGE_PUSH, 2).await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls, 3);
        assert!(elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_millis(3000 + 10), "{elapsed:?}");

        let (result, calls, elapsed) = failing(Policy::COORDINATOR_CONNECT, 0).await;
        assert_eq!((result.unwrap(), calls, elapsed), (1, 1, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_stops_at_once() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result: Result<(), _> = retry_if(
            Policy::COORDINATOR_CONNECT,
            "connecting to the coordinator",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("refused: bad token")
            },
            |e| !e.starts_with("refused"),
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.to_string(), "connecting to the coordinator failed: refused: bad token");
        assert_eq!((calls.load(Ordering::SeqCst), start.elapsed()), (1, Duration::ZERO));
        assert_eq!(err.into_last(), "refused: bad token");
    }

    #[test]
    fn reconnect_pauses_grow_are_capped_and_jittered() {
        let max = Duration::from_secs(30);
        for _ in 0..50 {
            let pauses: Vec<_> = Policy::agent_reconnect(max).delays().take(40).collect();
            assert_eq!(pauses.len(), 40, "reconnecting never gives up");
            let first = pauses[0];
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500), "{first:?}");
            let late = pauses[39];
            assert!(late >= max / 2 && late <= max, "{late:?}");
            assert!(pauses.iter().all(|p| *p <= max));
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| Policy::agent_reconnect(max).delays().nth(3).unwrap()).collect();
        assert!(spread.len() > 1, "jitter must vary the pause");
        // A maximum below the usual first pause still bounds every pause.
        let tight = Duration::from_millis(100);
        assert!(Policy::agent_reconnect(tight).delays().take(10).all(|p| p <= tight));
    }

    #[tokio::test(start_paused = true)]
    async fn each_failed_try_is_logged_with_its_number_and_pause() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let _ = failing(Policy::COORDINATOR_CONNECT, u32::MAX).await;
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        // The first pause is drawn from 0.5-1 s, and printed to a tenth.
        let pause = |try_: u32| -> f64 {
            let marker = format!("fetching x failed (try {try_} of 3), retrying in ");
            let rest = &log[log.find(&marker).unwrap_or_else(|| panic!("no {marker:?} in {log}")) + marker.len()..];
            rest.split(' ').next().unwrap().parse().unwrap()
        };
        assert!((0.5..=1.0).contains(&pause(1)), "{log}");
        assert!((1.0..=2.0).contains(&pause(2)), "{log}");
        assert!(log.contains(" s: boom 1"), "{log}");
        assert!(log.contains("fetching x failed (try 2 of 3), retrying in "), "{log}");
        assert!(!log.contains("try 3 of 3"), "the last failure is the error, not a retry: {log}");
    }
}
