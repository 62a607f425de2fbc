//! The state sync protocol over request-response: a node that is behind asks
//! peers which state they serve (an offer: manifest and root hash), then
//! fetches that state's chunks one request each. Frames are length-prefixed and
//! size-limited by the run spec, so a peer cannot make us read more than an
//! offer or a chunk of this run can be.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use starling_protocol::{
    chunks::{CHUNK_BYTES, MAX_CHUNKS},
    snapshot::MAX_SYNC_DELTAS,
    wire::{self, SyncRequest, SyncResponse, MAX_MESSAGE_BYTES, MAX_SYNC_REQUEST_BYTES},
    RunSpec,
};

/// The largest sync response of a run: an offer (a manifest and one round's
/// deltas) or one chunk, whichever is larger, never over the wire's hard limit.
pub fn max_response_bytes(spec: &RunSpec) -> usize {
    let offer = MAX_SYNC_DELTAS * spec.max_delta_bytes() + 32 * MAX_CHUNKS + 4096;
    offer.clamp(CHUNK_BYTES + 1024, MAX_MESSAGE_BYTES)
}

/// Length-prefixed frames with a size limit; bodies are `wire`'s sync encoding.
#[derive(Clone, Debug)]
pub struct StateCodec {
    max_response: usize,
}

impl StateCodec {
    /// A codec that reads responses of at most `max_response` bytes.
    pub fn new(max_response: usize) -> Self {
        Self { max_response }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!("frame of {len} bytes is over the limit of {limit}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for StateCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<SyncRequest> {
        let bytes = read_frame(io, MAX_SYNC_REQUEST_BYTES).await?;
        wire::decode_sync_request(&bytes).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<SyncResponse> {
        let bytes = read_frame(io, self.max_response).await?;
        wire::decode_sync_response(&bytes, self.max_response).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: SyncRequest,
    ) -> io::Result<()> {
        write_frame(io, &wire::encode_sync_request(&request)).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: SyncResponse,
    ) -> io::Result<()> {
        write_frame(io, &wire::encode_sync_response(&response)).await
    }
}
