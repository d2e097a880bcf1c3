//! The HTTP/1.1 service (axum on tokio), TF-Serving / KServe v1 JSON:
//! - `POST /v1/models/NAME:predict` with `{"instances": [{column: value}, ...]}`
//!   answers `{"predictions": [{task: output}, ...]}` in request order;
//! - `GET /v1/models/NAME`: status and metadata; `GET /healthz`: probes.
//!
//! Every error answer is `{"error": message, "instance": index|null,
//! "column": name|null}` with its status (400 bad request, 404 unknown
//! model, 413 body over the limit, 503 queue full or shutting down).
//! Instances are parsed and encoded on the request's task; only scoring
//! goes through the batching queue.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::batcher::{BatchOptions, Batcher};
use crate::error::{Result, ServeError};
use crate::scorer::Scorer;

/// The service's settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub batch: BatchOptions,
    /// Request bodies larger than this many bytes are answered 413.
    pub body_limit: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            batch: BatchOptions::default(),
            body_limit: 4 << 20,
        }
    }
}

struct Served {
    scorer: Arc<Scorer>,
    batcher: Batcher,
}

#[derive(Clone)]
struct AppState {
    models: Arc<HashMap<String, Served>>,
    in_flight: Arc<AtomicUsize>,
}

/// The served models, their batching queues and the HTTP routes.
pub struct Service {
    state: AppState,
    body_limit: usize,
}

impl Service {
    /// Starts each model's batching workers. Model names must be distinct.
    pub fn new(scorers: Vec<Scorer>, options: &ServeOptions) -> Result<Self> {
        if scorers.is_empty() {
            return Err(ServeError::Usage("no model to serve".into()));
        }
        if options.body_limit == 0 {
            return Err(ServeError::Usage("--max-body-bytes must be at least 1".into()));
        }
        let mut models = HashMap::new();
        for scorer in scorers {
            let name = scorer.name().to_string();
            if !valid_name(&name) {
                return Err(ServeError::Usage(format!(
                    "model name `{name}` may hold only ASCII letters, digits, `_`, `-` and `.`"
                )));
            }
            let scorer = Arc::new(scorer);
            let batcher = Batcher::start(Arc::clone(&scorer), &options.batch)?;
            if models.insert(name.clone(), Served { scorer, batcher }).is_some() {
                return Err(ServeError::Usage(format!("model name `{name}` is given twice")));
            }
        }
        Ok(Self {
            state: AppState {
                models: Arc::new(models),
                in_flight: Arc::new(AtomicUsize::new(0)),
            },
            body_limit: options.body_limit,
        })
    }

