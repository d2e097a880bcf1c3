//! Dynamic batching: requests' encoded rows wait in a bounded queue and
//! are scored together, up to `max_batch` rows or until the oldest has
//! waited `max_wait`, by worker threads sharing the one read-only model.
//!
//! The forward pass is CPU-bound and runs on plain threads (never on the
//! async runtime's, whose threads keep accepting, parsing and encoding);
//! answers go back through one-shot channels.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mtrec_data::Dataset;
use tokio::sync::oneshot;

use crate::error::{Result, ServeError};
use crate::scorer::Scorer;

/// How requests are batched.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// Rows scored together at most (a request with more rows is scored
    /// alone, whole).
    pub max_batch: usize,
    /// How long the oldest request waits for others before its batch is
    /// scored (from its arrival in the queue). Zero: a batch is what is
    /// queued when a worker is free (under load, the requests that arrived
    /// while the previous batch was scored); a wait gives larger batches to
    /// a model that is itself the bottleneck, at the cost of latency.
    pub max_wait: Duration,
    /// Requests waiting at most; a request arriving at a full queue is
    /// answered 503 at once.
    pub queue: usize,
    /// Scoring threads.
    pub workers: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            // Measured (census MMoE, one row per request, 2 cores): at 32
            // concurrent clients a wait of 0, 200 or 500 us gives the same
            // throughput, and 0 halves the latency of a lone client.
            max_wait: Duration::ZERO,
            queue: 4096,
            workers: 1,
        }
    }
}

impl BatchOptions {
    pub fn check(&self) -> Result<()> {
        let bad = |flag: &str, what: &str| Err(ServeError::Usage(format!("--{flag} must be {what}")));
        if self.max_batch == 0 {
            return bad("max-batch", "at least 1");
        }
        if self.queue == 0 {
            return bad("queue", "at least 1");
        }
        if self.workers == 0 {
            return bad("workers", "at least 1");
        }
        Ok(())
    }
}

/// Per task, one output per row of the request.
pub type Outputs = Vec<Vec<f32>>;

struct Job {
    data: Dataset,
    arrived: Instant,
    reply: oneshot::Sender<Result<Outputs>>,
}

/// Counters of a batcher's work.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
}

/// The queue in front of one model and its scoring threads. Dropping the
/// last [`Batcher`] handle closes the queue: the workers score what is in
/// it, then stop ([`Batcher::join`] waits for them).
pub struct Batcher {
    tx: SyncSender<Job>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stats: Arc<BatchStats>,
}

impl Clone for Batcher {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            workers: Arc::clone(&self.workers),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl Batcher {
    pub fn start(scorer: Arc<Scorer>, options: &BatchOptions) -> Result<Self> {
        options.check()?;
        let (tx, rx) = sync_channel::<Job>(options.queue);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(BatchStats::default());
        let mut workers = Vec::with_capacity(options.workers);
        for w in 0..options.workers {
            let (rx, scorer, stats, opts) = (
                Arc::clone(&rx),
                Arc::clone(&scorer),
                Arc::clone(&stats),
                options.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("score-{}-{w}", scorer.name()))
                .spawn(move || work(&rx, &scorer, &opts, &stats))
                .map_err(|e| ServeError::io("cannot start a scoring thread", e))?;
            workers.push(handle);
        }
        Ok(Self {
            tx,
            workers: Arc::new(Mutex::new(workers)),
            stats,
        })
    }

    /// Queues `data` and waits for its outputs. A full queue is a 503.
    pub async fn score(&self, data: Dataset) -> Result<Outputs> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            data,
            arrived: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServeError::Request {
                    status: 503,
                    instance: None,
                    column: None,
                    message: "the scoring queue is full; retry later".into(),
                })
            }
            Err(TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub fn stats(&self) -> Arc<BatchStats> {
        Arc::clone(&self.stats)
    }

    /// Waits for the workers to finish (after every handle but this one is
    /// dropped: the queue is then closed and drained).
    pub fn join(self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        drop(self.tx);
        for w in workers {
            // A worker that panicked has already answered its jobs with errors.
            let _ = w.join();
        }
    }
}

fn stopped() -> ServeError {
    ServeError::Request {
        status: 503,
        instance: None,
        column: None,
        message: "the model's scoring stopped (the service is shutting down)".into(),
    }
}

/// One worker: form a batch, score it, answer, until the queue closes.
fn work(rx: &Mutex<Receiver<Job>>, scorer: &Scorer, opts: &BatchOptions, stats: &BatchStats) {
    let mut carried: Option<Job> = None;
    loop {
        let jobs = {
            // One worker forms a batch at a time; the others score theirs.
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            let first = match carried.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let (jobs, carry) = collect(&rx, first, opts);
            carried = carry;
            jobs
        };
        score_batch(scorer, jobs, stats);
    }
}

/// `first` and the jobs that join it: until `max_batch` rows, or the
/// deadline (`first`'s arrival + `max_wait`) with the queue empty. A job
/// that would overflow the batch is handed back for the next one.
fn collect(rx: &Receiver<Job>, first: Job, opts: &BatchOptions) -> (Vec<Job>, Option<Job>) {
    let deadline = first.arrived + opts.max_wait;
    let mut rows = first.data.rows();
    let mut jobs = vec![first];
    while rows < opts.max_batch {
        let next = match rx.try_recv() {
            Ok(j) => j,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        if rows + next.data.rows() > opts.max_batch {
            return (jobs, Some(next));
        }
        rows += next.data.rows();
        jobs.push(next);
    }
    (jobs, None)
}

/// Scores the jobs' rows as one batch and answers each with its rows.
fn score_batch(scorer: &Scorer, jobs: Vec<Job>, stats: &BatchStats) {
    let (datas, replies): (Vec<Dataset>, Vec<_>) = jobs.into_iter().map(|j| (j.data, j.reply)).unzip();
    let counts: Vec<usize> = datas.iter().map(Dataset::rows).collect();
    // A panic in a forward pass must not leave requests unanswered or take
    // the worker down.
    let scored = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Outputs> {
        let data = if datas.len() == 1 {
            datas
                .into_iter()
                .next()
                .ok_or_else(|| ServeError::Usage("empty batch".into()))?
        } else {
            Dataset::concat(&datas)?
        };
        scorer.score(&data)
    }))
    .unwrap_or_else(|_| Err(ServeError::Scoring("the forward pass panicked".into())));
    match scored {
        Ok(outputs) => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .rows
                .fetch_add(counts.iter().sum::<usize>() as u64, Ordering::Relaxed);
            let mut start = 0;
            for (reply, n) in replies.into_iter().zip(counts) {
                let part: Option<Outputs> = outputs
                    .iter()
                    .map(|o| o.get(start..start + n).map(<[f32]>::to_vec))
                    .collect();
                start += n;
                let answer = part.ok_or_else(|| ServeError::Scoring("the model returned fewer rows than given".into()));
                // The client may have gone; nothing to do then.
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(ServeError::Scoring(message.clone())));
            }
        }
    }
}
