//! Image references as the farm uses them: `REGISTRY/REPOSITORY[:TAG][@DIGEST]`. Parsing (by
//! the distribution grammar) is the registry adapter's ([`crate::registry::parse_reference`]);
//! everything the farm derives from a reference is here.

use crate::ids::Digest;
use std::fmt;

/// A parsed, validated image reference. The registry is always explicit (`docker.io` when
/// the user gave none), and at least one of tag and digest is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// A reference from parts the registry adapter has already checked.
    pub(crate) fn from_parts(
        registry: String,
        repository: String,
        tag: Option<String>,
        digest: Option<Digest>,
    ) -> Self {
        ImageRef { registry, repository, tag, digest }
    }

    /// The registry host, `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry, for example `team/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The repository with its registry, without tag or digest: `127.0.0.1:5000/team/app`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag, if the reference names one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference names one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository under `tag`.
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef { tag: Some(tag.to_owned()), digest: None, ..self.clone() }
    }

    /// The same repository by `digest`.
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef { tag: None, digest: Some(digest.clone()), ..self.clone() }
    }

    /// Whether both name the same repository in the same registry.
    pub fn same_repository(&self, other: &ImageRef) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }

    /// The whole reference as text.
    pub fn whole(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_references_keep_the_repository() {
        let r = ImageRef::from_parts("127.0.0.1:5000".into(), "team/app".into(), Some("1.4".into()), None);
        assert_eq!(r.whole(), "127.0.0.1:5000/team/app:1.4");
        assert_eq!(r.name(), "127.0.0.1:5000/team/app");
        let d = Digest::of(b"m");
        let by_digest = r.with_digest(&d);
        assert_eq!(by_digest.whole(), format!("127.0.0.1:5000/team/app@{d}"));
        assert_eq!((by_digest.tag(), by_digest.digest()), (None, Some(&d)));
        assert_eq!(by_digest.with_tag("latest").whole(), "127.0.0.1:5000/team/app:latest");
        assert!(r.same_repository(&by_digest));
        assert!(!r.same_repository(&ImageRef::from_parts("127.0.0.1:5000".into(), "other".into(), None, None)));
    }
}
