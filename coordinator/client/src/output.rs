//! `--output`/`-o` and `--load`, in buildx's syntax: what the client does with the verified
//! images once every platform is built.
//!
//! - `type=oci,dest=FILE`: an OCI image layout tar with the index and every platform;
//! - `type=docker,dest=FILE`: one platform as an archive `docker load` takes;
//! - `type=local,dest=DIR`: each platform's filesystem (`DIR` itself for one platform, else
//!   `DIR/<os>_<arch>[_<variant>]/`, as buildx splits them);
//! - `type=registry`, `type=image,push=true`: the same as `--push`;
//! - `dest=-`: the tar on standard output.
//!
//! `--load` is `type=docker` into the local engine.

use anyhow::{bail, Context as _};
use std::path::PathBuf;

/// Where an archive or a tree goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A file or directory.
    Path(PathBuf),
    /// Standard output (`dest=-`).
    Stdout,
}

/// One `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout tar.
    Oci(Dest),
    /// A `docker load` archive of one platform.
    Docker(Dest),
    /// Each platform's filesystem under a directory.
    Local(PathBuf),
    /// Into the local engine (`--load`).
    Load,
    /// Publish the index under the tags (`--push`).
    Push,
}

impl Output {
    /// Parses one `--output` value: `type=T,dest=D[,push=true]`, or a bare path (a local
    /// directory, as buildx reads `-o DIR`) or `-` (a tar of the filesystem; refused, since the
    /// farm's outputs are images).
    pub fn parse(value: &str) -> anyhow::Result<Output> {
        if !value.contains('=') {
            if value == "-" {
                bail!("--output - would be a tar of the filesystem; say type=oci,dest=- or type=docker,dest=-");
            }
            return Ok(Output::Local(PathBuf::from(value)));
        }
        let mut kind = None;
        let mut dest = None;
        let mut push = false;
        for field in value.split(',') {
            let (key, val) =
                field.split_once('=').with_context(|| format!("--output {value:?}: {field:?} is not KEY=VALUE"))?;
            match key.trim() {
                "type" => kind = Some(val.trim().to_owned()),
                "dest" => dest = Some(val.trim().to_owned()),
                "push" => push = matches!(val.trim(), "true" | "1"),
                "name" => {} // the tags come from -t
                other => bail!(
                    "--output {value:?}: archfarm does not take {other:?}; it takes type, dest and (for type=image) push"
                ),
            }
        }
        let kind = kind.with_context(|| format!("--output {value:?} needs type=oci|docker|local|registry|image"))?;
        let dest = |what: &str| -> anyhow::Result<Dest> {
            match dest.as_deref() {
                Some("-") => Ok(Dest::Stdout),
                Some(d) if !d.is_empty() => Ok(Dest::Path(PathBuf::from(d))),
                _ => bail!("--output type={kind} needs dest={what}"),
            }
        };
        Ok(match kind.as_str() {
            "oci" => Output::Oci(dest("FILE (or - for standard output)")?),
            "docker" => Output::Docker(dest("FILE (or - for standard output)")?),
            "local" => match dest("DIR")? {
                Dest::Path(p) => Output::Local(p),
                Dest::Stdout => bail!("--output type=local writes a directory; dest=- is for type=oci or type=docker"),
            },
            "registry" => Output::Push,
            "image" if push => Output::Push,
            "image" => bail!(
                "--output type=image without push=true would leave the image in a build engine on the farm, out of \
                 reach; use --load to load it here, or push=true"
            ),
            "tar" | "cacheonly" => bail!("--output type={kind} is not supported; use type=oci, docker or local"),
            other => bail!("--output type={other:?} is unknown; use type=oci, docker, local, registry or image"),
        })
    }
}

/// Everything the flags ask for: `--push`, `--load` and each `--output`, checked together.
pub fn outputs(push: bool, load: bool, values: &[String]) -> anyhow::Result<Vec<Output>> {
    let mut out: Vec<Output> = values.iter().map(|v| Output::parse(v)).collect::<Result<_, _>>()?;
    if push {
        out.push(Output::Push);
    }
    if load {
        out.push(Output::Load);
    }
    out.dedup();
    let to_stdout =
        out.iter().filter(|o| matches!(o, Output::Oci(Dest::Stdout) | Output::Docker(Dest::Stdout))).count();
    if to_stdout > 1 {
        bail!("only one --output can write to standard output (dest=-)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_buildx_output_syntax() {
        assert_eq!(Output::parse("type=oci,dest=app.tar").unwrap(), Output::Oci(Dest::Path("app.tar".into())));
        assert_eq!(Output::parse("type=docker,dest=-").unwrap(), Output::Docker(Dest::Stdout));
        assert_eq!(Output::parse("type=local,dest=out").unwrap(), Output::Local("out".into()));
        assert_eq!(Output::parse("out").unwrap(), Output::Local("out".into()));
        assert_eq!(Output::parse("type=registry").unwrap(), Output::Push);
        assert_eq!(Output::parse("type=image,push=true").unwrap(), Output::Push);
    }

    #[test]
    fn says_what_is_missing_or_unknown() {
        let err = |v: &str| Output::parse(v).unwrap_err().to_string();
        assert!(err("type=oci").contains("needs dest=FILE"), "{}", err("type=oci"));
        assert!(err("type=image").contains("--load"), "{}", err("type=image"));
        assert!(err("type=zip,dest=x").contains("unknown"), "{}", err("type=zip,dest=x"));
        assert!(err("type=oci,dest=x,compression=zstd").contains("does not take \"compression\""));
        assert!(err("type=local,dest=-").contains("writes a directory"));
        let two = outputs(false, false, &["type=oci,dest=-".into(), "type=docker,dest=-".into()]);
        assert!(two.unwrap_err().to_string().contains("only one"));
        assert_eq!(outputs(true, true, &["type=registry".into()]).unwrap(), [Output::Push, Output::Load]);
    }
}
