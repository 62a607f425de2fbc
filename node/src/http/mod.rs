//! The node's HTTP API (axum), served by `starling run` on 127.0.0.1:7465 by
//! default: the dashboard at `/`, Prometheus metrics at `/metrics`, `/health`,
//! `/status` (JSON) and `POST /pause` and `/resume`. Once the node has opened
//! its datadir, the bound address is written to `<datadir>/http.addr`, where
//! `starling status|pause|resume` find it; the file goes when the node stops.

pub mod client;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use clap::Args;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

use crate::{
    node::{ControlError, NodeControl, NodeEvent},
    status::Health,
};

/// The file in the datadir that names a running node's HTTP address.
pub const ADDR_FILE: &str = "http.addr";

/// The default `--http` address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7465";

const DASHBOARD: &str = include_str!("dashboard.html");

/// Prometheus scrapes OpenMetrics, which is what prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP API's flags on `starling run`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Serve the dashboard, /metrics, /health, /status and /pause|/resume here.
    /// Port 0 picks a free port; the bound address is written to <datadir>/http.addr.
    #[arg(long, env = "STARLING_HTTP", default_value = DEFAULT_ADDR, value_name = "ADDR")]
    pub http: SocketAddr,
    /// Serve no HTTP API (overrides --http).
    #[arg(long)]
    pub no_http: bool,
}

impl HttpArgs {
    /// The address to serve on; `None` with `--no-http`.
    pub fn address(&self) -> Option<SocketAddr> {
        (!self.no_http).then_some(self.http)
    }
}

/// Why the HTTP API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot serve HTTP on {addr} (--http): {source}; {hint}")]
    Bind { addr: SocketAddr, source: std::io::Error, hint: String },
}

/// Binds the API's address; a clear error names `--http` and a free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            let free = std::net::TcpListener::bind((addr.ip(), 0))
                .and_then(|l| l.local_addr())
                .map(|a| format!("--http {a} is free now; "))
                .unwrap_or_default();
            format!(
                "another node or program uses it. Pass {free}--http {}:0 for any free port, or --no-http",
                addr.ip()
            )
        } else {
            "pass another --http address, or --no-http".into()
        };
        HttpError::Bind { addr, source, hint }
    })
}

/// The API's routes, answered by the node behind `control`.
pub fn router(control: NodeControl) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/model.safetensors", get(model))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .with_state(control)
}

/// A running HTTP API; [`HttpServer::stop`] ends it and removes the address file.
pub struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    // Held for its Drop, which removes the file.
    _addr_file: AddrFile,
}

impl HttpServer {
    /// Serves `listener` for the node behind `control`. The address is written
    /// to `<datadir>/http.addr` when `events` reports the node listening, that
    /// is once it holds its datadir: a second node started on a datadir in use
    /// fails before it can overwrite the first one's file.
    pub fn start(
        listener: TcpListener,
        control: NodeControl,
        datadir: &Path,
        mut events: mpsc::UnboundedReceiver<NodeEvent>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let addr_file = AddrFile { path: datadir.join(ADDR_FILE), addr };
        let app = router(control);
        let path = addr_file.path.clone();
        let task = tokio::spawn(async move {
            tokio::spawn(async move {
                let mut announced = false;
                while let Some(event) = events.recv().await {
                    if !announced && matches!(event, NodeEvent::Listening { .. }) {
                        announced = true;
                        match write_addr_file(&path, addr) {
                            Ok(()) => {
                                tracing::info!(address = %format!("http://{addr}/"), "dashboard and API")
                            }
                            Err(e) => tracing::warn!(
                                error = %e,
                                path = %path.display(),
                                "cannot write the HTTP address file; `starling status --http {addr}` still works"
                            ),
                        }
                    }
                }
            });
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the HTTP API stopped");
            }
        });
        Ok(Self { addr, task, _addr_file: addr_file })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and removes `<datadir>/http.addr`.
    pub fn stop(self) {
        self.task.abort();
        // The address file is dropped here, which removes it.
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `<datadir>/http.addr` whole, then renames it into place: a reader
/// never sees half an address.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// `<datadir>/http.addr`, removed on drop when it still names this node.
#[derive(Debug)]
struct AddrFile {
    path: PathBuf,
    addr: SocketAddr,
}

impl Drop for AddrFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|text| text.trim() == self.addr.to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

fn unavailable(error: ControlError) -> Response {
    let body = serde_json::json!({ "error": error.to_string() });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(control): State<NodeControl>) -> Response {
    match control.metrics().await {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn health(State(control): State<NodeControl>) -> Response {
    match control.status().await {
        Ok(status) => {
            let health = Health::of(status.state);
            let code = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (code, Json(health)).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({ "healthy": false, "state": null, "reason": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn status(State(control): State<NodeControl>) -> Response {
    match control.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => unavailable(e),
    }
}

/// The current model as a safetensors file; its round in `x-starling-round`.
async fn model(State(control): State<NodeControl>) -> Response {
    let snapshot = match control.model().await {
        Ok(snapshot) => snapshot,
        Err(e) => return unavailable(e),
    };
    let encoded = tokio::task::spawn_blocking(move || {
        starling_training::init::encode(&snapshot.spec, &snapshot.params, Some(snapshot.round))
            .map(|bytes| (snapshot.round, bytes))
    })
    .await;
    match encoded {
        Ok(Ok((round, bytes))) => (
            [
                (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (axum::http::HeaderName::from_static("x-starling-round"), round.to_string()),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pause(State(control): State<NodeControl>) -> Response {
    match control.set_paused(true).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn resume(State(control): State<NodeControl>) -> Response {
    match control.set_paused(false).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => unavailable(e),
    }
}
