//! One stream of framed messages: a send half, a receive half and the frame limit, with typed
//! [`MessageStream::read`] and [`MessageStream::write`]. Every stream of the protocol is one of
//! these, so framing (length prefix, size limits, trailing bytes: [`crate::codec`]) is decided
//! in one place and no caller passes a frame limit around.
//!
//! The halves are generic: QUIC streams in the programs ([`QuicStream`]), in-memory pipes in
//! unit tests. A message may be followed by raw bytes (a context upload, a blob), read and
//! written through [`MessageStream::reader`] and [`MessageStream::writer`].

use crate::codec::{self, CodecError};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A message stream over one QUIC bidirectional stream.
pub type QuicStream = MessageStream<quinn::SendStream, quinn::RecvStream>;

/// Both halves of a stream of framed messages, and the largest frame either side accepts.
#[derive(Debug)]
pub struct MessageStream<S, R> {
    send: MessageSender<S>,
    recv: MessageReceiver<R>,
}

/// The sending half of a [`MessageStream`].
#[derive(Debug)]
pub struct MessageSender<S> {
    send: S,
    max_frame: u32,
}

/// The receiving half of a [`MessageStream`].
#[derive(Debug)]
pub struct MessageReceiver<R> {
    recv: R,
    max_frame: u32,
}

impl<S: AsyncWrite + Unpin, R: AsyncRead + Unpin> MessageStream<S, R> {
    /// A stream of frames of at most `max_frame` bytes over `send` and `recv`.
    pub fn new(send: S, recv: R, max_frame: u32) -> Self {
        MessageStream { send: MessageSender::new(send, max_frame), recv: MessageReceiver::new(recv, max_frame) }
    }

    /// Reads one message; `Ok(None)` when the peer finished the stream between messages.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        self.recv.read().await
    }

    /// Reads one message; the stream ending before it is an error.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        self.recv.expect().await
    }

    /// Writes one message.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        self.send.write(msg).await
    }

    /// Finishes the sending half: the peer reads the messages written, then the end.
    pub async fn finish(&mut self) {
        self.send.finish().await;
    }

    /// Writes one last message and finishes the sending half.
    pub async fn write_last<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        let written = self.send.write(msg).await;
        self.send.finish().await;
        written
    }

    /// The largest frame this stream reads or writes.
    pub fn max_frame(&self) -> u32 {
        self.recv.max_frame
    }

    /// The same stream with another frame limit (a small one before a peer is authenticated).
    pub fn with_max_frame(mut self, max_frame: u32) -> Self {
        self.send.max_frame = max_frame;
        self.recv.max_frame = max_frame;
        self
    }

    /// The raw receiving half, for bytes that follow a message.
    pub fn reader(&mut self) -> &mut R {
        &mut self.recv.recv
    }

    /// The raw sending half, for bytes that follow a message.
    pub fn writer(&mut self) -> &mut S {
        &mut self.send.send
    }

    /// The two halves, to send and receive at once.
    pub fn split(self) -> (MessageSender<S>, MessageReceiver<R>) {
        (self.send, self.recv)
    }
}

impl<S: AsyncWrite + Unpin> MessageSender<S> {
    /// A sender of frames of at most `max_frame` bytes.
    pub fn new(send: S, max_frame: u32) -> Self {
        MessageSender { send, max_frame }
    }

    /// Writes one message.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        codec::write_msg(&mut self.send, msg, self.max_frame).await
    }

    /// Finishes the stream. A peer that already went away is no error here: its own reads say so.
    pub async fn finish(&mut self) {
        let _ = self.send.shutdown().await;
    }

    /// The raw half, for bytes that follow a message.
    pub fn writer(&mut self) -> &mut S {
        &mut self.send
    }

    /// The raw half, given up.
    pub fn into_inner(self) -> S {
        self.send
    }
}

impl<R: AsyncRead + Unpin> MessageReceiver<R> {
    /// A receiver of frames of at most `max_frame` bytes.
    pub fn new(recv: R, max_frame: u32) -> Self {
        MessageReceiver { recv, max_frame }
    }

    /// Reads one message; `Ok(None)` when the peer finished the stream between messages.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        codec::read_msg(&mut self.recv, self.max_frame).await
    }

    /// Reads one message; the stream ending before it is an error.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        codec::expect_msg(&mut self.recv, self.max_frame).await
    }

    /// The raw half, for bytes that follow a message.
    pub fn reader(&mut self) -> &mut R {
        &mut self.recv
    }

    /// The raw half, given up (to hand the bytes after a message to their reader).
    pub fn into_inner(self) -> R {
        self.recv
    }
}

impl QuicStream {
    /// Opens a new stream on `conn`.
    pub async fn open(conn: &quinn::Connection, max_frame: u32) -> Result<Self, quinn::ConnectionError> {
        let (send, recv) = conn.open_bi().await?;
        Ok(MessageStream::new(send, recv, max_frame))
    }

    /// Accepts the peer's next stream on `conn`.
    pub async fn accept(conn: &quinn::Connection, max_frame: u32) -> Result<Self, quinn::ConnectionError> {
        let (send, recv) = conn.accept_bi().await?;
        Ok(MessageStream::new(send, recv, max_frame))
    }

    /// Abandons the stream both ways with `code`: what the peer sent but this side has not
    /// read is discarded, and the peer's reads and writes fail with that code.
    pub fn reset(&mut self, code: u32) {
        let _ = self.send.send.reset(code.into());
        let _ = self.recv.recv.stop(code.into());
    }

    /// Tells the peer to stop sending (with `code`); what it sent is not wanted.
    pub fn stop_reading(&mut self, code: u32) {
        let _ = self.recv.recv.stop(code.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AgentMessage;

    #[tokio::test]
    async fn messages_cross_in_order_and_the_end_is_clean() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (a_recv, a_send) = tokio::io::split(a);
        let (b_recv, b_send) = tokio::io::split(b);
        let mut left = MessageStream::new(a_send, a_recv, codec::DEFAULT_MAX_FRAME);
        let mut right = MessageStream::new(b_send, b_recv, codec::DEFAULT_MAX_FRAME);
        left.write(&AgentMessage::Heartbeat { running: 2 }).await.unwrap();
        left.write(&AgentMessage::Draining).await.unwrap();
        left.finish().await;
        assert_eq!(right.expect::<AgentMessage>().await.unwrap(), AgentMessage::Heartbeat { running: 2 });
        assert_eq!(right.read::<AgentMessage>().await.unwrap(), Some(AgentMessage::Draining));
        assert_eq!(right.read::<AgentMessage>().await.unwrap(), None);
        assert!(matches!(right.expect::<AgentMessage>().await, Err(CodecError::Truncated { .. })));
    }

    #[tokio::test]
    async fn the_frame_limit_holds_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (a_recv, a_send) = tokio::io::split(a);
        let (b_recv, b_send) = tokio::io::split(b);
        let mut big = MessageStream::new(a_send, a_recv, codec::DEFAULT_MAX_FRAME);
        let mut small = MessageStream::new(b_send, b_recv, codec::DEFAULT_MAX_FRAME).with_max_frame(64);
        let line = AgentMessage::JobLog { line: "x".repeat(200) };
        assert!(matches!(small.write(&line).await, Err(CodecError::Encode(_))));
        big.write(&line).await.unwrap();
        assert!(matches!(small.read::<AgentMessage>().await, Err(CodecError::Oversized { max: 64, .. })));
    }
}
