//! `archfarm imagetools inspect REF`: what the registry holds under a reference, straight from
//! the registry (like `docker buildx imagetools inspect`); and `imagetools create`, one index
//! over images already pushed, each checked as the farm checks an agent's push.

use anyhow::bail;
use archfarm_shared::images;
use archfarm_shared::oci::{self, Child};
use archfarm_shared::reference::ImageRef;
use archfarm_shared::registry::{self, Registry};
use archfarm_shared::request;
use archfarm_shared::Digest;
use std::fmt::Write;

/// Prints the index (or manifest) at `reference` and its platforms, or the raw JSON.
pub async fn inspect(reference: &str, raw: bool, insecure: &[String]) -> anyhow::Result<()> {
    let r = registry::parse_reference(reference)?;
    let reg = Registry::for_reference(&r, insecure);
    let (bytes, digest) = reg.manifest(&r, oci::ANY_MANIFEST).await?;
    if raw {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let media_type = oci::media_type_of(&bytes).unwrap_or_default();
    let mut out = String::new();
    writeln!(out, "Name:      {}", r.whole())?;
    writeln!(out, "MediaType: {media_type}")?;
    writeln!(out, "Digest:    {digest}")?;
    if media_type == oci::OCI_INDEX || media_type == oci::DOCKER_LIST {
        let index: serde_json::Value = serde_json::from_slice(&bytes)?;
        writeln!(out, "\nManifests:")?;
        for m in index["manifests"].as_array().into_iter().flatten() {
            let p = &m["platform"];
            let mut platform =
                format!("{}/{}", p["os"].as_str().unwrap_or("?"), p["architecture"].as_str().unwrap_or("?"));
            if let Some(v) = p["variant"].as_str() {
                platform.push('/');
                platform.push_str(v);
            }
            writeln!(out, "  Name:      {}/{}@{}", r.registry(), r.repository(), m["digest"].as_str().unwrap_or("?"))?;
            writeln!(out, "  MediaType: {}", m["mediaType"].as_str().unwrap_or("?"))?;
            match m["annotations"][oci::REFERENCE_TYPE].as_str() {
                Some(oci::ATTESTATION_MANIFEST) => writeln!(
                    out,
                    "  Platform:  {platform}\n  Attests:   {} (provenance)\n",
                    m["annotations"][oci::REFERENCE_DIGEST].as_str().unwrap_or("?")
                )?,
                _ => writeln!(out, "  Platform:  {platform}\n")?,
            }
        }
    } else {
        let (_, config) = oci::manifest_config(&bytes)?;
        let repo = r.with_tag("latest");
        let config: Digest = config.parse()?;
        let platform = oci::config_platform(&reg.blob(&repo, &config).await?).map_err(anyhow::Error::msg)?;
        writeln!(out, "Platform:  {platform}")?;
    }
    print!("{out}");
    Ok(())
}

/// The single-platform manifests `source` names: itself, or an index's runnable children (not
/// its attestation manifests, which attest the old index's children and are left behind).
async fn manifests_of(reg: &Registry, source: &ImageRef) -> anyhow::Result<Vec<Digest>> {
    let (bytes, digest) = reg.manifest(source, oci::ANY_MANIFEST).await?;
    let media_type = oci::media_type_of(&bytes).unwrap_or_default();
    if media_type != oci::OCI_INDEX && media_type != oci::DOCKER_LIST {
        return Ok(vec![digest]);
    }
    let index: serde_json::Value = serde_json::from_slice(&bytes)?;
    let children = index["manifests"].as_array().into_iter().flatten();
    children
        .filter(|m| m["annotations"][oci::REFERENCE_TYPE] != oci::ATTESTATION_MANIFEST)
        .map(|m| Ok(m["digest"].as_str().unwrap_or_default().parse()?))
        .collect()
}

/// `archfarm imagetools create -t TAG… SOURCE…`: checks each source's platform from its config
/// and publishes one canonical index over them, in the order given, under every tag.
pub async fn create(tags: &[String], sources: &[String], insecure: &[String]) -> anyhow::Result<()> {
    let dest = request::destination(tags)?;
    let reg = Registry::for_reference(&dest.repository, insecure);
    reg.authorize_push(&dest.repository).await?;
    let mut children: Vec<Child> = Vec::new();
    for source in sources {
        let from = registry::parse_reference(source)?;
        if from.registry() != dest.repository.registry() {
            bail!(
                "{source} is in registry {}, and the index goes to {}: an index lists images of its own repository; \
                 push the image there first",
                from.registry(),
                dest.repository.registry()
            );
        }
        for digest in manifests_of(&reg, &from).await? {
            if !from.same_repository(&dest.repository) {
                images::bring(&reg, &from, &dest.repository.with_digest(&digest), &digest)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            let child = images::read_child(&reg, &dest.repository, &digest, None)
                .await
                .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            if let Some(twin) = children.iter().find(|c| c.platform == child.platform) {
                bail!(
                    "{} and {} are both {}: an index holds one image per platform",
                    twin.manifest.digest,
                    digest,
                    child.platform
                );
            }
            eprintln!("  {:<14} {}  (from {source})", child.platform.to_string(), digest);
            children.push(child);
        }
    }
    let index = images::publish_index(&reg, &dest.tags, &children, &[]).await.map_err(anyhow::Error::msg)?;
    eprintln!("published index {index} as {}", tags.join(", "));
    println!("{index}");
    Ok(())
}
