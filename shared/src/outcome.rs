//! How an attempt at a job ended, as the coordinator records it and `archfarm builds show`
//! shows it. Stored and sent as its text (`pushed`, `lost`, ...), so the wire and the state
//! database hold the same words the docs use.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How one attempt at a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum AttemptOutcome {
    /// The agent pushed an image and the registry confirmed it was the right one.
    Pushed,
    /// The agent went away (disconnected, timed out) before reporting.
    Lost,
    /// The agent reported a failure (the Dockerfile, its engine, its disk, the push).
    Failed,
    /// The agent pushed an image for another platform, or not the one it reported: it is
    /// quarantined.
    WrongImage,
    /// The registry could not be asked about the pushed image.
    Unverified,
    /// The build was cancelled, or the agent stopped the job while draining.
    Cancelled,
    /// The attempt ran past its time limit, or too long without output, and was stopped.
    TimedOut,
}

impl AttemptOutcome {
    /// Every outcome, in the order the docs list them.
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Pushed,
        AttemptOutcome::Lost,
        AttemptOutcome::Failed,
        AttemptOutcome::WrongImage,
        AttemptOutcome::Unverified,
        AttemptOutcome::Cancelled,
        AttemptOutcome::TimedOut,
    ];

    /// The outcome as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Pushed => "pushed",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::WrongImage => "wrong-image",
            AttemptOutcome::Unverified => "unverified",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::TimedOut => "timed-out",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AttemptOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown attempt outcome {s:?}"))
    }
}

impl From<AttemptOutcome> for String {
    fn from(o: AttemptOutcome) -> String {
        o.as_str().to_owned()
    }
}

impl TryFrom<String> for AttemptOutcome {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_text() {
        for o in AttemptOutcome::ALL {
            assert_eq!(o.as_str().parse::<AttemptOutcome>(), Ok(o));
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{o}\""));
        }
        assert!("wrong-platform".parse::<AttemptOutcome>().unwrap_err().contains("unknown attempt outcome"));
    }
}
