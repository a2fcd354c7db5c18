//! `archfarm imagetools inspect REF`: what the registry holds under a reference, straight from
//! the registry (like `docker buildx imagetools inspect`).

use archfarm_shared::oci;
use archfarm_shared::registry::{self, Registry};
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
            writeln!(out, "  Platform:  {platform}\n")?;
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
