//! Where a build's images go: its repository and tags, from the request once it passed the
//! rules every request must meet ([`archfarm_shared::request::validate`]). A build that names
//! no tag has no target: its images go to the coordinator, and from there to the client.

use archfarm_shared::protocol::BuildRequest;
use archfarm_shared::reference::ImageRef;
use archfarm_shared::request;

/// A build's repository and its tags.
#[derive(Debug, Clone)]
pub struct Target {
    /// The repository, `registry/name`.
    pub repo: ImageRef,
    /// Every tag asked for, in that repository.
    pub tags: Vec<ImageRef>,
}

impl Target {
    /// Checks `req` and says where its images go; `Err` says which rule it breaks.
    pub fn of(req: &BuildRequest) -> Result<Option<Target>, String> {
        let dest = request::validate(req).map_err(|e| e.to_string())?;
        Ok(dest.map(|d| Target { repo: d.repository, tags: d.tags }))
    }
}
