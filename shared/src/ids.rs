//! Newtype identifiers: builds, jobs, agents and content digests, each validated on parse.
//! Deserialising goes through the same check as [`FromStr`], so an id from the network or from
//! a stored document is as valid as one typed by a user. On the wire and in JSON each is its
//! plain string, exactly as a derived newtype would be.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Not a `sha256:` digest of 64 lowercase hex characters.
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hex characters")]
    Digest(String),
    /// Not a usable agent name.
    #[error(
        "invalid agent name {0:?}: use 1-63 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    AgentName(String),
    /// Not an id this farm hands out.
    #[error("invalid {kind} id {value:?}")]
    Id {
        /// build or job
        kind: &'static str,
        /// What was given.
        value: String,
    },
}

/// The conversions serde goes through: from a `String` only by [`FromStr`]'s check, and back
/// to the same `String`.
macro_rules! validated_string {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

macro_rules! random_id {
    ($name:ident, $prefix:literal, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        validated_string!($name);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                $name(format!("{}{:012x}", $prefix, rand::random::<u64>() & 0xffff_ffff_ffff))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let ok = s.strip_prefix($prefix).is_some_and(|rest| {
                    !rest.is_empty() && rest.len() <= 32 && rest.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if ok {
                    Ok($name(s.to_owned()))
                } else {
                    Err(IdError::Id { kind: $kind, value: s.to_owned() })
                }
            }
        }
    };
}

random_id!(BuildId, "b-", "build", "One `archfarm build` request: a set of jobs, one per platform.");
random_id!(JobId, "j-", "job", "One platform of one build.");

/// An agent's name, taken from the common name of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

validated_string!(AgentName);

impl AgentName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgentName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
        let ok = (1..=63).contains(&s.len())
            && s.chars().all(valid_char)
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(AgentName(s.to_owned()))
        } else {
            Err(IdError::AgentName(s.to_owned()))
        }
    }
}

/// A content digest, `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

validated_string!(Digest);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest::from_sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Wraps a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The hex part, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Digest(s.to_owned()))
        } else {
            Err(IdError::Digest(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_reject_other_shapes() {
        let d = Digest::of(b"hello");
        assert_eq!(d.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in [
            "sha256:abc",
            "md5:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_names_are_dns_like() {
        assert!("arm64-graviton-1".parse::<AgentName>().is_ok());
        for bad in ["", "-lead", "Upper", "has space", &"x".repeat(64)] {
            let err = bad.parse::<AgentName>().unwrap_err();
            assert!(err.to_string().contains("invalid agent name"), "{err}");
        }
    }

    #[test]
    fn random_ids_parse_back() {
        let b = BuildId::random();
        assert_eq!(b.to_string().parse::<BuildId>().unwrap(), b);
        assert!("j-zz".parse::<JobId>().is_err());
        assert!(b.as_str().parse::<JobId>().is_err());
    }
}
