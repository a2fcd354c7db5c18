//! What a handler answers: one response, or a snapshot followed by a build's live events.

use archfarm_shared::codec;
use archfarm_shared::protocol::{BuildEvent, ClientResponse};
use archfarm_shared::stream::QuicStream;
use tokio::sync::broadcast;

/// The answer to one request, written on its stream by [`Reply::send`].
#[derive(Debug)]
pub struct Reply {
    responses: Vec<ClientResponse>,
    events: Option<broadcast::Receiver<BuildEvent>>,
}

impl Reply {
    /// One response.
    pub fn one(response: ClientResponse) -> Self {
        Reply { responses: vec![response], events: None }
    }

    /// Several responses, in order.
    pub fn many(responses: Vec<ClientResponse>) -> Self {
        Reply { responses, events: None }
    }

    /// `items` in pages (`wrap` makes a response of one page) of about `budget` encoded bytes
    /// each, so a listing never outgrows a frame however long its entries; at least one page.
    pub fn pages<T: serde::Serialize>(items: Vec<T>, budget: usize, wrap: fn(Vec<T>) -> ClientResponse) -> Self {
        let (mut pages, mut page, mut size) = (Vec::new(), Vec::new(), 0);
        for item in items {
            let n = codec::encode(&item, u32::MAX).map_or(budget, |frame| frame.len());
            if !page.is_empty() && size + n > budget {
                pages.push(wrap(std::mem::take(&mut page)));
                size = 0;
            }
            size += n;
            page.push(item);
        }
        pages.push(wrap(page));
        Reply::many(pages)
    }

    /// The responses, in order (for tests).
    #[cfg(test)]
    pub fn responses(&self) -> &[ClientResponse] {
        &self.responses
    }

    /// An error the client shows as it is.
    pub fn error(message: impl Into<String>) -> Self {
        Reply::one(ClientResponse::Error { message: message.into() })
    }

    /// `first` responses, then every event of a running build until its last one.
    pub fn follow(first: Vec<ClientResponse>, events: broadcast::Receiver<BuildEvent>) -> Self {
        Reply { responses: first, events: Some(events) }
    }

    /// Writes the reply and finishes the stream. A client that goes away detaches; the build
    /// runs on to its end.
    pub async fn send(self, mut stream: QuicStream) {
        for response in &self.responses {
            if stream.write(response).await.is_err() {
                return;
            }
        }
        if let Some(events) = self.events {
            forward(events, &mut stream).await;
        }
        stream.finish().await;
    }
}

/// Forwards a build's events until its last one.
async fn forward(mut events: broadcast::Receiver<BuildEvent>, stream: &mut QuicStream) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // A slow client misses old log lines, never the end.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let last = matches!(event, BuildEvent::Published { .. } | BuildEvent::Built { .. } | BuildEvent::Failed { .. });
        if stream.write(&ClientResponse::Build(event)).await.is_err() || last {
            break;
        }
    }
}
