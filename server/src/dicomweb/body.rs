//! A response body fed by a producer on the blocking pool through a bounded channel.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Pieces of a response a producer may have queued ahead of the network.
pub const RETRIEVE_QUEUE_PIECES_MAX: usize = 8;

/// The receiving end; the producer holds a [`Sender`]. It keeps the request's slot
/// (`http.requests_max`) until the response is sent or abandoned.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

pub type Sender = mpsc::Sender<Result<Bytes, std::io::Error>>;

pub fn channel(slot: tokio::sync::OwnedSemaphorePermit) -> (Sender, ChannelBody) {
    let (tx, rx) = mpsc::channel(RETRIEVE_QUEUE_PIECES_MAX);
    (tx, ChannelBody { rx, _slot: slot })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|piece| piece.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