    /// Predict requests being answered (received, not yet answered).
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.state.in_flight)
    }

    /// Each model's batching counters (rows and batches scored).
    pub fn stats(&self) -> Vec<(String, Arc<crate::batcher::BatchStats>)> {
        let mut out: Vec<_> = self
            .state
            .models
            .iter()
            .map(|(name, s)| (name.clone(), s.batcher.stats()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The routes, for serving on a listener.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/v1/models/{spec}", get(model_status).post(predict))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(axum::middleware::from_fn_with_state(self.body_limit, refuse_oversized))
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then stops
    /// accepting, answers the requests in flight (those queued included),
    /// stops the scoring workers and returns.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServeError::io("the HTTP server failed", e));
        // Every connection is closed: the handlers' batcher handles are
        // gone; ours are the last, and joining drains each queue.
        let state = self.state;
        let models = Arc::try_unwrap(state.models).ok();
        if let Some(models) = models {
            let joins: Vec<Batcher> = models.into_values().map(|s| s.batcher).collect();
            tokio::task::spawn_blocking(move || joins.into_iter().for_each(Batcher::join))
                .await
                .map_err(|e| ServeError::Scoring(format!("stopping the scoring workers: {e}")))?;
        }
        served
    }
}

/// The most of an oversized body read (and dropped) before its 413 answer.
const DRAIN_LIMIT: usize = 16 << 20;

/// Answers 413 to a request whose declared length is over `limit`, after
/// reading its body (up to [`DRAIN_LIMIT`]): a connection closed with
/// unread bytes is reset, and a reset can destroy the answer before the
/// client reads it. The connection is then closed. Bodies of unknown length
/// meet the extractor's own limit (`DefaultBodyLimit`).
async fn refuse_oversized(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    let mut body = request.into_body();
    let mut read = 0usize;
    while read <= DRAIN_LIMIT {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    let e = ServeError::Request {
        status: 413,
        instance: None,
        column: None,
        message: format!(
            "the request body of {length} bytes is over the length limit of {limit} bytes (--max-body-bytes)"
        ),
    };
    let mut response = error_response(&e);
    response
        .headers_mut()
        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(e: &ServeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (instance, column, message) = match e {
        ServeError::Request {
            instance,
            column,
            message,
            ..
        } => (*instance, column.clone(), message.clone()),
        other => (None, None, other.to_string()),
    };
    let body = json!({ "error": message, "instance": instance, "column": column });
    json_response(status, body.to_string())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

async fn not_found() -> Response {
    error_response(&ServeError::Request {
        status: 404,
        instance: None,
        column: None,
        message: "no such route; use POST /v1/models/NAME:predict, GET /v1/models/NAME or GET /healthz".into(),
    })
}

fn unknown_model(state: &AppState, name: &str) -> ServeError {
    let mut names: Vec<&str> = state.models.keys().map(String::as_str).collect();
    names.sort_unstable();
    ServeError::Request {
        status: 404,
        instance: None,
        column: None,
        message: format!("no model named `{name}`; served: {}", names.join(", ")),
    }
}

async fn model_status(State(state): State<AppState>, Path(spec): Path<String>) -> Response {
    match state.models.get(&spec) {
        Some(s) => json_response(StatusCode::OK, s.scorer.metadata().to_string()),
        None if spec.ends_with(":predict") => error_response(&ServeError::Request {
            status: 405,
            instance: None,
            column: None,
            message: "`:predict` takes POST".into(),
        }),
        None => error_response(&unknown_model(&state, &spec)),
    }
}

/// Counts a predict request in flight for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn predict(
    State(state): State<AppState>,
    Path(spec): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let _in_flight = InFlight::new(&state.in_flight);
    match answer(&state, &spec, body).await {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(e) => error_response(&e),
    }
}

async fn answer(state: &AppState, spec: &str, body: std::result::Result<Bytes, BytesRejection>) -> Result<String> {
    let Some(name) = spec.strip_suffix(":predict") else {
        return Err(ServeError::Request {
            status: 404,
            instance: None,
            column: None,
            message: format!("POST /v1/models/{spec}: the verb is missing; use /v1/models/NAME:predict"),
        });
    };
    let served = state.models.get(name).ok_or_else(|| unknown_model(state, name))?;
    let body = body.map_err(|r| ServeError::Request {
        status: r.status().as_u16(),
        instance: None,
        column: None,
        message: r.body_text(),
    })?;
    let data = if body.len() <= LARGE_BODY {
        served.scorer.encode(&parse_instances(&body)?)?
    } else {
        // Milliseconds of parsing and encoding: off the runtime's threads,
        // which keep serving the small requests meanwhile.
        let scorer = Arc::clone(&served.scorer);
        tokio::task::spawn_blocking(move || scorer.encode(&parse_instances(&body)?))
            .await
            .map_err(|e| ServeError::Scoring(format!("encoding a request: {e}")))??
    };
    let outputs = served.batcher.score(data).await?;
    Ok(served.scorer.predictions_json(&outputs))
}

/// Bodies larger than this (bytes, about 64 census rows) are parsed and
/// encoded on the blocking pool.
const LARGE_BODY: usize = 64 * 1024;

/// The `instances` of a request body.
fn parse_instances(body: &[u8]) -> Result<Vec<Value>> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ServeError::bad_request(format!("malformed JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ServeError::bad_request(
            "the body must be an object {\"instances\": [...]}",
        ));
    };
    if let Some(other) = top.keys().find(|k| k.as_str() != "instances") {
        let hint = if other == "inputs" {
            " (the columnar `inputs` format is not supported: give one object per row in `instances`)"
        } else {
            ""
        };
        return Err(ServeError::bad_request(format!("unknown key `{other}`{hint}")));
    }
    match top.remove("instances") {
        Some(Value::Array(list)) if list.is_empty() => Err(ServeError::bad_request("`instances` is empty")),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err(ServeError::bad_request("`instances` must be a list of objects")),
        None => Err(ServeError::bad_request("the body has no `instances`")),
    }
}
