//! The `mtrec serve` and `mtrec loadgen` subcommands (the runner's `main`
//! hands them their parsed flags and, for `serve`, its run-folder loader:
//! this crate does not depend on the runner, which links it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::batcher::BatchOptions;
use crate::error::{Result, ServeError};
use crate::http::{shutdown_signal, ServeOptions, Service};
use crate::loadgen::{self, LevelReport, LoadOptions};
use crate::scorer::{ModelParts, Scorer};

/// Loads a run folder's model, preprocessing and architecture name.
pub type Loader<'a> = &'a dyn Fn(&Path) -> std::result::Result<ModelParts, String>;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A finished run folder trained on tabular data, as `RUN_DIR` or
    /// `NAME=RUN_DIR`; repeat for several models.
    #[arg(long = "model", value_name = "[NAME=]RUN_DIR", required = true)]
    pub models: Vec<String>,
    /// The name of a model given without `NAME=` (default: its folder's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Rows scored together at most.
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// Microseconds the oldest queued request waits for others to join its
    /// batch (0: a batch is what is queued when a scoring thread is free).
    #[arg(long, default_value_t = 0)]
    pub max_wait_us: u64,
    /// Requests queued at most per model (more are answered 503).
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
    /// Scoring threads per model.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Threads of the HTTP runtime (default: the number of CPUs).
    #[arg(long)]
    pub http_threads: Option<usize>,
}

/// `NAME=DIR` or `DIR` (named `default_name`, else the folder's name).
fn model_spec(spec: &str, default_name: Option<&str>) -> Result<(String, PathBuf)> {
    if let Some((name, dir)) = spec.split_once('=') {
        return Ok((name.to_string(), PathBuf::from(dir)));
    }
    let dir = PathBuf::from(spec);
    let name = match default_name {
        Some(n) => n.to_string(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ServeError::Usage(format!("cannot name the model of `{spec}`: give NAME={spec}")))?,
    };
    Ok((name, dir))
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        if n == 0 {
            return Err(ServeError::Usage("--http-threads must be at least 1".into()));
        }
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .map_err(|e| ServeError::io("cannot start the async runtime", e))
}

/// `mtrec serve`: loads the models, serves until SIGINT/SIGTERM, then
/// answers what is in flight and returns.
pub fn serve(args: ServeArgs, load: Loader<'_>) -> Result<()> {
    let unnamed = args.models.iter().filter(|m| !m.contains('=')).count();
    if args.name.is_some() && unnamed != 1 {
        return Err(ServeError::Usage(
            "--name names the one model given without NAME=; use NAME=RUN_DIR for several".into(),
        ));
    }
    let mut scorers = Vec::new();
    for spec in &args.models {
        let (name, dir) = model_spec(spec, args.name.as_deref())?;
        let parts = load(&dir).map_err(|message| ServeError::Load {
            name: name.clone(),
            dir: dir.clone(),
            message,
        })?;
        let scorer = Scorer::new(&name, parts)?;
        eprintln!(
            "model `{name}` ({}) from {}: POST /v1/models/{name}:predict",
            scorer.metadata()["metadata"]["architecture"].as_str().unwrap_or("?"),
            dir.display()
        );
        scorers.push(scorer);
    }
    let options = ServeOptions {
        batch: BatchOptions {
            max_batch: args.max_batch,
            max_wait: Duration::from_micros(args.max_wait_us),
            queue: args.queue,
            workers: args.workers,
        },
        body_limit: args.max_body_bytes,
    };
    let service = Service::new(scorers, &options)?;
    let stats = service.stats();
    let rt = runtime(args.http_threads)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| ServeError::io(format!("cannot listen on {}", args.addr), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| ServeError::io("the listener's address", e))?;
        eprintln!("listening on http://{local} (Ctrl-C or SIGTERM to stop)");
        service
            .run(listener, async {
                shutdown_signal().await;
                eprintln!("stopping: answering the requests in flight");
            })
            .await
    })?;
    for (name, s) in stats {
        let (rows, batches) = (s.rows.load(Ordering::Relaxed), s.batches.load(Ordering::Relaxed));
        eprintln!(
            "model `{name}`: {rows} rows scored in {batches} batches ({:.1} rows per batch)",
            rows as f64 / batches.max(1) as f64
        );
    }
    eprintln!("stopped");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    /// The service (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The served model's name.
    #[arg(long)]
    pub name: String,
    /// The model's run folder: its preprocess.json says how the input file
    /// reads and which columns requests carry.
    #[arg(long, value_name = "RUN_DIR")]
    pub model: PathBuf,
    /// A file in the training data's format; its rows become the instances.
    #[arg(long)]
    pub input: PathBuf,
    /// Concurrency levels (closed-loop clients, one connection each).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub concurrency: Vec<usize>,
    /// Requests per level at most (malformed ones included).
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Seconds per level at most.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Instances per request.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Malformed requests mixed into each level (they must be answered 400).
    #[arg(long, default_value_t = 0)]
    pub malformed: usize,
    /// Requests sent before the first level, not measured.
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Rows of the input file read at most.
    #[arg(long, default_value_t = 20_000)]
    pub max_rows: usize,
    /// Threads of the client's runtime.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Also write the levels as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The run folder's fitted preprocessing file (as the runner writes it).
const PREPROCESS_FILE: &str = "preprocess.json";

/// `mtrec loadgen`: the levels' table (Markdown) on stdout. Fails when a
/// level had errors.
pub fn loadgen(args: LoadgenArgs) -> Result<Vec<LevelReport>> {
    let pre = mtrec_data::Preprocessor::load(&args.model.join(PREPROCESS_FILE))?;
    let bodies = loadgen::bodies_from_file(&pre, &args.input, args.instances, args.max_rows)?;
    let malformed = match bodies.first() {
        Some(b) => loadgen::malformed_bodies(&pre, &b.bytes)?,
        None => Vec::new(),
    };
    let rt = match args.client_threads {
        0 => return Err(ServeError::Usage("--client-threads must be at least 1".into())),
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .map_err(|e| ServeError::io("cannot start the async runtime", e))?;
    let level = |requests: usize, malformed: usize| LoadOptions {
        addr: args.addr,
        model: args.name.clone(),
        requests,
        max_time: Duration::from_secs(args.max_seconds),
        malformed,
    };
    let reports = rt.block_on(async {
        if args.warmup > 0 {
            let c = args.concurrency.iter().copied().max().unwrap_or(1);
            loadgen::run_level(&level(args.warmup, 0), &bodies, &malformed, c).await?;
        }
        let mut reports = Vec::new();
        for &c in &args.concurrency {
            let r = loadgen::run_level(&level(args.requests, args.malformed), &bodies, &malformed, c).await?;
            eprintln!(
                "concurrency {c}: {:.0} predictions/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                r.predictions_per_s, r.p50_ms, r.p99_ms, r.errors
            );
            reports.push(r);
        }
        Ok::<_, ServeError>(reports)
    })?;
    println!("{}", loadgen::markdown(&reports, args.instances));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| ServeError::Client(e.to_string()))?;
        mtrec_core::atomic::write_bytes(path, text.as_bytes())?;
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| {
            format!(
                "concurrency {}: {} errors ({})",
                r.concurrency,
                r.errors,
                r.error_samples.join("; ")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(reports)
    } else {
        Err(ServeError::Client(failed.join("\n")))
    }
}
