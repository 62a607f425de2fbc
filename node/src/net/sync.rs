//! State sync over request-response: a node that is behind asks a peer for its
//! current model state. Frames are length-prefixed and size-limited by the run
//! spec, so a peer cannot make us read more than a state of this run can be.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use starling_protocol::RunId;

/// Asks for the current state of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRequest {
    pub run_id: RunId,
}

/// An encoded `SyncReply` (`starling_protocol::wire::encode_sync_reply`), or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateResponse {
    State(Vec<u8>),
    Unavailable,
}

/// Length-prefixed frames with a size limit.
#[derive(Clone, Debug)]
pub struct StateCodec {
    max_state: usize,
}

impl StateCodec {
    pub fn new(max_state: usize) -> Self {
        Self { max_state }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {limit}"),
        ));
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
    type Request = StateRequest;
    type Response = StateResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<StateRequest> {
        let bytes = read_frame(io, 32).await?;
        let run_id: [u8; 32] = bytes.try_into().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "state request must hold a 32-byte run id")
        })?;
        Ok(StateRequest { run_id: RunId(run_id) })
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<StateResponse> {
        let bytes = read_frame(io, self.max_state).await?;
        Ok(if bytes.is_empty() { StateResponse::Unavailable } else { StateResponse::State(bytes) })
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: StateRequest,
    ) -> io::Result<()> {
        write_frame(io, &req.run_id.0).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: StateResponse,
    ) -> io::Result<()> {
        match res {
            StateResponse::State(bytes) => write_frame(io, &bytes).await,
            StateResponse::Unavailable => write_frame(io, &[]).await,
        }
    }
}
