//! What an agent offers beyond its platforms, and what a build may ask of it: the x86-64
//! microarchitecture level and CPU features its host detected, the labels its operator gave it
//! (`labels = { region = "eu" }`), and a build's `--platform linux/amd64/v3` and
//! `--require [PLATFORM:]KEY=VALUE`.

use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Most labels an agent may carry.
pub const MAX_LABELS: usize = 32;
/// Most requirements a build may make.
pub const MAX_REQUIREMENTS: usize = 32;
/// The requirement key that matches a detected CPU feature rather than a label.
pub const CPU_KEY: &str = "cpu";

/// The CPU flags (as `/proc/cpuinfo` names them) each x86-64 level adds, per the x86-64 psABI.
const X86_64_LEVELS: [(u8, &[&str]); 3] = [
    (2, &["cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"]),
    (3, &["abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"]),
    (4, &["avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"]),
];

/// What an agent declares of its host beyond its platforms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The x86-64 level (1 to 4) its linux/amd64 builds may rely on; none when it declares no
    /// linux/amd64.
    pub x86_64_level: Option<u8>,
    /// CPU features its host detected (`flags` of x86-64, `Features` of arm64), sorted.
    pub cpu_features: Vec<String>,
    /// Its operator's labels.
    pub labels: BTreeMap<String, String>,
}

impl Capabilities {
    /// Whether it meets `key=value`: a label of that value, or for `cpu=FEATURE` that feature.
    pub fn meets(&self, key: &str, value: &str) -> bool {
        if key == CPU_KEY {
            return self.cpu_features.iter().any(|f| f == value);
        }
        self.labels.get(key).is_some_and(|v| v == value)
    }

    /// Whether it builds `wanted` given that it declares `declared`: the same platform, or
    /// linux/amd64 at a level at least the one `wanted` names (`linux/amd64/v3`).
    pub fn builds(&self, declared: &[Platform], wanted: &Platform) -> bool {
        if declared.contains(wanted) {
            return true;
        }
        match x86_64_level_of(wanted) {
            Some(level) => declared.contains(&base(wanted)) && self.x86_64_level.unwrap_or(1) >= level,
            None => false,
        }
    }

    /// The x86-64 level and the labels, for messages and tables: `x86-64-v3 region=eu`; empty
    /// when it has neither.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self.x86_64_level.map(|l| format!("x86-64-v{l}")).into_iter().collect();
        parts.extend(self.labels.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(" ")
    }

    /// [`Capabilities::summary`], or `none` when it is empty.
    pub fn summary_or(&self, none: &str) -> String {
        Some(self.summary()).filter(|s| !s.is_empty()).unwrap_or_else(|| none.to_owned())
    }
}

/// The x86-64 level a platform asks for: 2 to 4 for `linux/amd64/v2` to `/v4`; none otherwise
/// (`linux/amd64/v1` is normalised to plain `linux/amd64`).
pub fn x86_64_level_of(platform: &Platform) -> Option<u8> {
    if platform.arch() != "amd64" {
        return None;
    }
    match platform.variant()? {
        "v2" => Some(2),
        "v3" => Some(3),
        "v4" => Some(4),
        _ => None,
    }
}

/// The platform an agent declares for `platform`: linux/amd64 for linux/amd64/v3.
pub fn base(platform: &Platform) -> Platform {
    match x86_64_level_of(platform) {
        Some(_) => Platform::new(platform.os(), platform.arch(), None).unwrap_or_else(|_| platform.clone()),
        None => platform.clone(),
    }
}

/// The highest x86-64 level whose flags (and those of the levels below) are all present.
pub fn x86_64_level(flags: &[&str]) -> u8 {
    let mut level = 1;
    for (l, needed) in X86_64_LEVELS {
        if !needed.iter().all(|f| flags.contains(f)) {
            break;
        }
        level = l;
    }
    level
}

/// The level and features a host's `/proc/cpuinfo` shows, for a host of architecture `arch`
/// (`std::env::consts::ARCH`): the first CPU's `flags` on x86_64, `Features` on aarch64.
pub fn from_cpuinfo(cpuinfo: &str, arch: &str) -> (Option<u8>, Vec<String>) {
    let field = match arch {
        "x86_64" => "flags",
        "aarch64" => "Features",
        _ => return (None, Vec::new()),
    };
    let line = cpuinfo.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (name.trim() == field).then_some(value)
    });
    let mut features: Vec<&str> = line.map(|v| v.split_whitespace().collect()).unwrap_or_default();
    features.sort_unstable();
    features.dedup();
    let level = (arch == "x86_64").then(|| x86_64_level(&features));
    (level, features.into_iter().map(str::to_owned).collect())
}

