//! The scoring service end to end on a small trained tabular run (sparse,
//! dense with missing values, a shared-vocabulary sequence, a domain): its
//! answers equal `mtrec predict`; every kind of bad request gets its status
//! and a JSON error naming the instance and column while the service keeps
//! serving; concurrent requests answer as sequential ones; a shutdown
//! answers the requests in flight.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use common::{answer_scores, body, csv_instances, predict_scores, scorer, trained_run, Client, Running};
use mtrec_serve::{BatchOptions, ServeOptions};
use serde_json::{json, Value};

const PREDICT: &str = "/v1/models/m:predict";

/// One trained run shared by the tests of this file: (data dir, run dir).
fn run() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| trained_run("service"))
}

fn options(max_batch: usize, max_wait: Duration) -> ServeOptions {
    ServeOptions {
        batch: BatchOptions {
            max_batch,
            max_wait,
            ..BatchOptions::default()
        },
        body_limit: 64 * 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_predictions_equal_mtrec_predict() {
    let (data, dir) = run();
    let test = data.join("test.csv");
    let expected = predict_scores(dir, &test);
    let server = Running::start(vec![scorer("m", dir)], &options(64, Duration::from_micros(200))).await;
    let mut client = Client::connect(server.addr).await;
    let instances = csv_instances(&test);
    assert_eq!(instances.len(), expected.len());
    // Requests of several sizes, values as the file's text.
    let mut got = Vec::new();
    for chunk in instances.chunks(37) {
        let (status, answer) = client.post(PREDICT, body(chunk)).await;
        assert_eq!(status, 200, "{answer}");
        got.extend(answer_scores(&answer, &["click"]));
    }
    assert_eq!(got.len(), expected.len());
    for (r, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (g[0] - e[0]).abs() <= 1e-6,
            "row {r}: served {} vs predict {}",
            g[0],
            e[0]
        );
    }
    // The same rows typed as JSON: numbers, null for a missing value, the
    // sequence as a list; the label and ignored columns may be sent.
    let typed: Vec<_> = instances
        .iter()
        .map(|i| {
            let mut m = i.clone();
            let pos = i["pos"].as_str().unwrap();
            m.insert(
                "pos".into(),
                if pos == "?" {
                    Value::Null
                } else {
                    json!(pos.parse::<f64>().unwrap())
                },
            );
            let hist = i["hist"].as_str().unwrap();
            let items: Vec<&str> = hist.split('|').filter(|t| !t.is_empty()).collect();
            m.insert("hist".into(), json!(items));
            m
        })
        .collect();
    let (status, answer) = client.post(PREDICT, body(&typed)).await;
    assert_eq!(status, 200, "{answer}");
    for (r, (g, e)) in answer_scores(&answer, &["click"]).iter().zip(&expected).enumerate() {
        assert!(
            (g[0] - e[0]).abs() <= 1e-6,
            "typed row {r}: served {} vs predict {}",
            g[0],
            e[0]
        );
    }
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metadata_and_health() {
    let (_, dir) = run();
    let server = Running::start(vec![scorer("m", dir)], &ServeOptions::default()).await;
    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.get("/healthz").await, (200, json!({ "status": "ok" })));
    let (status, meta) = client.get("/v1/models/m").await;
    assert_eq!(status, 200);
    assert_eq!(meta["model_version_status"][0]["state"], "AVAILABLE");
    let m = &meta["metadata"];
    assert_eq!(m["architecture"], "mmoe");
    assert_eq!(
        m["tasks"],
        json!([{ "name": "click", "kind": "binary", "output": "probability" }])
    );
    let inputs: Vec<(String, String)> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["kind"].as_str().unwrap().into()))
        .collect();
    let kinds = [
        ("user", "sparse"),
        ("item", "sparse"),
        ("pos", "dense"),
        ("hist", "sequence"),
        ("scn", "domain"),
    ];
    assert_eq!(inputs, kinds.map(|(a, b)| (a.to_string(), b.to_string())).to_vec());
    assert_eq!(m["domain"], json!({ "column": "scn", "names": ["a", "b", "c"] }));
    let (status, err) = client.get("/v1/models/nope").await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("`nope`"), "{err}");
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_are_served_by_name() {
    let (_, dir) = run();
    let two = vec![scorer("m", dir), scorer("again", dir)];
    let server = Running::start(two, &ServeOptions::default()).await;
    let mut client = Client::connect(server.addr).await;
    let one = body(&[good()]);
    let (status, a) = client.post(PREDICT, one.clone()).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(client.post("/v1/models/again:predict", one).await, (200, a));
    let (status, meta) = client.get("/v1/models/again").await;
    assert_eq!((status, &meta["metadata"]["name"]), (200, &json!("again")));
    server.finish().await.unwrap();
    let same = vec![scorer("m", dir), scorer("m", dir)];
    let err = mtrec_serve::Service::new(same, &ServeOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("given twice"), "{err}");
}

