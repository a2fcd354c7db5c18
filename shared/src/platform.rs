//! Platform names (`os/arch[/variant]`) normalised by containerd's rules, so `x86_64`,
//! `aarch64` and `armhf` from a host or a user mean the same thing as `amd64`, `arm64`, `arm/v7`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An OCI platform: operating system, CPU architecture and optional variant, always normalised.
/// It is deserialised through [`Platform::new`]'s checks, never taken as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PlatformFields")]
pub struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

/// [`Platform`]'s fields as they are serialised (same names, same order, so the same bytes on
/// the wire and in JSON), before they are checked.
#[derive(Deserialize)]
struct PlatformFields {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl TryFrom<PlatformFields> for Platform {
    type Error = PlatformError;
    fn try_from(f: PlatformFields) -> Result<Self, PlatformError> {
        Platform::new(&f.os, &f.arch, f.variant.as_deref())
    }
}

/// Why a platform string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// The string is empty or has an empty part.
    #[error("invalid platform {input:?}: expected os/arch[/variant], for example linux/amd64")]
    Shape {
        /// What the user gave.
        input: String,
    },
    /// A part holds characters no platform name has.
    #[error("invalid platform {input:?}: {part:?} may hold only lowercase letters, digits, '-', '_' and '.'")]
    Characters {
        /// What the user gave.
        input: String,
        /// The offending part.
        part: String,
    },
}

impl Platform {
    /// Builds a platform from parts, normalising them. A part holding `/` is refused: it would
    /// otherwise be read as two parts.
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Result<Self, PlatformError> {
        let input = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        if let Some(part) = [Some(os), Some(arch), variant].into_iter().flatten().find(|p| p.contains('/')) {
            return Err(PlatformError::Characters { input, part: part.to_owned() });
        }
        input.parse()
    }

    /// The platform of a host as `uname -s`/`uname -m` (or Docker's `OSType`/`Architecture`)
    /// report it: `Linux`/`x86_64` is `linux/amd64`, `armv7l` is `linux/arm/v7`.
    pub fn from_host(os_type: &str, machine: &str) -> Result<Self, PlatformError> {
        let os = os_type.to_ascii_lowercase();
        let os = if os.is_empty() { "linux".to_owned() } else { os };
        Platform::new(&os, machine, None)
    }

    /// Operating system, for example `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// CPU architecture in OCI terms, for example `amd64` or `arm64`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Architecture variant, for example `v7` for `arm`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }
}

/// containerd's `normalizeArch`: maps an architecture and variant to their canonical names.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = match (arch, variant) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("armv7l" | "armv7", _) => ("arm", "v7"),
        ("armv6l" | "armv6", _) => ("arm", "v6"),
        ("armv5tel" | "armv5l", _) => ("arm", "v5"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        (a, v) => (a, v),
    };
    (arch.to_owned(), variant.to_owned())
}

fn normalize_os(os: &str) -> String {
    match os {
        "macos" => "darwin".to_owned(),
        other => other.to_owned(),
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let shape = || PlatformError::Shape { input: input.to_owned() };
        let lowered = input.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lowered.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(shape());
        }
        for part in &parts {
            if !part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.' || c == '-') {
                return Err(PlatformError::Characters { input: input.to_owned(), part: (*part).to_owned() });
            }
        }
        // A lone architecture means Linux, as containerd assumes on a Linux host.
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, ""),
            [os, arch] => (*os, *arch, ""),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => return Err(shape()),
        };
        let (arch, variant) = normalize_arch(arch, variant);
        Ok(Platform { os: normalize_os(os), arch, variant: (!variant.is_empty()).then_some(variant) })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{}", self.os, self.arch, v),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

/// Formats platforms as `linux/amd64, linux/arm64` for messages.
pub fn list(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "none".to_owned();
    }
    platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        s.parse::<Platform>().unwrap().to_string()
    }

    /// containerd's normalisation table (platforms/database.go and its tests).
    #[test]
    fn normalises_like_containerd() {
        let table = [
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v8.0", "linux/arm64"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/5", "linux/arm/v5"),
            ("linux/i386", "linux/386"),
            ("linux/386", "linux/386"),
            ("Linux/AMD64", "linux/amd64"),
            ("arm64", "linux/arm64"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("linux/s390x", "linux/s390x"),
            ("linux/ppc64le", "linux/ppc64le"),
        ];
        for (input, want) in table {
            assert_eq!(p(input), want, "normalising {input}");
        }
    }

    #[test]
    fn host_machine_names_map_to_platforms() {
        let table = [
            ("Linux", "x86_64", "linux/amd64"),
            ("linux", "aarch64", "linux/arm64"),
            ("linux", "armv7l", "linux/arm/v7"),
            ("linux", "armv6l", "linux/arm/v6"),
            ("linux", "i386", "linux/386"),
            ("", "x86_64", "linux/amd64"),
        ];
        for (os, machine, want) in table {
            assert_eq!(Platform::from_host(os, machine).unwrap().to_string(), want);
        }
    }

    #[test]
    fn rejects_malformed_names_with_the_input_in_the_message() {
        for bad in ["", "/", "linux/", "linux//v7", "a/b/c/d", "linux/amd 64", "linux/amd64;rm"] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn parts_are_exposed_normalised() {
        let arm: Platform = "linux/armhf".parse().unwrap();
        assert_eq!((arm.os(), arm.arch(), arm.variant()), ("linux", "arm", Some("v7")));
        assert_eq!(list(&[arm.clone(), "linux/amd64".parse().unwrap()]), "linux/arm/v7, linux/amd64");
        assert_eq!(list(&[]), "none");
    }
}
