//! Build cache through a registry, scoped per platform. `--cache-to type=registry,ref=R/x:c`
//! writes each platform's cache to its own tag, `R/x:c-linux-amd64`, `R/x:c-linux-arm64`…, so
//! platforms never overwrite each other's cache (the trap of one shared ref in buildx); and
//! `--cache-from type=registry,ref=R/x:c` reads each platform's own tag, and the ref itself
//! (an image published with inline cache).
//!
//! With `mode=min` the cache is BuildKit's inline cache, which every engine exports: each
//! platform's cache image is its built image with the cache metadata in its config. With
//! `mode=max` each platform's BuildKit exports its registry cache of every stage to its tag,
//! which only engines on the containerd image store do ([`crate::engine_needs`]).

use crate::Platform;

/// `--cache-from` / `--cache-to` as given, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    /// `type=registry,ref=R[,mode=min|max]`.
    Registry {
        /// The reference, before per-platform scoping.
        reference: String,
        /// `mode=max` was asked for.
        max: bool,
    },
    /// `type=inline`: the cache metadata travels in the image itself.
    Inline,
}

impl CacheSpec {
    /// Parses buildx's syntax: `type=registry,ref=R[,mode=…]`, `type=inline`, or a bare
    /// reference (buildx reads `--cache-from R` as `type=registry,ref=R`). `flag` names the
    /// flag in messages.
    pub fn parse(value: &str, flag: &str) -> Result<CacheSpec, String> {
        if !value.contains('=') {
            return Ok(CacheSpec::Registry { reference: value.to_owned(), max: false });
        }
        let mut fields = Vec::new();
        for field in value.split(',') {
            let (key, val) =
                field.split_once('=').ok_or_else(|| format!("{flag} {value:?}: {field:?} is not KEY=VALUE"))?;
            fields.push((key.trim(), val.trim()));
        }
        let kind = fields.iter().find(|(k, _)| *k == "type").map(|(_, v)| *v);
        let (mut reference, mut max) = (None, false);
        // The type decides which keys mean something: say what is wrong with it first.
        if matches!(kind, Some("registry" | "inline")) {
            for (key, val) in &fields {
                match *key {
                    "type" => {}
                    "ref" => reference = Some(val.to_string()),
                    "mode" => match *val {
                        "min" => max = false,
                        "max" => max = true,
                        other => return Err(format!("{flag} {value:?}: mode is min or max, not {other:?}")),
                    },
                    // Options of buildx's registry exporter; the engine's inline cache has none.
                    "oci-mediatypes" | "image-manifest" | "compression" | "ignore-error" => {}
                    other => return Err(format!("{flag} {value:?}: archfarm does not take {other:?}")),
                }
            }
        }
        match kind {
            Some("registry") => match reference {
                Some(r) if !r.is_empty() => Ok(CacheSpec::Registry { reference: r, max }),
                _ => Err(format!("{flag} type=registry needs ref=REGISTRY/REPOSITORY:TAG")),
            },
            Some("inline") => Ok(CacheSpec::Inline),
            Some(other @ ("local" | "gha" | "s3" | "azblob")) => Err(format!(
                "{flag} type={other} is not supported: the cache lives with the agents' engines, which share it \
                 through a registry; use type=registry,ref=REGISTRY/REPOSITORY:TAG"
            )),
            Some(other) => Err(format!("{flag} type={other:?} is unknown; use type=registry or type=inline")),
            None => Err(format!("{flag} {value:?} needs type=registry or type=inline")),
        }
    }
}

/// The reference of `platform`'s cache under `reference`: its tag (`cache` when it has none)
/// followed by the platform, `R/x:c-linux-arm-v7`.
pub fn scoped(reference: &str, platform: &Platform) -> String {
    let suffix = match platform.variant() {
        Some(v) => format!("{}-{}-{v}", platform.os(), platform.arch()),
        None => format!("{}-{}", platform.os(), platform.arch()),
    };
    // A tag is a ':' after the last '/' (a port's ':' is before it).
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    if reference[slash..].contains(':') {
        format!("{reference}-{suffix}")
    } else {
        format!("{reference}:cache-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_platform_has_a_cache_tag_of_its_own() {
        let arm: Platform = "linux/arm/v7".parse().unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(scoped("127.0.0.1:5000/team/app:cache", &amd), "127.0.0.1:5000/team/app:cache-linux-amd64");
        assert_eq!(scoped("127.0.0.1:5000/team/app:cache", &arm), "127.0.0.1:5000/team/app:cache-linux-arm-v7");
        assert_eq!(scoped("127.0.0.1:5000/team/app", &amd), "127.0.0.1:5000/team/app:cache-linux-amd64");
    }

    #[test]
    fn reads_buildx_cache_syntax() {
        let r = |v: &str| CacheSpec::parse(v, "--cache-to");
        assert_eq!(
            r("type=registry,ref=r/a:c,mode=max"),
            Ok(CacheSpec::Registry { reference: "r/a:c".into(), max: true })
        );
        assert_eq!(r("r/a:c"), Ok(CacheSpec::Registry { reference: "r/a:c".into(), max: false }));
        assert_eq!(r("type=inline"), Ok(CacheSpec::Inline));
        assert!(r("type=local,dest=x").unwrap_err().contains("use type=registry"));
        assert!(r("type=registry").unwrap_err().contains("needs ref="));
        assert!(r("type=registry,ref=a,mode=most").unwrap_err().contains("min or max"));
    }
}
