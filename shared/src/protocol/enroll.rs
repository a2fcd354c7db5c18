//! An agent joining the farm with a one-time join token, or renewing its certificate (ALPN
//! `archfarm-enroll/2`).

use crate::ids::AgentName;
use serde::{Deserialize, Serialize};

/// The one message of an enrolling or renewing agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollRequest {
    /// A new agent with a join token.
    Join {
        /// The one-time join token (never logged).
        token: String,
        /// The name the agent asks for; it becomes its certificate's common name.
        name: AgentName,
        /// A PEM certificate signing request for a key the agent generated and keeps.
        csr_pem: String,
    },
    /// An enrolled agent replacing its certificate before it expires. The connection presents
    /// the current certificate; the new one has the same name and platforms, and the old one is
    /// revoked once the new one is first used.
    Renew {
        /// A PEM certificate signing request for a new key.
        csr_pem: String,
    },
}

/// The coordinator's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// The agent's certificate, signed by the farm CA.
    Certificate {
        /// PEM certificate.
        cert_pem: String,
    },
    /// Refused, with why.
    Refused {
        /// Why, and what to do.
        reason: String,
    },
}
