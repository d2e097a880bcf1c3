//! Helpers of the serving tests: a small trained tabular run, a running
//! service on 127.0.0.1:0, and an HTTP/1.1 client.
#![allow(dead_code, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use mtrec_serve::{ModelParts, Scorer, ServeOptions, Service};
use serde_json::Value;
use tokio::sync::oneshot;

/// A fresh temporary folder.
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A CSV with every input kind: sparse `user` and `item`, dense `pos`
/// (with missing values `?`), a behaviour sequence `hist` sharing `item`'s
/// vocabulary, the domain `scn`, an ignored `note` and the label `click`.
pub fn write_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,item,hist,scn,pos,note,click\n");
    let mut x = seed;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for _ in 0..rows {
        let user = next(30);
        let n = next(5) as usize;
        let hist: Vec<String> = (0..n).map(|_| format!("i{}", next(12))).collect();
        let item_id = next(12);
        let pos = next(6);
        let pos_text = if pos == 5 {
            "?".to_string()
        } else {
            (pos as f64 * 1.5).to_string()
        };
        let score = 1 + 4 * u64::from(item_id % 2 == 0) + n as u64 + u64::from(pos == 0);
        let click = u8::from(next(10) < score);
        let scn = ["a", "b", "c"][next(3) as usize];
        let _ = writeln!(s, "u{user},i{item_id},{},{scn},{pos_text},x,{click}", hist.join("|"));
    }
    std::fs::write(path, s).unwrap();
}

pub const CONFIG: &str = r#"
[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user", "item"]
dense = [{ name = "pos", scaling = "standard" }]
sequence = [{ name = "hist", separator = "|", max_len = 4, share_with = "item" }]
domain = "scn"
ignore = ["note"]

[features]
domain_as_feature = true

[model]
arch = "mmoe"
experts = 2

[train]
epochs = 2
batch_size = 32
lr = 0.01

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }
"#;

/// Trains `CONFIG` on fresh CSV files into a run folder: (data dir, run dir).
pub fn trained_run(name: &str) -> (PathBuf, PathBuf) {
    mtrec_runner::link_builtin_plugins();
    let data = temp(&format!("{name}-data"));
    write_csv(&data.join("train.csv"), 600, 1);
    write_csv(&data.join("valid.csv"), 200, 2);
    write_csv(&data.join("test.csv"), 300, 3);
    let out = temp(&format!("{name}-run"));
    train(CONFIG, &data, &out);
    (data, out)
}

/// Runs config `text` on the files of `data` into run folder `out`.
pub fn train(text: &str, data: &Path, out: &Path) {
    let mut cfg = mtrec_runner::config::parse(text, &data.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(data.to_path_buf());
    let opts = mtrec_runner::run::RunOptions {
        out: Some(out.to_path_buf()),
        ..Default::default()
    };
    mtrec_runner::run::run_with(&cfg, opts, |_| {}).unwrap();
}

/// A run folder's model as `mtrec serve` loads it.
pub fn scorer(name: &str, dir: &Path) -> Scorer {
    let t = mtrec_runner::run::load_trained(dir).unwrap();
    let parts = ModelParts {
        models: t.models,
        preprocessor: t.preprocessor,
        arch: t.config.model.arch,
    };
    Scorer::new(name, parts).unwrap()
}

/// A service running on 127.0.0.1:0 in the current runtime.
pub struct Running {
    pub addr: SocketAddr,
    pub in_flight: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<mtrec_serve::Result<()>>,
}

impl Running {
    pub async fn start(scorers: Vec<Scorer>, options: &ServeOptions) -> Running {
        let service = Service::new(scorers, options).unwrap();
        let in_flight = service.in_flight();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.run(listener, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            in_flight,
            stop: Some(stop),
            task,
        }
    }

    /// Starts the graceful shutdown; `finish` waits for it.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn finish(mut self) -> mtrec_serve::Result<()> {
        self.shutdown();
        self.task.await.unwrap()
    }
}

/// One kept-alive HTTP/1.1 connection.
pub struct Client {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    /// The last answer closes the connection (413, `Connection: close`).
    closing: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client {
            addr,
            sender,
            closing: false,
        }
    }

    pub async fn send(&mut self, method: &str, path: &str, body: impl Into<Bytes>) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        // A server closes the connection after answering a body it did not
        // read (413), maybe only after this client saw the answer: the
        // request after such an answer goes on a new connection, whether or
        // not the close was seen yet.
        if self.closing || self.sender.ready().await.is_err() {
            *self = Client::connect(self.addr).await;
            self.sender.ready().await.unwrap();
        }
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        self.closing = status == 413
            || response
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> (u16, Value) {
        self.send("POST", path, body).await
    }

    pub async fn get(&mut self, path: &str) -> (u16, Value) {
        self.send("GET", path, Bytes::new()).await
    }
}

/// The rows of a CSV file (with a header) as JSON instances of text values.
pub fn csv_instances(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
                .collect()
        })
        .collect()
}

/// `{"instances": [...]}`.
pub fn body(instances: &[serde_json::Map<String, Value>]) -> String {
    serde_json::json!({ "instances": instances }).to_string()
}

/// The score columns `mtrec predict` wrote, per row.
pub fn predict_scores(run: &Path, input: &Path) -> Vec<Vec<f64>> {
    let scores = run.join("scores.csv");
    mtrec_runner::run::predict_file(run, input, &scores).unwrap();
    std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// The predictions of an answer, per row, in task order `tasks`.
pub fn answer_scores(answer: &Value, tasks: &[&str]) -> Vec<Vec<f64>> {
    answer["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions in {answer}"))
        .iter()
        .map(|p| tasks.iter().map(|t| p[*t].as_f64().unwrap()).collect())
        .collect()
}
