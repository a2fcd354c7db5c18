//! An agent joining the farm with a one-time join token (ALPN `archfarm-enroll/1`).

use crate::ids::AgentName;
use serde::{Deserialize, Serialize};

/// The one message of an enrolling agent (ALPN `archfarm-enroll/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time join token (never logged).
    pub token: String,
    /// The name the agent asks for; it becomes its certificate's common name.
    pub name: AgentName,
    /// A PEM certificate signing request for a key the agent generated and keeps.
    pub csr_pem: String,
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