/// Checks a label (or requirement) key and value: keys of 1-63 lowercase letters, digits, '.',
/// '-', '_', starting with a letter; values of 1-255 printable characters other than ',' and
/// '='. The key `cpu` names CPU features and is no label.
pub fn check_pair(key: &str, value: &str) -> Result<(), String> {
    let key_ok = (1..=63).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if !key_ok {
        return Err(format!(
            "label key {key:?}: use 1-63 lowercase letters, digits, '.', '-', '_', starting with a letter"
        ));
    }
    let value_ok =
        (1..=255).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic() && c != ',' && c != '=');
    if !value_ok {
        return Err(format!("value {value:?} of {key:?}: use 1-255 printable characters, without spaces, ',' or '='"));
    }
    Ok(())
}

/// Checks an agent's labels: at most [`MAX_LABELS`], each by [`check_pair`], none named `cpu`.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels: at most {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        if k == CPU_KEY {
            return Err(
                "the label key \"cpu\" is reserved: `--require cpu=FEATURE` matches detected CPU features".into()
            );
        }
        check_pair(k, v)?;
    }
    Ok(())
}

/// Checks what an agent registered: a level of 1 to 4, at most 512 CPU features of at most 64
/// printable characters, and labels by [`check_labels`].
pub fn check_capabilities(c: &Capabilities) -> Result<(), String> {
    if let Some(level) = c.x86_64_level.filter(|l| !(1..=4).contains(l)) {
        return Err(format!("x86-64 level {level}: must be 1 to 4"));
    }
    if c.cpu_features.len() > 512
        || c.cpu_features.iter().any(|f| f.is_empty() || f.len() > 64 || !f.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err("CPU features: at most 512, each 1-64 printable characters".into());
    }
    check_labels(&c.labels)
}

/// `--require [PLATFORM:]KEY=VALUE`: agents of the build (or of that platform only) must carry
/// the label `KEY=VALUE`, or for `cpu=FEATURE` have that CPU feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    /// The platform it applies to; every platform of the build when absent.
    pub platform: Option<Platform>,
    /// The label key, or `cpu`.
    pub key: String,
    /// The value it must have.
    pub value: String,
}

impl Requirement {
    /// Whether it applies to `platform`.
    pub fn applies_to(&self, platform: &Platform) -> bool {
        self.platform.as_ref().is_none_or(|p| p == platform)
    }
}

