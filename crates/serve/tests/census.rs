//! Census-income (real data, skipped without it): a briefly trained MMoE
//! served over HTTP gives, for every row of test.data.gz, the scores
//! `mtrec predict` writes for that file (within 1e-6).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{answer_scores, predict_scores, scorer, temp, Client, Running};
use mtrec_serve::{BatchOptions, ServeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_census_test_rows_equal_mtrec_predict() {
    // Skipped (said so) without the data, unless MTREC_REQUIRE_DATA=1.
    let Some(data) = mtrec_tests::data_dir("served census predictions") else {
        return;
    };
    mtrec_runner::link_builtin_plugins();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/census-income.toml");
    let sets = ["train.epochs=1".to_string()];
    let mut cfg = mtrec_runner::config::load(&config, &sets).unwrap();
    cfg.data_dir = Some(data.clone());
    let dir = temp("census-run");
    let opts = mtrec_runner::run::RunOptions {
        out: Some(dir.clone()),
        ..Default::default()
    };
    mtrec_runner::run::run_with(&cfg, opts, |_| {}).unwrap();

    let test = data.join("census-income/test.data.gz");
    let expected = predict_scores(&dir, &test);
    let served = scorer("census", &dir);
    // Requests of 100 rows as the load generator builds them: the file's
    // text values, read as in training.
    let bodies = mtrec_serve::loadgen::bodies_from_file(served.preprocessor(), &test, 100, usize::MAX).unwrap();
    let options = ServeOptions {
        batch: BatchOptions {
            max_batch: 512,
            max_wait: Duration::from_micros(200),
            ..BatchOptions::default()
        },
        ..ServeOptions::default()
    };
    let server = Running::start(vec![served], &options).await;
    let mut client = Client::connect(server.addr).await;
    let mut got = Vec::new();
    for b in bodies {
        let (status, answer) = client.post("/v1/models/census:predict", b.bytes).await;
        assert_eq!(status, 200, "{answer}");
        got.extend(answer_scores(&answer, &["income", "marital"]));
    }
    assert_eq!(got.len(), expected.len());
    let mut worst = 0.0f64;
    for (r, (g, e)) in got.iter().zip(&expected).enumerate() {
        for k in 0..2 {
            let d = (g[k] - e[k]).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "row {r} task {k}: served {} vs predict {}", g[k], e[k]);
        }
    }
    eprintln!("{} census test rows: largest |served - predict| = {worst:e}", got.len());
    server.finish().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
