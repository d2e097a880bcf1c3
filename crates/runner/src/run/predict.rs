//! New files scored or evaluated by a trained run folder's model, read in
//! chunks (never whole): `mtrec predict` and `mtrec eval`.

use std::path::Path;

use mtrec_data::{Batches, Labels, StreamOptions};
use mtrec_train::{EvalConfig, Evaluation, Evaluator};

use super::layout::load_trained;
use crate::config::RunConfig;
use crate::error::{io, Result, RunError};

/// Scores every row of `input` with the model of run folder `model_dir` and
/// writes `output` (CSV): one column per task, named after it, in task
/// order: the probability for binary tasks, the prediction for regression
/// tasks. Labels are not needed; an unseen category maps to the
/// out-of-vocabulary id. The input is streamed (chunks of the run's
/// `chunk_rows`, default 65536) and rows are written as they are scored, to
/// a temporary file renamed over `output` at the end (atomic: a failed run
/// leaves no partial file). Returns the number of rows.
pub fn predict_file(model_dir: &Path, input: &Path, output: &Path) -> Result<usize> {
    use std::io::Write as _;
    let trained = load_trained(model_dir)?;
    let chunks = trained
        .preprocessor
        .encode_chunks(input, chunk_rows(&trained.config), Labels::Optional);
    let batches = Batches::new(chunks, trained.config.train.eval_batch_size, None);
    let tasks = trained.tasks();
    let mut rows = 0usize;
    // The writer's own error type is the core's; the real cause is kept here.
    let mut failure: Option<RunError> = None;
    let written = mtrec_core::atomic::write_with(output, |tmp| {
        let score = || -> Result<()> {
            let file = std::fs::File::create(tmp).map_err(io(tmp))?;
            let csv_err = |e: csv::Error| RunError::WriteCsv {
                path: output.to_path_buf(),
                message: e.to_string(),
            };
            let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
            w.write_record(tasks.iter().map(|t| t.name.as_str())).map_err(csv_err)?;
            for batch in batches {
                let batch = batch?;
                let outputs = trained.outputs(&batch)?;
                for r in 0..batch.rows() {
                    let record = tasks.iter().zip(&outputs).map(|(t, o)| match t.kind {
                        mtrec_core::TaskKind::Binary => format!("{:.7}", 1.0 / (1.0 + (-o[r]).exp())),
                        mtrec_core::TaskKind::Regression => format!("{}", o[r]),
                    });
                    w.write_record(record).map_err(csv_err)?;
                }
                rows += batch.rows();
            }
            let mut inner = w.into_inner().map_err(|e| RunError::WriteCsv {
                path: output.to_path_buf(),
                message: e.error().to_string(),
            })?;
            inner.flush().map_err(io(tmp))
        };
        score().map_err(|e| {
            failure = Some(e);
            mtrec_core::Error::Io {
                path: tmp.to_path_buf(),
                source: std::io::Error::other("scoring stopped"),
            }
        })
    });
    match (written, failure) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(rows),
    }
}

/// Rows per chunk when a run's model reads a file: the run's `chunk_rows`
/// (streamed runs) or the default.
fn chunk_rows(config: &RunConfig) -> usize {
    config.data.chunk_rows.unwrap_or(StreamOptions::default().chunk_rows)
}

/// The metrics of run folder `model_dir`'s model on a labelled file, read
/// in chunks (the file is never held whole: per task 8 bytes per labelled
/// row are kept for AUC). The rows go through the model in batches of
/// `eval_batch_size` in file order, as the run's own evaluation does, so the
/// metrics equal those of the file loaded whole. Weighted as the run's
/// `[eval] weighted` says (+4 bytes per labelled row for the weight). A single-task run's K
/// models each see their own task's labels; their metrics are joined task
/// by task.
pub fn eval_file(model_dir: &Path, input: &Path) -> Result<Evaluation> {
    eval_file_with(model_dir, input, None)
}

/// [`eval_file`] with `eval` in place of the run's own `[eval]` (`mtrec
/// eval --weighted true|false`). Weighted metrics need a run whose
/// preprocessing reads a weight column (`[data] weight`).
pub fn eval_file_with(model_dir: &Path, input: &Path, eval: Option<EvalConfig>) -> Result<Evaluation> {
    let trained = load_trained(model_dir)?;
    let eval = eval.unwrap_or(trained.config.eval);
    if eval.weighted && trained.preprocessor.weight.is_none() {
        return Err(RunError::RunFolder {
            dir: model_dir.to_path_buf(),
            problem: "weighted metrics need the rows' weights, and this run was trained without a weight column \
                      (`[data] weight`); evaluate it unweighted (`--weighted false`)"
                .into(),
        });
    }
    let chunks = trained
        .preprocessor
        .encode_chunks(input, chunk_rows(&trained.config), Labels::Required);
    let batches = Batches::new(chunks, trained.config.train.eval_batch_size, None);
    let names = trained.preprocessor.domain.as_ref().map(|d| d.names.as_slice());
    let mut evaluators: Vec<Evaluator<'_>> = trained
        .models
        .iter()
        .map(|m| Evaluator::with_config(m, names, eval))
        .collect();
    for batch in batches {
        let batch = batch?;
        let mut column = 0;
        for (model, ev) in trained.models.iter().zip(&mut evaluators) {
            let n = model.tasks().len();
            if trained.models.len() > 1 {
                ev.add(&batch.only_task(column)?.to_batch(model.device())?)?;
            } else {
                ev.add(&batch.to_batch(model.device())?)?;
            }
            column += n;
        }
    }
    let parts = evaluators
        .into_iter()
        .map(Evaluator::finish)
        .collect::<mtrec_train::Result<Vec<_>>>()?;
    Ok(Evaluation::concat_tasks(parts)?)
}
