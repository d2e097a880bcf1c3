//! Terminal progress for reading and training (indicatif hides the bars when
//! stderr is not a terminal; the per-epoch lines are printed regardless).

use indicatif::{ProgressBar, ProgressStyle};
use mtrec_data::preprocess::Progress;
use mtrec_data::Pass;
use mtrec_train::{BatchProgress, EpochLog};

/// Bars for one `mtrec run`.
pub struct RunProgress {
    read: ProgressBar,
    train: ProgressBar,
    epochs: usize,
    /// The epoch the training bar shows.
    epoch: usize,
    quiet: bool,
    /// Running mean of each task's batch loss within the epoch.
    running: Vec<f64>,
    batches: usize,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl RunProgress {
    pub fn new(epochs: usize, quiet: bool) -> Self {
        let read = ProgressBar::hidden();
        let train = ProgressBar::hidden();
        Self {
            read,
            train,
            epochs,
            epoch: 0,
            quiet,
            running: Vec::new(),
            batches: 0,
        }
    }

    pub fn on_read(&mut self, p: &Progress<'_>) {
        if self.quiet {
            return;
        }
        if self.read.is_hidden() {
            self.read = ProgressBar::new_spinner();
            self.read
                .set_style(style("{spinner} {msg} {human_pos} rows ({per_sec}) {elapsed}"));
        }
        let pass = match p.pass {
            Pass::Count => "counting",
            Pass::Fit => "fitting on",
            Pass::Encode => "encoding",
        };
        let name = p
            .file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.read.set_message(format!("{pass} {name}"));
        self.read.set_position(p.rows);
    }

    pub fn on_batch(&mut self, b: &BatchProgress) {
        if self.quiet {
            return;
        }
        if b.epoch != self.epoch {
            self.epoch = b.epoch;
            self.read.finish_and_clear();
            if b.rows_total == 0 {
                // A streamed file's first pass: its size is not known yet.
                self.train = ProgressBar::new_spinner();
                self.train.set_style(style(
                    "epoch {prefix} {spinner} {human_pos} rows ({per_sec}) loss {msg}",
                ));
            } else {
                self.train = ProgressBar::new(b.rows_total as u64);
                self.train.set_style(style(
                    "epoch {prefix} [{bar:30}] {human_pos}/{human_len} rows ({per_sec}, eta {eta}) loss {msg}",
                ));
            }
            self.running = vec![0.0; b.losses.len()];
            self.batches = 0;
        }
        self.batches += 1;
        for (r, l) in self.running.iter_mut().zip(&b.losses) {
            *r += (l - *r) / self.batches as f64;
        }
        self.train.set_prefix(format!("{}/{}", b.epoch, self.epochs));
        self.train.set_position(b.rows_done as u64);
        let losses: Vec<String> = self.running.iter().map(|l| format!("{l:.4}")).collect();
        self.train.set_message(losses.join(" "));
    }

    pub fn on_epoch(&mut self, log: &EpochLog) {
        self.train.finish_and_clear();
        self.train = ProgressBar::hidden();
        if self.quiet {
            return;
        }
        let losses: Vec<String> = log.train_loss.iter().map(|l| format!("{l:.4}")).collect();
        // Gradient cosine per task pair on the shared parameters: mean and
        // share of sampled steps in conflict (negative).
        let conflict: String = log
            .conflict
            .iter()
            .map(|c| {
                format!(
                    "  cos({},{}) {:+.3} ({:.0}% neg)",
                    c.a,
                    c.b,
                    c.mean_cosine,
                    100.0 * c.negative_share
                )
            })
            .collect();
        eprintln!(
            "epoch {:>3}/{}  train loss [{}]  valid score {:.4}  {:.0} rows/s{conflict}",
            log.epoch,
            self.epochs,
            losses.join(", "),
            log.valid_score,
            log.rows_per_second
        );
    }

    pub fn finish(&self) {
        self.read.finish_and_clear();
        self.train.finish_and_clear();
    }
}
