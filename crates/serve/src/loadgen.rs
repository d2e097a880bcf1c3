//! The load generator: closed-loop clients on loopback, each with one
//! kept-alive HTTP/1.1 connection, sending predict requests built from a
//! data file's rows; bounded in requests and in time per concurrency level.
//! Reports throughput (predictions/s) and latency percentiles per level,
//! and checks that the malformed requests mixed in are answered 400.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mtrec_data::encode_row::ColumnKind;
use mtrec_data::Preprocessor;
use serde_json::{Map, Value};

use crate::error::{Result, ServeError};

/// One level's settings.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The service's address: loopback only.
    pub addr: SocketAddr,
    /// The served model's name.
    pub model: String,
    /// Requests sent at most (malformed ones included).
    pub requests: usize,
    /// Time allowed at most; the level stops sending when it is up.
    pub max_time: Duration,
    /// Malformed requests mixed in, spread evenly.
    pub malformed: usize,
}

/// What one concurrency level measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    /// Well-formed requests answered 200.
    pub ok: usize,
    pub predictions: usize,
    pub seconds: f64,
    pub predictions_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Malformed requests sent, and those answered 400.
    pub malformed_sent: usize,
    pub malformed_400: usize,
    /// Well-formed requests not answered 200, malformed ones not answered
    /// 400, and connection failures.
    pub errors: usize,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    /// Whether `max_time` stopped the level before `requests`.
    pub timed_out: bool,
}

/// A request body and the number of instances it holds.
#[derive(Clone, Debug)]
pub struct Body {
    pub bytes: Bytes,
    pub instances: usize,
}

/// Well-formed request bodies from the first `max_rows` rows of `file`
/// (read as the training files were), `per_request` instances each (the
/// last may hold fewer), in file order; values are sent as the file holds
/// them (text).
pub fn bodies_from_file(pre: &Preprocessor, file: &Path, per_request: usize, max_rows: usize) -> Result<Vec<Body>> {
    if per_request == 0 {
        return Err(ServeError::Usage("--instances must be at least 1".into()));
    }
    let mut src = mtrec_data::read::open(file, &pre.read)?;
    let positions: Vec<(String, usize)> = pre
        .input_columns()
        .into_iter()
        .map(|c| match src.columns().iter().position(|n| n == &c.name) {
            Some(p) => Ok((c.name, p)),
            None => Err(ServeError::Usage(format!(
                "{} has no column `{}` that the model reads",
                file.display(),
                c.name
            ))),
        })
        .collect::<Result<_>>()?;
    let trim = src.trims();
    let mut record = mtrec_data::encode_row::StringRecord::new();
    let mut instances: Vec<Value> = Vec::new();
    let mut bodies = Vec::new();
    let mut rows = 0;
    while rows < max_rows && src.next_row(&mut record)?.is_some() {
        rows += 1;
        let mut m = Map::new();
        for (name, p) in &positions {
            let v = record.get(*p).unwrap_or("");
            m.insert(name.clone(), Value::String(if trim { v.trim() } else { v }.to_string()));
        }
        instances.push(Value::Object(m));
        if instances.len() == per_request {
            bodies.push(Body {
                bytes: body_of(std::mem::take(&mut instances)),
                instances: per_request,
            });
        }
    }
    if !instances.is_empty() {
        let n = instances.len();
        bodies.push(Body {
            bytes: body_of(instances),
            instances: n,
        });
    }
    if bodies.is_empty() {
        return Err(ServeError::Usage(format!("{} has no data rows", file.display())));
    }
    Ok(bodies)
}

fn body_of(instances: Vec<Value>) -> Bytes {
    let mut top = Map::new();
    top.insert("instances".into(), Value::Array(instances));
    Bytes::from(Value::Object(top).to_string())
}

/// Malformed bodies, one per kind the service must answer 400: truncated
/// JSON, a missing column, an unknown column, and a value that does not
/// parse (a dense column's) or an unseen domain, built from `good`.
pub fn malformed_bodies(pre: &Preprocessor, good: &Bytes) -> Result<Vec<Bytes>> {
    let parsed: Value = serde_json::from_slice(good).map_err(|e| ServeError::Client(e.to_string()))?;
    let first = parsed
        .get("instances")
        .and_then(|i| i.get(0))
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ServeError::Client("a request body without instances".into()))?;
    let columns = pre.input_columns();
    let mut out = vec![good.slice(..good.len() / 2)];
    if let Some(c) = columns.first() {
        let mut m = first.clone();
        m.remove(&c.name);
        out.push(body_of(vec![Value::Object(m)]));
    }
    let mut m = first.clone();
    m.insert("no such column".into(), Value::String("1".into()));
    out.push(body_of(vec![Value::Object(m)]));
    let bad_value = columns.iter().find_map(|c| match c.kind {
        ColumnKind::Dense => Some((c.name.clone(), "not a number")),
        ColumnKind::Domain => Some((c.name.clone(), "no such domain")),
        _ => None,
    });
    if let Some((column, value)) = bad_value {
        let mut m = first;
        m.insert(column, Value::String(value.into()));
        out.push(body_of(vec![Value::Object(m)]));
    }
    Ok(out)
}

/// Which of `n` requests are malformed: `k` indices spread evenly.
fn malformed_slots(n: usize, k: usize) -> Vec<bool> {
    let mut slots = vec![false; n];
    let k = k.min(n);
    for j in 0..k {
        slots[(j * n + n / 2) / k.max(1)] = true;
    }
    slots
}