/// One good instance (the first test row).
fn good() -> serde_json::Map<String, Value> {
    csv_instances(&run().0.join("test.csv")).swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_answered_with_its_error_and_the_service_keeps_serving() {
    let (_, dir) = run();
    let server = Running::start(vec![scorer("m", dir)], &options(64, Duration::from_micros(200))).await;
    let mut client = Client::connect(server.addr).await;
    let good_body = body(&[good(), good()]);
    let (_, reference) = client.post(PREDICT, good_body.clone()).await;

    let with = |k: &str, v: Value| {
        let mut m = good();
        m.insert(k.into(), v);
        m
    };
    let without = |k: &str| {
        let mut m = good();
        m.remove(k);
        m
    };
    // (what, body, status, instance, column, a word of the message)
    let cases: Vec<(&str, String, u16, Value, Value, &str)> = vec![
        (
            "malformed JSON",
            r#"{"instances": [{"user": "u1""#.into(),
            400,
            Value::Null,
            Value::Null,
            "malformed JSON",
        ),
        (
            "not an object",
            "[1, 2]".into(),
            400,
            Value::Null,
            Value::Null,
            "instances",
        ),
        ("no instances", "{}".into(), 400, Value::Null, Value::Null, "instances"),
        (
            "empty instances",
            r#"{"instances": []}"#.into(),
            400,
            Value::Null,
            Value::Null,
            "empty",
        ),
        (
            "columnar inputs",
            r#"{"inputs": {}}"#.into(),
            400,
            Value::Null,
            Value::Null,
            "not supported",
        ),
        (
            "instance not an object",
            body(&[good()]).replace("[{", "[3, {"),
            400,
            json!(0),
            Value::Null,
            "object",
        ),
        (
            "missing column",
            body(&[good(), without("item")]),
            400,
            json!(1),
            json!("item"),
            "missing column",
        ),
        (
            "unknown column",
            body(&[good(), good(), with("colour", json!("red"))]),
            400,
            json!(2),
            json!("colour"),
            "unknown column",
        ),
        (
            "unparsable value",
            body(&[with("pos", json!("twelve"))]),
            400,
            json!(0),
            json!("pos"),
            "twelve",
        ),
        (
            "unseen domain",
            body(&[good(), with("scn", json!("zz"))]),
            400,
            json!(1),
            json!("scn"),
            "zz",
        ),
        (
            "missing domain",
            body(&[with("scn", Value::Null)]),
            400,
            json!(0),
            json!("scn"),
            "domain is missing",
        ),
        (
            "list in a dense column",
            body(&[with("pos", json!([1, 2]))]),
            400,
            json!(0),
            json!("pos"),
            "sequence",
        ),
        (
            "object value",
            body(&[with("user", json!({"a": 1}))]),
            400,
            json!(0),
            json!("user"),
            "object",
        ),
        (
            "bad sequence item",
            body(&[with("hist", json!(["i1", {}]))]),
            400,
            json!(0),
            json!("hist"),
            "item 1",
        ),
        (
            "body over the limit",
            body(&vec![good(); 2000]),
            413,
            Value::Null,
            Value::Null,
            "length limit",
        ),
    ];
    for (what, bad, status, instance, column, word) in cases {
        let (got, err) = client.post(PREDICT, bad).await;
        assert_eq!(got, status, "{what}: {err}");
        assert_eq!(err["instance"], instance, "{what}: {err}");
        assert_eq!(err["column"], column, "{what}: {err}");
        let message = err["error"].as_str().unwrap_or_else(|| panic!("{what}: {err}"));
        assert!(message.contains(word), "{what}: `{word}` not in {message}");
        // Still serving, with the same answers.
        let (ok, again) = client.post(PREDICT, good_body.clone()).await;
        assert_eq!((ok, &again), (200, &reference), "after {what}");
    }
    let (status, err) = client.post("/v1/models/other:predict", good_body.clone()).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = client.get("/nowhere").await;
    assert_eq!(status, 404, "{err}");
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_answer_as_sequential_ones() {
    let (data, dir) = run();
    let instances = csv_instances(&data.join("test.csv"));
    // Sequential: each request scored alone (batches of one request).
    let server = Running::start(vec![scorer("m", dir)], &options(1, Duration::ZERO)).await;
    let mut client = Client::connect(server.addr).await;
    let mut sequential = Vec::new();
    for i in &instances {
        let (status, answer) = client.post(PREDICT, body(std::slice::from_ref(i))).await;
        assert_eq!(status, 200);
        sequential.push(answer);
    }
    server.finish().await.unwrap();

    // 24 clients at once against a batching server.
    let server = Running::start(vec![scorer("m", dir)], &options(128, Duration::from_millis(2))).await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..24)
        .map(|c| {
            let mine: Vec<(usize, serde_json::Map<String, Value>)> =
                instances.iter().cloned().enumerate().skip(c).step_by(24).collect();
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut out = Vec::new();
                for (i, inst) in mine {
                    let (status, answer) = client.post(PREDICT, body(&[inst])).await;
                    assert_eq!(status, 200, "{answer}");
                    out.push((i, answer));
                }
                out
            })
        })
        .collect();
    let mut concurrent = vec![Value::Null; instances.len()];
    for t in tasks {
        for (i, answer) in t.await.unwrap() {
            concurrent[i] = answer;
        }
    }
    for (i, (s, c)) in sequential.iter().zip(&concurrent).enumerate() {
        let (s, c) = (answer_scores(s, &["click"]), answer_scores(c, &["click"]));
        assert!(
            (s[0][0] - c[0][0]).abs() <= 1e-6,
            "instance {i}: alone {s:?}, batched {c:?}"
        );
    }
    server.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_answers_the_requests_in_flight() {
    let (_, dir) = run();
    // Batches wait up to 3 s for rows: the requests are still queued when
    // the shutdown starts.
    let mut server = Running::start(vec![scorer("m", dir)], &options(10_000, Duration::from_secs(3))).await;
    let addr = server.addr;
    let one = body(&[good()]);
    let expected = {
        let mut c = Client::connect(addr).await;
        c.post(PREDICT, one.clone()).await
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.post(PREDICT, one).await
            })
        })
        .collect();
    let waiting = std::time::Instant::now();
    while server.in_flight.load(Ordering::SeqCst) < 8 {
        assert!(waiting.elapsed() < Duration::from_secs(20), "requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown();
    for t in tasks {
        assert_eq!(t.await.unwrap(), expected);
    }
    server.finish().await.unwrap();
    // Stopped: no longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_counts_answers_and_malformed_requests() {
    use mtrec_serve::loadgen::{bodies_from_file, malformed_bodies, run_level, LoadOptions};
    let (data, dir) = run();
    let served = scorer("m", dir);
    let bodies = bodies_from_file(served.preprocessor(), &data.join("test.csv"), 3, 100).unwrap();
    assert_eq!(bodies.len(), 34); // 100 rows: 33 requests of 3, one of 1
    assert_eq!(bodies.iter().map(|b| b.instances).sum::<usize>(), 100);
    let malformed = malformed_bodies(served.preprocessor(), &bodies[0].bytes).unwrap();
    assert_eq!(malformed.len(), 4);
    let server = Running::start(vec![served], &options(64, Duration::from_micros(200))).await;
    let opts = LoadOptions {
        addr: server.addr,
        model: "m".into(),
        requests: 300,
        max_time: Duration::from_secs(60),
        malformed: 8,
    };
    let r = run_level(&opts, &bodies, &malformed, 6).await.unwrap();
    assert_eq!(
        (r.ok, r.malformed_sent, r.malformed_400, r.errors),
        (292, 8, 8, 0),
        "{r:?}"
    );
    assert!(!r.timed_out && r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms, "{r:?}");
    // Request i sends body i % 34; the malformed slots (18, 56, 93, 131,
    // 168, 206, 243, 281) miss the 8 sends of the one-row body 33.
    assert_eq!(r.predictions, 292 * 3 - 8 * 2, "{r:?}");
    // Bounded in time: a zero time limit sends nothing.
    let r = run_level(
        &LoadOptions {
            max_time: Duration::ZERO,
            ..opts.clone()
        },
        &bodies,
        &malformed,
        2,
    )
    .await
    .unwrap();
    assert!(r.timed_out && r.ok == 0, "{r:?}");
    // Loopback only.
    let far = LoadOptions {
        addr: "192.0.2.1:8080".parse().unwrap(),
        ..opts
    };
    let err = run_level(&far, &bodies, &malformed, 1).await.unwrap_err().to_string();
    assert!(err.contains("loopback"), "{err}");
    server.finish().await.unwrap();
}

/// A single-task run (one independent model per task) is served as one
/// model: each task's column from its own model, equal to `mtrec predict`,
/// and the metadata lists every task and the K models' parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_task_run_is_served_column_by_column() {
    let (data, _) = run();
    let out = common::temp("single-task-run");
    // Two tasks: the second tells one user (no longer an input) from the others.
    let second = "\n[[tasks]]\nname = \"again\"\nkind = \"binary\"\nlabel = { column = \"user\", equals = \"u1\" }\n";
    let config = common::CONFIG
        .replace("arch = \"mmoe\"\nexperts = 2", "arch = \"single-task\"")
        .replace("sparse = [\"user\", \"item\"]", "sparse = [\"item\"]");
    let config = format!("{config}{second}");
    common::train(&config, data, &out);
    let test = data.join("test.csv");
    let expected = predict_scores(&out, &test);
    let served = scorer("m", &out);
    assert_eq!(served.models().len(), 2);
    let server = Running::start(vec![served], &options(64, Duration::from_micros(200))).await;
    let mut client = Client::connect(server.addr).await;
    let (status, answer) = client.post(PREDICT, body(&csv_instances(&test))).await;
    assert_eq!(status, 200, "{answer}");
    let got = answer_scores(&answer, &["click", "again"]);
    assert_eq!(got.len(), expected.len());
    for (r, (g, e)) in got.iter().zip(&expected).enumerate() {
        for k in 0..2 {
            assert!(
                (g[k] - e[k]).abs() <= 1e-6,
                "row {r} task {k}: served {} vs predict {}",
                g[k],
                e[k]
            );
        }
    }
    let (_, meta) = client.get("/v1/models/m").await;
    let m = &meta["metadata"];
    assert_eq!(m["architecture"], "single-task");
    let tasks: Vec<&str> = m["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["click", "again"]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(m["parameters"], report["parameters"]);
    server.finish().await.unwrap();
    std::fs::remove_dir_all(&out).ok();
}
