//! The payload protocol: large deltas travel apart from gossip. Gossip
//! carries a signed header (the announcement, a few hundred bytes); a node
//! that wants the delta asks the peer that forwarded the announcement for the
//! payload by its hash, over one request-response stream. Each node then
//! receives each payload once, and gossipsub never copies a model-sized
//! message into its caches and per-peer queues.
//!
//! A request is a payload hash; a response is the payload or "not held".
//! Responses are length-prefixed and refused past the run's largest payload
//! before any byte of them is read.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// A payload, asked for by its hash (the header's `payload_hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadRequest(pub [u8; 32]);

/// The payload, or `None` when the peer does not hold it (any more).
pub type PayloadResponse = Option<Bytes>;

/// Frames of the payload protocol, with the run's payload limit.
#[derive(Clone, Debug)]
pub struct PayloadCodec {
    max_payload: usize,
}

impl PayloadCodec {
    /// A codec that reads payloads of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for PayloadCodec {
    type Protocol = StreamProtocol;
    type Request = PayloadRequest;
    type Response = PayloadResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<PayloadRequest> {
        let mut hash = [0u8; 32];
        io.read_exact(&mut hash).await?;
        Ok(PayloadRequest(hash))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<PayloadResponse> {
        let mut held = [0u8; 1];
        io.read_exact(&mut held).await?;
        match held[0] {
            0 => return Ok(None),
            1 => {}
            other => return Err(invalid(format!("payload response starts with {other}, not 0 or 1"))),
        }
        let mut len = [0u8; 8];
        io.read_exact(&mut len).await?;
        let len = u64::from_be_bytes(len);
        if len > self.max_payload as u64 {
            return Err(invalid(format!(
                "the peer announced a payload of {len} bytes, over this run's limit of {}",
                self.max_payload
            )));
        }
        // Sized once and zeroed by the allocator (fresh pages from the
        // kernel, not a pass over them; huge pages when large): the pages are
        // touched only as bytes arrive, so a peer that claims more than it
        // sends costs what it sends. (`read_to_end` would zero the whole
        // buffer first: profiled at about a sixth of a 40 MB transfer.)
        let mut buf = crate::large_buffer::zeroed(len as usize);
        io.read_exact(&mut buf).await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the payload ended before the {len} bytes the peer announced"),
            ),
            _ => e,
        })?;
        Ok(Some(Bytes::from(buf)))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: PayloadRequest,
    ) -> io::Result<()> {
        io.write_all(&request.0).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: PayloadResponse,
    ) -> io::Result<()> {
        match response {
            None => io.write_all(&[0]).await?,
            Some(payload) => {
                io.write_all(&[1]).await?;
                io.write_all(&(payload.len() as u64).to_be_bytes()).await?;
                io.write_all(&payload).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    use super::*;

    #[tokio::test]
    async fn requests_and_responses_round_trip() {
        let protocol = StreamProtocol::new("/test");
        let mut codec = PayloadCodec::new(1 << 20);
        let mut io = Cursor::new(Vec::new());
        codec.write_request(&protocol, &mut io, PayloadRequest([7; 32])).await.unwrap();
        io.set_position(0);
        assert_eq!(codec.read_request(&protocol, &mut io).await.unwrap(), PayloadRequest([7; 32]));
        for response in [None, Some(Bytes::from(vec![3u8; 5000])), Some(Bytes::new())] {
            let mut io = Cursor::new(Vec::new());
            codec.write_response(&protocol, &mut io, response.clone()).await.unwrap();
            io.set_position(0);
            assert_eq!(codec.read_response(&protocol, &mut io).await.unwrap(), response);
        }
    }

    #[tokio::test]
    async fn an_oversized_or_short_or_odd_response_is_an_error() {
        let protocol = StreamProtocol::new("/test");
        let mut codec = PayloadCodec::new(100);
        let framed = |len: u64, body: &[u8]| {
            let mut bytes = vec![1];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(body);
            Cursor::new(bytes)
        };
        let error = codec.read_response(&protocol, &mut framed(101, &[0; 101])).await.unwrap_err();
        assert!(error.to_string().contains("101 bytes, over this run's limit of 100"), "{error}");
        let error = codec.read_response(&protocol, &mut framed(50, &[0; 10])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let error = codec.read_response(&protocol, &mut Cursor::new(vec![2])).await.unwrap_err();
        assert!(error.to_string().contains("starts with 2"), "{error}");
    }
}