impl FromStr for Requirement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shape = || format!("--require {s:?}: expected KEY=VALUE or PLATFORM:KEY=VALUE, for example region=eu");
        let (platform, pair) = match s.split_once(':') {
            Some((p, rest)) if p.contains('/') => {
                (Some(p.parse::<Platform>().map_err(|e| format!("--require {s:?}: {e}"))?), rest)
            }
            _ => (None, s),
        };
        let (key, value) = pair.split_once('=').ok_or_else(shape)?;
        check_pair(key, value).map_err(|e| format!("--require {s:?}: {e}"))?;
        Ok(Requirement { platform, key: key.to_owned(), value: value.to_owned() })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.platform {
            Some(p) => write!(f, "{p}:{}={}", self.key, self.value),
            None => write!(f, "{}={}", self.key, self.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    const V4_FLAGS: &str = "fpu vme pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c lahf_lm abm \
                            bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl";

    #[test]
    fn x86_64_levels_need_every_flag_of_their_level_and_those_below() {
        let all: Vec<&str> = V4_FLAGS.split(' ').collect();
        assert_eq!(x86_64_level(&all), 4);
        let no_avx512vl: Vec<&str> = all.iter().copied().filter(|f| *f != "avx512vl").collect();
        assert_eq!(x86_64_level(&no_avx512vl), 3);
        let no_movbe: Vec<&str> = all.iter().copied().filter(|f| *f != "movbe").collect();
        assert_eq!(x86_64_level(&no_movbe), 2, "v4 flags do not make up for a missing v3 flag");
        assert_eq!(x86_64_level(&["fpu", "sse2"]), 1);
    }

    #[test]
    fn cpuinfo_gives_level_and_sorted_features_of_the_first_cpu() {
        let x86 = format!("processor\t: 0\nflags\t\t: {V4_FLAGS}\n\nprocessor\t: 1\nflags\t\t: fpu\n");
        let (level, features) = from_cpuinfo(&x86, "x86_64");
        assert_eq!(level, Some(4));
        assert!(features.windows(2).all(|w| w[0] < w[1]) && features.contains(&"avx2".to_owned()));
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve2 atomics sve\nCPU implementer\t: 0x41\n";
        assert_eq!(
            from_cpuinfo(arm, "aarch64"),
            (None, vec!["asimd".into(), "atomics".into(), "fp".into(), "sve".into(), "sve2".into()])
        );
        assert_eq!(from_cpuinfo("", "riscv64"), (None, vec![]));
    }

    #[test]
    fn an_amd64_level_is_built_by_amd64_agents_of_that_level_or_above() {
        let v3 = Capabilities { x86_64_level: Some(3), ..Default::default() };
        let amd = [p("linux/amd64")];
        assert!(v3.builds(&amd, &p("linux/amd64")));
        assert!(v3.builds(&amd, &p("linux/amd64/v2")));
        assert!(v3.builds(&amd, &p("linux/amd64/v3")));
        assert!(!v3.builds(&amd, &p("linux/amd64/v4")));
        assert!(!v3.builds(&[p("linux/arm64")], &p("linux/amd64/v3")));
        assert!(!Capabilities::default().builds(&amd, &p("linux/amd64/v2")), "an unknown level is v1");
        assert_eq!(base(&p("linux/amd64/v3")), p("linux/amd64"));
        assert_eq!(base(&p("linux/arm/v7")), p("linux/arm/v7"));
        assert_eq!(p("linux/amd64/v1"), p("linux/amd64"));
    }

    #[test]
    fn requirements_parse_with_or_without_a_platform_and_match_labels_or_cpu_features() {
        let r: Requirement = "region=eu".parse().unwrap();
        assert_eq!((r.platform.clone(), r.key.as_str(), r.value.as_str()), (None, "region", "eu"));
        let r: Requirement = "linux/arm64:cpu=sve2".parse().unwrap();
        assert_eq!(r.platform, Some(p("linux/arm64")));
        assert_eq!(r.to_string(), "linux/arm64:cpu=sve2");
        assert!(r.applies_to(&p("linux/arm64")) && !r.applies_to(&p("linux/amd64")));
        for bad in ["region", "=eu", "Region=eu", "region=", "region=a b", "linux/x y:region=eu", "region=a,b"] {
            assert!(bad.parse::<Requirement>().is_err(), "{bad}");
        }
        let caps = Capabilities {
            x86_64_level: None,
            cpu_features: vec!["sve2".into()],
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
        };
        assert!(caps.meets("region", "eu") && !caps.meets("region", "us") && !caps.meets("disk", "nvme"));
        assert!(caps.meets("cpu", "sve2") && !caps.meets("cpu", "sme"));
        assert_eq!(caps.summary(), "region=eu");
        assert_eq!(Capabilities::default().summary(), "");
    }

    #[test]
    fn labels_are_checked_and_cpu_is_reserved() {
        let ok =
            BTreeMap::from([("region".to_owned(), "eu-west-1".to_owned()), ("disk".to_owned(), "nvme".to_owned())]);
        assert!(check_labels(&ok).is_ok());
        let cpu = BTreeMap::from([("cpu".to_owned(), "fast".to_owned())]);
        assert!(check_labels(&cpu).unwrap_err().contains("reserved"));
        let many: BTreeMap<String, String> = (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(check_labels(&many).is_err());
        let mut c = Capabilities { x86_64_level: Some(4), cpu_features: vec!["avx2".into()], labels: ok };
        assert!(check_capabilities(&c).is_ok());
        c.x86_64_level = Some(9);
        assert!(check_capabilities(&c).unwrap_err().contains("level 9"));
        c.x86_64_level = None;
        c.cpu_features = vec!["a b".into()];
        assert!(check_capabilities(&c).is_err());
    }
}
