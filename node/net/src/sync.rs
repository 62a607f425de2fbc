//! The state sync protocol over request-response: a node that is behind asks
//! peers which state they serve (an offer: manifest and root hash), then
//! fetches that state's chunks one request each. Frames are length-prefixed and
//! size-limited by the run spec, so a peer cannot make us read more than an
//! offer or a chunk of this run can be.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use starling_protocol::{
    chunks::{CHUNK_BYTES, MAX_CHUNKS, MAX_SYNC_EXPECTED},
    snapshot::MAX_SYNC_DELTAS,
    wire::{self, SyncRequest, SyncResponse, MAX_MESSAGE_BYTES, MAX_SYNC_REQUEST_BYTES},
    RunSpec,
};

/// The largest sync response of a run: an offer (a manifest, one round's
/// deltas and the keys expected in it) or one chunk, whichever is larger,
/// never over the wire's hard limit.
pub fn max_response_bytes(spec: &RunSpec) -> usize {
    let offer = MAX_SYNC_DELTAS * spec.max_delta_bytes() + 32 * (MAX_CHUNKS + MAX_SYNC_EXPECTED) + 4096;
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

/// Reads one length-prefixed frame of at most `limit` bytes.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_frame_into(io, limit, &mut buf).await?;
    Ok(buf)
}

/// Reads one frame into `buf` through `take`, so that memory grows with the
/// bytes that actually arrive, never with the length the peer claims: a peer
/// announcing a frame of the limit and sending ten bytes costs ten bytes.
async fn read_frame_into<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!(
            "the peer announced a state sync frame of {len} bytes, over this run's limit of {limit}"
        )));
    }
    let read = io.take(len as u64).read_to_end(buf).await?;
    if read < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the state sync frame ended after {read} of the {len} bytes the peer announced"),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn framed(len: u32, body: &[u8]) -> Cursor<Vec<u8>> {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        Cursor::new(bytes)
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_limit_is_refused_before_reading_it() {
        let mut buf = Vec::new();
        let error = read_frame_into(&mut framed(u32::MAX, b"tiny"), 1 << 20, &mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("4294967295 bytes, over this run's limit of 1048576"), "{error}");
        assert_eq!(buf.capacity(), 0, "nothing is allocated for a refused frame");
    }

    #[tokio::test]
    async fn a_peer_claiming_a_huge_frame_costs_only_the_bytes_it_sends() {
        let limit = MAX_MESSAGE_BYTES;
        let mut buf = Vec::new();
        let error = read_frame_into(&mut framed(limit as u32, &[7; 10]), limit, &mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("after 10 of the 536870912 bytes"), "{error}");
        assert!(buf.capacity() < 4096, "{} bytes held for a 10-byte frame", buf.capacity());
    }

    #[tokio::test]
    async fn a_whole_frame_reads_and_what_follows_it_is_left() {
        let mut io = framed(3, b"abcdef");
        assert_eq!(read_frame(&mut io, 3).await.unwrap(), b"abc");
        assert_eq!(io.position(), 7);
    }

    #[tokio::test]
    async fn requests_and_responses_round_trip_and_an_oversized_response_is_refused() {
        use libp2p::request_response::Codec as _;
        let protocol = StreamProtocol::new("/test");
        let mut codec = StateCodec::new(CHUNK_BYTES + 1024);
        let mut io = Cursor::new(Vec::new());
        codec
            .write_request(&protocol, &mut io, SyncRequest::Chunk { root: [3; 32], index: 9 })
            .await
            .unwrap();
        io.set_position(0);
        let request = codec.read_request(&protocol, &mut io).await.unwrap();
        assert_eq!(request, SyncRequest::Chunk { root: [3; 32], index: 9 });

        let mut io = Cursor::new(Vec::new());
        codec.write_response(&protocol, &mut io, SyncResponse::Chunk(vec![1; 2048])).await.unwrap();
        io.set_position(0);
        assert_eq!(
            codec.read_response(&protocol, &mut io).await.unwrap(),
            SyncResponse::Chunk(vec![1; 2048])
        );

        let mut small = StateCodec::new(1024);
        io.set_position(0);
        let error = small.read_response(&protocol, &mut io).await.unwrap_err();
        assert!(error.to_string().contains("over this run's limit of 1024"), "{error}");
    }
}
