//! `starling status`, `starling pause` and `starling resume`: ask a running
//! node through its HTTP API, found by `--http ADDR` or by the address its
//! datadir's `http.addr` names.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::ADDR_FILE;
use crate::status::NodeStatus;

/// Which running node to ask.
#[derive(Debug, Args)]
pub struct NodeApiArgs {
    /// The datadir of the node (its `http.addr` names the API's address).
    #[arg(long, env = "STARLING_DATADIR", required_unless_present = "http")]
    pub datadir: Option<PathBuf>,
    /// The node's HTTP API address, e.g. 127.0.0.1:7465 (instead of --datadir).
    #[arg(long, value_name = "ADDR", conflicts_with = "datadir")]
    pub http: Option<SocketAddr>,
}

/// `starling status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeApiArgs,
    /// Print the node's `/status` JSON as is.
    #[arg(long)]
    pub json: bool,
}

/// Why a running node could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node is running on datadir {datadir}: start one with `starling run --datadir {datadir}`")]
    NoNode { datadir: String },
    #[error("no node answers on datadir {datadir}: its {ADDR_FILE} names {addr}, which refuses connections (the node may have crashed); start one with `starling run --datadir {datadir}`")]
    Stale { datadir: String, addr: SocketAddr },
    #[error("{path} does not hold an address ({text:?}); remove it, or pass --http ADDR")]
    BadAddrFile { path: String, text: String },
    #[error("cannot reach a node at {addr} (--http): {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the node at {addr} answered {status}: {body}")]
    Refused { addr: SocketAddr, status: StatusCode, body: String },
    #[error("the node at {addr} sent a status this starling cannot read: {reason}")]
    BadStatus { addr: SocketAddr, reason: String },
}

/// The address of the node `args` names.
pub fn resolve(args: &NodeApiArgs) -> Result<(SocketAddr, Option<String>), ClientError> {
    if let Some(addr) = args.http {
        return Ok((addr, None));
    }
    let datadir = args.datadir.as_deref().unwrap_or(Path::new("."));
    let shown = datadir.display().to_string();
    let path = datadir.join(ADDR_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| ClientError::NoNode { datadir: shown.clone() })?;
    let addr = text
        .trim()
        .parse()
        .map_err(|_| ClientError::BadAddrFile { path: path.display().to_string(), text: text.clone() })?;
    Ok((addr, Some(shown)))
}

/// Sends `method path` to the node named by `args` and returns the body of a 2xx answer.
pub async fn call(
    args: &NodeApiArgs,
    method: Method,
    path: &str,
) -> Result<(SocketAddr, Bytes), ClientError> {
    let (addr, datadir) = resolve(args)?;
    match request(addr, method, path).await {
        Ok((status, body)) if status.is_success() => Ok((addr, body)),
        Ok((status, body)) => {
            Err(ClientError::Refused { addr, status, body: String::from_utf8_lossy(&body).into_owned() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => match datadir {
            Some(datadir) => Err(ClientError::Stale { datadir, addr }),
            None => Err(ClientError::Unreachable { addr, reason: e.to_string() }),
        },
        Err(e) => Err(ClientError::Unreachable { addr, reason: e.to_string() }),
    }
}

/// One HTTP/1.1 request without a body, within 10 s.
pub async fn request(addr: SocketAddr, method: Method, path: &str) -> std::io::Result<(StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")))
}

fn parse_status(addr: SocketAddr, body: &[u8]) -> Result<NodeStatus, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::BadStatus { addr, reason: e.to_string() })
}

/// `starling status`: a short summary, or the JSON with `--json`.
pub async fn status(args: StatusArgs) -> Result<(), ClientError> {
    let (addr, body) = call(&args.node, Method::GET, "/status").await?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
    } else {
        println!("{}", parse_status(addr, &body)?);
        println!("dashboard http://{addr}/");
    }
    Ok(())
}

/// `starling pause` (`paused`) and `starling resume`.
pub async fn set_paused(args: NodeApiArgs, paused: bool) -> Result<(), ClientError> {
    let path = if paused { "/pause" } else { "/resume" };
    let (addr, body) = call(&args, Method::POST, path).await?;
    let status = parse_status(addr, &body)?;
    println!("{} at round {} ({})", if paused { "paused" } else { "resumed" }, status.round, status.state);
    Ok(())
}
