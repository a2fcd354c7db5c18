//! `--load`: one platform into the local Docker Engine (the one `DOCKER_HOST` names, as for the
//! docker CLI), under the `-t` names. With several platforms, the one that matches the engine
//! is loaded, and the client says so; with none matching, it refuses and names both sides.

use super::{archive, Image, Images};
use anyhow::{bail, Context as _};
use archfarm_shared::Platform;
use bollard::query_parameters::ImportImageOptions;
use futures_util::StreamExt as _;
use std::time::Duration;

/// How long the local engine has to answer and to load an image.
const CONNECT: Duration = Duration::from_secs(10);
const LOADING: Duration = Duration::from_secs(1800);

/// The local engine and its platform.
#[derive(Debug)]
pub struct Engine {
    docker: bollard::Docker,
    platform: Platform,
}

impl Engine {
    /// Connects to the local engine and reads its platform, before anything is built.
    pub async fn connect() -> anyhow::Result<Engine> {
        let docker = bollard::Docker::connect_with_defaults()
            .context("--load needs the local Docker Engine, and none was found (is DOCKER_HOST right?)")?;
        let version = tokio::time::timeout(CONNECT, docker.version())
            .await
            .context("--load: the local Docker Engine did not answer within 10 s")?
            .context("--load needs the local Docker Engine, and it did not answer")?;
        let (os, arch) = (version.os.unwrap_or_default(), version.arch.unwrap_or_default());
        let platform = Platform::new(&os, &arch, None)
            .map_err(|e| anyhow::anyhow!("the local engine reports platform {os}/{arch}: {e}"))?;
        Ok(Engine { docker, platform })
    }

    /// Refuses a build none of whose platforms this engine runs, naming both sides.
    pub fn check(&self, platforms: &[Platform]) -> anyhow::Result<()> {
        if platforms.iter().any(|p| p.os() == self.platform.os() && p.arch() == self.platform.arch()) {
            return Ok(());
        }
        bail!(
            "--load: the local engine is {}, and the build asks for {}; none of them runs here natively. Add {} \
             to --platform, or use --output type=docker,dest=FILE to take one platform as a file",
            self.platform,
            archfarm_shared::platform::list(platforms),
            self.platform
        )
    }

    /// The image of `images` this engine runs natively.
    fn pick<'a>(&self, images: &'a Images) -> anyhow::Result<&'a Image> {
        let matches = |i: &&Image| i.platform.os() == self.platform.os() && i.platform.arch() == self.platform.arch();
        match images.images.iter().find(matches) {
            Some(image) => Ok(image),
            None => bail!(
                "--load: the local engine is {}, and the build has {}; nothing here runs natively. Build {} too, \
                 or use --output type=docker,dest=FILE to take one platform as a file",
                self.platform,
                images.images.iter().map(|i| i.platform.to_string()).collect::<Vec<_>>().join(", "),
                self.platform
            ),
        }
    }

    /// Loads the matching platform of `images` under `tags`.
    pub async fn load(&self, images: &std::sync::Arc<Images>, tags: &[String]) -> anyhow::Result<()> {
        let image = self.pick(images)?.clone();
        let archive = tempfile::NamedTempFile::new().context("cannot create a file for the archive")?;
        let (shared, names, path) = (images.clone(), tags.to_vec(), archive.path().to_owned());
        let chosen = image.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&path)?;
            archive::write_docker(&shared, &chosen, &names, std::io::BufWriter::new(file))
        })
        .await??;
        let file = tokio::fs::File::open(archive.path()).await?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let options = ImportImageOptions { quiet: true, ..Default::default() };
        let mut answers = self.docker.import_image_stream(options, body, None);
        let loading = async {
            while let Some(answer) = answers.next().await {
                let answer = answer.context("the local engine refused the image")?;
                if let Some(e) = answer.error_detail.and_then(|d| d.message) {
                    bail!("the local engine refused the image: {e}");
                }
            }
            Ok(())
        };
        tokio::time::timeout(LOADING, loading).await.context("--load: the local engine took over 30 min")??;
        let also = if images.images.len() > 1 {
            format!(" (the platform of the local engine; the build also made {})", others(images, &image))
        } else {
            String::new()
        };
        let name = if tags.is_empty() { format!("image {} (untagged)", image.config.digest) } else { tags.join(", ") };
        eprintln!("loaded {} into the local engine as {name}{also}", image.platform);
        Ok(())
    }
}

fn others(images: &Images, chosen: &Image) -> String {
    images
        .images
        .iter()
        .filter(|i| i.platform != chosen.platform)
        .map(|i| i.platform.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