struct Shared {
    opts: LoadOptions,
    path: String,
    host: String,
    bodies: Vec<Body>,
    malformed: Vec<Bytes>,
    slots: Vec<bool>,
    next: AtomicUsize,
    deadline: Instant,
}

#[derive(Default)]
struct ClientTally {
    latencies_us: Vec<u32>,
    ok: usize,
    predictions: usize,
    malformed_sent: usize,
    malformed_400: usize,
    errors: usize,
    samples: Vec<String>,
}

impl ClientTally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < 3 {
            self.samples.push(e);
        }
    }
}

/// Runs one level: `concurrency` clients until `opts.requests` requests are
/// answered or `opts.max_time` is up. Call inside a tokio runtime.
pub async fn run_level(
    opts: &LoadOptions,
    bodies: &[Body],
    malformed: &[Bytes],
    concurrency: usize,
) -> Result<LevelReport> {
    if !opts.addr.ip().is_loopback() {
        return Err(ServeError::Usage(format!(
            "the load generator only targets loopback addresses, not {}",
            opts.addr
        )));
    }
    if concurrency == 0 || bodies.is_empty() {
        return Err(ServeError::Usage("--concurrency must be at least 1".into()));
    }
    if opts.malformed > 0 && malformed.is_empty() {
        return Err(ServeError::Usage("no malformed request could be built".into()));
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        path: format!("/v1/models/{}:predict", opts.model),
        host: opts.addr.to_string(),
        bodies: bodies.to_vec(),
        malformed: malformed.to_vec(),
        slots: malformed_slots(opts.requests, opts.malformed),
        next: AtomicUsize::new(0),
        deadline: start + opts.max_time,
        opts: opts.clone(),
    });
    let clients: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(client(Arc::clone(&shared))))
        .collect();
    let mut all = ClientTally::default();
    for c in clients {
        let t = c
            .await
            .map_err(|e| ServeError::Client(format!("a client task failed: {e}")))?;
        all.latencies_us.extend(t.latencies_us);
        all.ok += t.ok;
        all.predictions += t.predictions;
        all.malformed_sent += t.malformed_sent;
        all.malformed_400 += t.malformed_400;
        all.errors += t.errors;
        for s in t.samples {
            if all.samples.len() < 5 {
                all.samples.push(s);
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let sent = shared.next.load(Ordering::Relaxed).min(opts.requests);
    all.latencies_us.sort_unstable();
    let pct = |p: f64| percentile_ms(&all.latencies_us, p);
    let predictions = all.predictions;
    Ok(LevelReport {
        concurrency,
        ok: all.ok,
        predictions,
        seconds,
        predictions_per_s: predictions as f64 / seconds.max(1e-9),
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        max_ms: pct(100.0),
        malformed_sent: all.malformed_sent,
        malformed_400: all.malformed_400,
        errors: all.errors,
        error_samples: all.samples,
        timed_out: sent < opts.requests,
    })
}

/// The nearest-rank percentile `p` of sorted microseconds, in ms.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

/// One closed-loop client on its own connection (reconnecting after a
/// connection failure).
async fn client(shared: Arc<Shared>) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.opts.requests || Instant::now() >= shared.deadline {
            break;
        }
        let bad = shared.slots[i];
        let (body, instances) = if bad {
            (shared.malformed[i % shared.malformed.len()].clone(), 0)
        } else {
            let b = &shared.bodies[i % shared.bodies.len()];
            (b.bytes.clone(), b.instances)
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(shared.opts.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    tally.error(e);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let request = Request::post(shared.path.as_str())
            .header(header::HOST, shared.host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tally.error(e.to_string());
                break;
            }
        };
        let t0 = Instant::now();
        let answer = async {
            s.ready().await?;
            let response = s.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        }
        .await;
        let elapsed = t0.elapsed();
        if bad {
            tally.malformed_sent += 1;
        }
        match answer {
            Err(e) => {
                sender = None;
                tally.error(format!("request {i}: {e}"));
            }
            Ok((status, _)) if bad && status == StatusCode::BAD_REQUEST => tally.malformed_400 += 1,
            Ok((status, bytes)) if bad => tally.error(format!(
                "malformed request {i} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
            Ok((status, bytes)) if status == StatusCode::OK && bytes.starts_with(b"{\"predictions\":[") => {
                tally.ok += 1;
                tally.predictions += instances;
                tally
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
            }
            Ok((status, bytes)) => tally.error(format!(
                "request {i} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }
    tally
}

async fn connect(
    addr: SocketAddr,
) -> std::result::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // Small requests and answers: no Nagle delay.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The levels as a Markdown table.
pub fn markdown(reports: &[LevelReport], per_request: usize) -> String {
    let mut s = String::from(
        "| concurrency | requests ok | predictions/s | p50 ms | p99 ms | max ms | malformed -> 400 | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {}{} | {:.0} | {:.2} | {:.2} | {:.2} | {}/{} | {} |\n",
            r.concurrency,
            r.ok,
            if r.timed_out { " (time limit)" } else { "" },
            r.predictions_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.malformed_400,
            r.malformed_sent,
            r.errors
        ));
    }
    s.push_str(&format!("\n({per_request} instance(s) per request)\n"));
    s
}
