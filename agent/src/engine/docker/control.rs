//! BuildKit's Control API inside the engine, over `/grpc` (the connection upgraded to h2c, the
//! engine's BuildKit serving gRPC on it): `Info`, for the version a fleet reports, and the
//! connection [`super::solve`] builds through.

use super::raw::RawApi;
use bollard::moby::buildkit::v1::control_client::ControlClient;
use bollard::moby::buildkit::v1::InfoRequest;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long asking BuildKit its version may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// BuildKit's version (`v0.13.2`), or empty when the engine does not say: BuildKit before 0.11
/// (Docker Engine 20.10's) has no `Info`.
pub(super) async fn buildkit_version(raw: &RawApi) -> String {
    let ask = async {
        let answer = connect(raw).await?.info(InfoRequest {}).await.map_err(|e| e.message().to_owned())?;
        Ok::<_, String>(answer.into_inner().buildkit_version.map(|v| v.version).unwrap_or_default())
    };
    match tokio::time::timeout(DEADLINE, ask).await {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => {
            tracing::debug!("the engine's BuildKit does not say its version: {e}");
            String::new()
        }
        Err(_) => String::new(),
    }
}

/// A client of the engine's BuildKit on a connection of its own, which closes when the client
/// (and every clone of it) is dropped.
pub(super) async fn connect(raw: &RawApi) -> Result<ControlClient<tonic::transport::Channel>, String> {
    let connection = raw.upgrade("/grpc", &[]).await?;
    let connector = Once(Arc::new(Mutex::new(Some(connection.into_inner()))));
    let channel = tonic::transport::Endpoint::from_static("http://engine")
        .connect_timeout(DEADLINE)
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connecting to the engine's BuildKit: {e}"))?;
    Ok(ControlClient::new(channel).max_decoding_message_size(32 << 20))
}

/// A connector that hands tonic the one connection it was made with.
#[derive(Clone)]
struct Once(Arc<Mutex<Option<hyper::upgrade::Upgraded>>>);

impl tower_service::Service<hyper::Uri> for Once {
    type Response = hyper::upgrade::Upgraded;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        Box::pin(async move { taken.ok_or_else(|| std::io::Error::other("the /grpc connection was used already")) })
    }
}
