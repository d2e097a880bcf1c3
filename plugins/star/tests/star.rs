//! STAR: partitioned normalization against hand-computed values (batch
//! statistics in training, moving averages in evaluation), the star FCN's
//! effective weights, grouping by domain, gradients to every per-domain
//! parameter, odd batches (a domain with one row, an absent domain), clear
//! errors without domains, and STAR against STAR with its `W_p`, `b_p`
//! frozen on shifted domains.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use mtrec_core::INPUT;
use mtrec_core::{
    registry, Component, Domains, ForwardCtx, GraphEnv, GraphSpec, Inputs, Layer, Model, NodeIo, NodeSpec,
    ParamBuilder, ParamStore, Port, TaskInfo, TaskKind,
};
use mtrec_data::{split, Dataset, MultiDomainSynthetic};
use mtrec_train::{evaluate, optimizer, train, train_step, TrainConfig};

const EPS: f64 = 1e-5;

fn dev() -> Device {
    Device::Cpu
}

fn env(width: usize, domains: usize) -> GraphEnv {
    GraphEnv {
        input_width: width,
        tasks: vec![TaskInfo {
            name: "click".into(),
            kind: TaskKind::Binary,
        }],
        domains,
        features: Default::default(),
    }
}

/// Builds one layer node of `kind` named `n` reading a `[B, width]` input.
fn layer(kind: &str, node: NodeSpec, width: usize, domains: usize) -> (Box<dyn Layer>, ParamStore) {
    mtrec_star::link();
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 3, &dev());
    let io = NodeIo {
        inputs: vec![Port::Dense { width }],
        experts: vec![],
    };
    let k = registry::component(kind).unwrap();
    let params = k.parse(&node.params).unwrap();
    let env = env(width, domains);
    k.check(&params, &io, &env).unwrap();
    match k.build(&params, &io, &env, &pb.pp("n")).unwrap() {
        Component::Layer(l) => (l, store),
        _ => panic!("`{kind}` is not a layer"),
    }
}

fn var(store: &ParamStore, name: &str) -> Var {
    store
        .all()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no `{name}`"))
        .1
}

fn set(store: &ParamStore, name: &str, values: &[f32]) {
    let v = var(store, name);
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &dev()).unwrap())
        .unwrap();
}

fn values(store: &ParamStore, name: &str) -> Vec<f32> {
    var(store, name).as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

fn rows2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// Per domain, per column: biased mean and variance of `x`'s rows of that domain.
fn stats(x: &[Vec<f32>], ids: &[u32], p: u32, j: usize) -> (f64, f64) {
    let v: Vec<f64> = x
        .iter()
        .zip(ids)
        .filter(|(_, &d)| d == p)
        .map(|(r, _)| f64::from(r[j]))
        .collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n)
}

#[test]
fn partitioned_norm_train_batch_stats_then_eval_moving_averages() {
    // 4 domains; domain 2 has one row, domain 3 none.
    let (pn, store) = layer("partitioned-norm", NodeSpec::new("n", "partitioned-norm"), 2, 4);
    let gamma = [2.0f32, 0.5];
    let beta = [0.1f32, -0.2];
    let dgamma = [1.5f32, 1.0, 1.0, 3.0, 0.7, 0.7, 9.0, 9.0];
    let dbeta = [1.0f32, 0.0, 0.0, 0.5, 0.3, 0.3, 7.0, 7.0];
    set(&store, "n.gamma", &gamma);
    set(&store, "n.beta", &beta);
    set(&store, "n.domain_gamma", &dgamma);
    set(&store, "n.domain_beta", &dbeta);

    let ids = vec![0u32, 1, 0, 1, 0, 2];
    let x: Vec<Vec<f32>> = vec![
        vec![1.0, 0.0],
        vec![10.0, -4.0],
        vec![3.0, 0.0],
        vec![20.0, 4.0],
        vec![5.0, 6.0],
        vec![7.0, 1.0],
    ];
    let xt = Tensor::new(x.clone(), &dev()).unwrap();
    let doms = Domains::new(ids.clone(), 4, &dev()).unwrap();
    let y = rows2(&pn.forward(&xt, &ForwardCtx::train().with_domains(Some(&doms))).unwrap());

    // Literal check: domain 0's first column {1, 3, 5}, mean 3, biased var 8/3:
    // z = -sqrt(3/2), 0, sqrt(3/2); times gamma * gamma_0 = 3, plus beta + beta_0 = 1.1.
    let z = (1.5f64).sqrt() * (8.0 / 3.0 / (8.0 / 3.0 + EPS)).sqrt();
    assert!(close(f64::from(y[0][0]), -3.0 * z + 1.1, 1e-5), "{}", y[0][0]);
    assert!(close(f64::from(y[2][0]), 1.1, 1e-5));
    assert!(close(f64::from(y[4][0]), 3.0 * z + 1.1, 1e-5));
    // Every value of the domains with two rows or more against the formula
    // with per-domain batch statistics.
    for (r, row) in y.iter().enumerate().filter(|(r, _)| ids[*r] != 2) {
        let p = ids[r];
        for j in 0..2 {
            let (mu, var) = stats(&x, &ids, p, j);
            let g = f64::from(gamma[j]) * f64::from(dgamma[p as usize * 2 + j]);
            let b = f64::from(beta[j]) + f64::from(dbeta[p as usize * 2 + j]);
            let want = g * (f64::from(x[r][j]) - mu) / (var + EPS).sqrt() + b;
            assert!(
                close(f64::from(row[j]), want, 1e-5),
                "row {r} col {j}: {} vs {want}",
                row[j]
            );
        }
    }
    // The one-row domain 2 has no batch statistics: normalised with its
    // (initial) moving statistics E_2 = 0, Var_2 = 1, not to 0 (which would
    // give beta + beta_p = (0.4, 0.1) whatever the row):
    // (2 * 0.7) * 7 / sqrt(1 + eps) + 0.4 and (0.5 * 0.7) * 1 / sqrt(1 + eps) + 0.1.
    let s = 1.0 / (1.0 + EPS).sqrt();
    assert!(close(f64::from(y[5][0]), 1.4 * 7.0 * s + 0.4, 1e-6), "{}", y[5][0]);
    assert!(close(f64::from(y[5][1]), 0.35 * s + 0.1, 1e-6), "{}", y[5][1]);

    // Moving averages: E_p = 0.9 * 0 + 0.1 mu_p, Var_p = 0.9 * 1 + 0.1 var_p for
    // the domains with batch statistics; domain 2 (one row) and domain 3
    // (absent) untouched.
    let mean = values(&store, "n.moving_mean");
    let mvar = values(&store, "n.moving_var");
    for p in 0..2u32 {
        for j in 0..2 {
            let (mu, var) = stats(&x, &ids, p, j);
            let i = p as usize * 2 + j;
            assert!(close(f64::from(mean[i]), 0.1 * mu, 1e-6), "E_{p}[{j}]");
            assert!(close(f64::from(mvar[i]), 0.9 + 0.1 * var, 1e-6), "Var_{p}[{j}]");
        }
    }
    assert_eq!((&mean[4..], &mvar[4..]), (&[0.0f32; 4][..], &[1.0f32; 4][..]));

    // Eval: a batch from a very different distribution is normalized with
    // the moving averages, not with its own statistics.
    let far: Vec<Vec<f32>> = x.iter().map(|r| r.iter().map(|v| v * 100.0 + 50.0).collect()).collect();
    let ft = Tensor::new(far.clone(), &dev()).unwrap();
    let ye = rows2(&pn.forward(&ft, &ForwardCtx::eval().with_domains(Some(&doms))).unwrap());
    for (r, row) in ye.iter().enumerate() {
        let p = ids[r] as usize;
        for j in 0..2 {
            let i = p * 2 + j;
            let g = f64::from(gamma[j]) * f64::from(dgamma[i]);
            let b = f64::from(beta[j]) + f64::from(dbeta[i]);
            let want = g * (f64::from(far[r][j]) - f64::from(mean[i])) / (f64::from(mvar[i]) + EPS).sqrt() + b;
            assert!(
                close(f64::from(row[j]), want, 1e-5),
                "eval row {r} col {j}: {} vs {want}",
                row[j]
            );
        }
    }
    // With batch statistics the outputs would be a few units at most.
    assert!(ye.iter().flatten().any(|v| v.abs() > 100.0));
    // Evaluation leaves the moving averages alone.
    assert_eq!(values(&store, "n.moving_mean"), mean);

    // A training batch of domain 0 only: the other domains' averages untouched.
    let only0 = Domains::new(vec![0, 0], 4, &dev()).unwrap();
    let x0 = Tensor::new(&[[2.0f32, 2.0], [4.0, 3.0]], &dev()).unwrap();
    pn.forward(&x0, &ForwardCtx::train().with_domains(Some(&only0)))
        .unwrap();
    let (mean2, mvar2) = (values(&store, "n.moving_mean"), values(&store, "n.moving_var"));
    assert_eq!((&mean2[2..], &mvar2[2..]), (&mean[2..], &mvar[2..]));
    assert!(close(f64::from(mean2[0]), 0.9 * f64::from(mean[0]) + 0.1 * 3.0, 1e-6));
    assert!(close(f64::from(mvar2[1]), 0.9 * f64::from(mvar[1]) + 0.1 * 0.25, 1e-6));
}

/// A domain with one row in a training batch, by hand, on both paths (fused
/// op and candle's ops): normalised with its moving statistics, which stay
/// as they were, with a gradient reaching the row (a batch-statistics
/// normalisation of one row gives 0 and no gradient).
#[test]
fn one_row_group_normalises_with_moving_statistics_and_leaves_them_untouched() {
    use mtrec_core::ops::with_fused;
    for fused in [true, false] {
        let (pn, store) = layer("partitioned-norm", NodeSpec::new("n", "partitioned-norm"), 2, 2);
        set(&store, "n.gamma", &[2.0, 0.5]);
        set(&store, "n.beta", &[0.1, -0.2]);
        set(&store, "n.domain_gamma", &[1.0, 1.0, 3.0, 4.0]);
        set(&store, "n.domain_beta", &[0.0, 0.0, 1.0, -1.0]);
        // Moving statistics as after some training: domain 1 has E = (2, -1),
        // Var = (4, 0.25).
        set(&store, "n.moving_mean", &[0.5, 0.5, 2.0, -1.0]);
        set(&store, "n.moving_var", &[2.0, 2.0, 4.0, 0.25]);
        // Rows 0 and 2 of domain 0, row 1 alone in domain 1.
        let doms = Domains::new(vec![0, 1, 0], 2, &dev()).unwrap();
        let x = Var::from_vec(vec![1.0f32, 2.0, 8.0, 0.0, 3.0, 6.0], (3, 2), &dev()).unwrap();
        let (y, dx) = with_fused(fused, || {
            let y = pn
                .forward(x.as_tensor(), &ForwardCtx::train().with_domains(Some(&doms)))
                .unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            (rows2(&y), rows2(grads.get(x.as_tensor()).unwrap()))
        });
        // Row (8, 0) of domain 1, by hand: scale gamma * gamma_1 = (6, 2),
        // shift beta + beta_1 = (1.1, -1.2);
        // 6 * (8 - 2) / sqrt(4 + eps) + 1.1 = 19.1 (eps aside),
        // 2 * (0 - (-1)) / sqrt(0.25 + eps) - 1.2 = 2.8.
        let want = [
            6.0 * 6.0 / (4.0 + EPS).sqrt() + 1.1,
            2.0 * 1.0 / (0.25 + EPS).sqrt() - 1.2,
        ];
        for j in 0..2 {
            assert!(
                close(f64::from(y[1][j]), want[j], 1e-6),
                "fused {fused}: y[1][{j}] = {}",
                y[1][j]
            );
        }
        assert!((want[0] - 19.1).abs() < 1e-3 && (want[1] - 2.8).abs() < 1e-3);
        // d(sum y)/dx of that row = scale / sqrt(Var_1 + eps): (3, 4), not 0.
        assert!(
            close(f64::from(dx[1][0]), 6.0 / (4.0 + EPS).sqrt(), 1e-5),
            "{:?}",
            dx[1]
        );
        assert!(
            close(f64::from(dx[1][1]), 2.0 / (0.25 + EPS).sqrt(), 1e-5),
            "{:?}",
            dx[1]
        );
        // Domain 0 (two rows) used its batch statistics: column 0 {1, 3},
        // mean 2, var 1, z = -1, +1 (eps aside) times 2 plus 0.1.
        assert!(
            close(f64::from(y[0][0]), -2.0 / (1.0 + EPS).sqrt() + 0.1, 1e-5),
            "{}",
            y[0][0]
        );
        // Moving statistics: domain 0 updated (E = 0.9 * 0.5 + 0.1 * (2, 4)),
        // domain 1 exactly as it was.
        let mean = values(&store, "n.moving_mean");
        let var = values(&store, "n.moving_var");
        assert!(close(f64::from(mean[0]), 0.45 + 0.2, 1e-6) && close(f64::from(mean[1]), 0.45 + 0.4, 1e-6));
        assert!(close(f64::from(var[0]), 1.8 + 0.1, 1e-6), "{var:?}");
        assert_eq!((&mean[2..], &var[2..]), (&[2.0f32, -1.0][..], &[4.0f32, 0.25][..]));
        // A whole training batch of one row leaves every statistic alone.
        let one = Domains::new(vec![0], 2, &dev()).unwrap();
        let x1 = Tensor::new(&[[100.0f32, -100.0]], &dev()).unwrap();
        with_fused(fused, || {
            pn.forward(&x1, &ForwardCtx::train().with_domains(Some(&one))).unwrap();
        });
        assert_eq!(values(&store, "n.moving_mean"), mean);
        assert_eq!(values(&store, "n.moving_var"), var);
    }
}

#[test]
fn star_fcn_effective_weight_is_w_times_w_p() {
    let node = NodeSpec::new("n", "star-fcn")
        .param("units", [3, 2])
        .param("activation", "relu");
    let (fcn, store) = layer("star-fcn", node, 4, 3);
    // Non-trivial per-domain parameters for domain 1 (domain 0 keeps ones / zeros).
    let mut w_p0: Vec<f32> = values(&store, "n.0.domain_weight");
    for (i, v) in w_p0.iter_mut().enumerate().skip(12).take(12) {
        *v = 0.5 + 0.13 * i as f32 - 0.02 * (i * i) as f32;
    }
    set(&store, "n.0.domain_weight", &w_p0);
    set(
        &store,
        "n.0.domain_bias",
        &[0.0, 0.0, 0.0, 0.3, -0.2, 0.1, 0.0, 0.0, 0.0],
    );
    let mut w_p1 = values(&store, "n.1.domain_weight");
    for (i, v) in w_p1.iter_mut().enumerate().skip(6).take(6) {
        *v = -1.0 + 0.4 * i as f32;
    }
    set(&store, "n.1.domain_weight", &w_p1);

    let x: Vec<Vec<f32>> = vec![
        vec![0.5, -1.0, 2.0, 0.1],
        vec![1.5, 0.3, -0.7, 1.0],
        vec![-0.2, 0.8, 0.4, -1.3],
    ];
    let ids = vec![1u32, 0, 1];
    let doms = Domains::new(ids.clone(), 3, &dev()).unwrap();
    let y = rows2(
        &fcn.forward(
            &Tensor::new(x.clone(), &dev()).unwrap(),
            &ForwardCtx::train().with_domains(Some(&doms)),
        )
        .unwrap(),
    );

    // By hand: h = relu(x (W * W_p) + b + b_p) for each layer.
    let layer_by_hand = |h: &[f64], l: usize, p: usize, d_in: usize, d_out: usize| -> Vec<f64> {
        let w = values(&store, &format!("n.{l}.weight"));
        let b = values(&store, &format!("n.{l}.bias"));
        let wp = values(&store, &format!("n.{l}.domain_weight"));
        let bp = values(&store, &format!("n.{l}.domain_bias"));
        (0..d_out)
            .map(|o| {
                let mut s = f64::from(b[o]) + f64::from(bp[p * d_out + o]);
                for (i, hi) in h.iter().enumerate().take(d_in) {
                    let eff = f64::from(w[i * d_out + o]) * f64::from(wp[p * d_in * d_out + i * d_out + o]);
                    s += hi * eff;
                }
                s.max(0.0)
            })
            .collect()
    };
    for (r, row) in x.iter().enumerate() {
        let p = ids[r] as usize;
        let h0: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let h1 = layer_by_hand(&h0, 0, p, 4, 3);
        let h2 = layer_by_hand(&h1, 1, p, 3, 2);
        for (o, want) in h2.iter().enumerate() {
            assert!(
                close(f64::from(y[r][o]), *want, 1e-5),
                "row {r} out {o}: {} vs {want}",
                y[r][o]
            );
        }
    }
    // Domain 1's effective weight differs from the shared one (the check is not vacuous).
    let shared_only = layer_by_hand(&[0.5, -1.0, 2.0, 0.1], 0, 0, 4, 3);
    let with_p = layer_by_hand(&[0.5, -1.0, 2.0, 0.1], 0, 1, 4, 3);
    assert_ne!(shared_only, with_p);
}

// ---- whole models on multi-domain data --------------------------------

/// Without behaviour logs (`history = 0`): these tests were written for the
/// parameter draws of an input without pooled sequences. (With them, seed 1's
/// draws leave every hidden ReLU of `tower-like`'s auxiliary network dead at
/// initialisation: its hidden pre-activations are about its biases, the
/// domain embeddings being tiny, so all 8 can start negative.)
fn data(rows: usize, seed: u64) -> Dataset {
    MultiDomainSynthetic {
        rows,
        seed,
        history: 0,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn star_graph(data: &Dataset, params: &toml::Table) -> GraphSpec {
    mtrec_star::link();
    let f = data.features(4);
    let env = GraphEnv {
        input_width: f.width(),
        tasks: data.tasks.clone(),
        domains: data.domains.as_ref().map_or(0, |d| d.names.len()),
        features: f.clone(),
    };
    registry::architecture("star").unwrap().expand(params, &env).unwrap()
}

fn star(data: &Dataset, seed: u64) -> Model {
    let g = star_graph(data, &toml::Table::new());
    Model::build(&g, &data.features(4), &data.tasks, 3, seed, &dev()).unwrap()
}

fn snapshot(m: &Model) -> BTreeMap<String, Vec<f32>> {
    m.params()
        .all()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Parameters with one slice per domain along their first axis.
fn per_domain(name: &str) -> bool {
    [
        "domain_gamma",
        "domain_beta",
        "domain_weight",
        "domain_bias",
        "aux.embedding",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

fn slice_changed(before: &[f32], after: &[f32], p: usize, domains: usize) -> bool {
    let n = before.len() / domains;
    before[p * n..(p + 1) * n] != after[p * n..(p + 1) * n]
}

#[test]
fn template_nodes_defaults_and_parameters() {
    let d = data(60, 1);
    let g = star_graph(&d, &toml::Table::new());
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["partitioned-norm", "star-fcn", "tower-click", "tower-like"]);
    assert_eq!(g.nodes[0].inputs, [INPUT]);
    assert_eq!(g.nodes[2].inputs, ["star-fcn"]);
    let arch = registry::architecture("star").unwrap();
    let defaults = arch.defaults();
    assert_eq!(star_graph(&d, &defaults), g);
    assert_eq!(defaults["units"], toml::Value::try_from([64, 32]).unwrap());

    let mut p = toml::Table::new();
    p.insert("norm".into(), false.into());
    p.insert("units".into(), toml::Value::Array(vec![]));
    p.insert("aux".into(), false.into());
    let g = star_graph(&d, &p);
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["tower-click", "tower-like"]);
    Model::build(&g, &d.features(4), &d.tasks, 3, 1, &dev()).unwrap();

    let mut bad = toml::Table::new();
    bad.insert("unit".into(), toml::Value::Array(vec![]));
    let f = d.features(4);
    let env = GraphEnv {
        input_width: f.width(),
        tasks: d.tasks.clone(),
        domains: 3,
        features: f.clone(),
    };
    let err = arch.expand(&bad, &env).unwrap_err().to_string();
    assert!(err.contains("unit"), "{err}");
}

#[test]
fn no_domains_is_a_clear_error() {
    mtrec_star::link();
    let d = data(60, 1);
    let f = d.features(4);
    let env = GraphEnv {
        input_width: f.width(),
        tasks: d.tasks.clone(),
        domains: 0,
        features: f.clone(),
    };
    let err = registry::architecture("star")
        .unwrap()
        .expand(&toml::Table::new(), &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`star`") && err.contains("no domains"), "{err}");

    // The same graph built for data without domains: the first STAR node says why.
    let g = star_graph(&d, &toml::Table::new());
    let err = Model::build(&g, &f, &d.tasks, 0, 1, &dev()).unwrap_err().to_string();
    assert!(err.contains("partitioned-norm") && err.contains("no domains"), "{err}");

    // A model fed a batch without domain ids.
    let m = star(&d, 1);
    let b = d.batch(&[0, 1, 2], &dev()).unwrap();
    let inputs = Inputs::new(b.inputs.sparse.clone(), b.inputs.dense.clone(), None)
        .unwrap()
        .with_sequences(b.inputs.sequences.clone())
        .unwrap();
    let err = m.forward(&inputs, false).unwrap_err().to_string();
    assert!(err.contains("needs the domain id of every row"), "{err}");
}

/// A few training steps so that per-domain parameters and moving averages
/// differ from their initial values.
fn trained(d: &Dataset, steps: usize) -> Model {
    let m = star(d, 2);
    let mut opt = optimizer(&m, &TrainConfig::default()).unwrap();
    let rows: Vec<usize> = (0..d.rows()).collect();
    for chunk in rows.chunks(d.rows().div_ceil(steps)) {
        let b = d.batch(chunk, &dev()).unwrap();
        train_step(&m, &mut opt, &b, &[1.0, 1.0], None).unwrap();
    }
    m
}

#[test]
fn one_domain_batch_equals_same_rows_in_a_mixed_batch_in_eval() {
    let d = data(400, 3);
    let m = trained(&d, 4);
    let ids = &d.domains.as_ref().unwrap().ids;
    let mixed: Vec<usize> = (0..120).collect();
    let out = m.forward(&d.batch(&mixed, &dev()).unwrap().inputs, false).unwrap();
    for p in 0..3u32 {
        let own: Vec<usize> = mixed.iter().copied().filter(|&r| ids[r] == p).collect();
        assert!(!own.is_empty());
        let alone = m.forward(&d.batch(&own, &dev()).unwrap().inputs, false).unwrap();
        for (t, (a, b)) in alone.outputs.iter().zip(&out.outputs).enumerate() {
            let a: Vec<f32> = a.to_vec1().unwrap();
            let b: Vec<f32> = b.to_vec1().unwrap();
            for (k, &r) in own.iter().enumerate() {
                assert!(
                    (a[k] - b[r]).abs() < 1e-5,
                    "domain {p} task {t} row {r}: {} alone vs {} mixed",
                    a[k],
                    b[r]
                );
            }
        }
    }
}

/// The shared gradient-reach check sees parts of a variable: a batch
/// without domain 2 leaves that domain's slice of every `[D, in, out]`
/// weight unchanged while the other slices move, and the check names it.
#[test]
fn the_reach_check_names_an_unreached_slice() {
    let d = data(300, 4);
    let ids = &d.domains.as_ref().unwrap().ids;
    let rows: Vec<usize> = (0..300).filter(|&r| ids[r] != 2).collect();
    let batch = d.batch(&rows, &dev()).unwrap();
    let unchanged = mtrec_train::check::unchanged_after_one_step(&star(&d, 1), &batch).unwrap();
    let weights: Vec<String> = star(&d, 1)
        .params()
        .vars()
        .into_iter()
        .filter(|(n, v)| v.as_tensor().rank() >= 3 && per_domain(n))
        .map(|(n, _)| format!("{n}[2]"))
        .collect();
    assert!(!weights.is_empty());
    for w in &weights {
        assert!(unchanged.contains(w), "{w} not reported in {unchanged:?}");
    }
    assert!(unchanged.iter().all(|u| u.ends_with("[2]")), "{unchanged:?}");
}

#[test]
fn gradients_reach_every_variable_and_each_present_domain() {
    let d = data(300, 4);
    let ids = &d.domains.as_ref().unwrap().ids;
    // Every domain present with several rows.
    let all: Vec<usize> = (0..300).collect();
    assert!((0..3).all(|p| ids.iter().filter(|&&i| i == p).count() >= 2));
    let batch = d.batch(&all, &dev()).unwrap();
    let unchanged = mtrec_train::check::unchanged_after_one_step(&star(&d, 1), &batch).unwrap();
    assert!(unchanged.is_empty(), "no gradient reached {unchanged:?}");
    // Finer: every per-domain slice of every domain present.
    let m = star(&d, 1);
    let before = snapshot(&m);
    let mut opt = optimizer(&m, &TrainConfig::default()).unwrap();
    train_step(&m, &mut opt, &batch, &[1.0, 1.0], None).unwrap();
    let after = snapshot(&m);
    let mut checked = 0;
    for (name, _) in m.params().vars() {
        let (b, a) = (&before[&name], &after[&name]);
        assert!(a != b, "`{name}` did not change after one step");
        if per_domain(&name) {
            for p in 0..3 {
                assert!(slice_changed(b, a, p, 3), "`{name}`: domain {p}'s slice did not change");
            }
            checked += 1;
        }
    }
    // PN: gamma_p, beta_p; 2 FCN layers and 2 towers' output layers: W_p, b_p;
    // 2 auxiliary embeddings.
    assert_eq!(checked, 2 + 2 * 2 + 2 * 2 + 2);
    // The moving averages moved for every domain.
    for name in ["partitioned-norm.moving_mean", "partitioned-norm.moving_var"] {
        for p in 0..3 {
            assert!(slice_changed(&before[name], &after[name], p, 3), "{name} domain {p}");
        }
    }

    // A first step on a batch without domain 2: its slices get no gradient
    // and its moving averages no statistics. (A fresh optimizer: Adam's
    // momentum would keep moving slices that had gradients before.)
    let no2: Vec<usize> = all.iter().copied().filter(|&r| ids[r] != 2).collect();
    let m = star(&d, 1);
    let before = snapshot(&m);
    let mut opt = optimizer(&m, &TrainConfig::default()).unwrap();
    train_step(&m, &mut opt, &d.batch(&no2, &dev()).unwrap(), &[1.0, 1.0], None).unwrap();
    let after = snapshot(&m);
    for (name, b) in &before {
        if per_domain(name) || name.contains("moving_") {
            assert!(
                !slice_changed(b, &after[name], 2, 3),
                "`{name}` changed for absent domain 2"
            );
            assert!(
                slice_changed(b, &after[name], 0, 3),
                "`{name}` did not change for domain 0"
            );
        }
    }
}

#[test]
fn one_row_domain_and_absent_domain_train_with_finite_outputs() {
    let d = data(300, 5);
    let ids = &d.domains.as_ref().unwrap().ids;
    let zero: Vec<usize> = (0..300).filter(|&r| ids[r] == 0).take(5).collect();
    let one = (0..300).find(|&r| ids[r] == 1).unwrap();
    let mut rows = zero.clone();
    rows.insert(2, one);
    let m = star(&d, 1);
    let b = d.batch(&rows, &dev()).unwrap();
    let out = m.forward(&b.inputs, true).unwrap();
    for o in &out.outputs {
        assert!(o.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
    let mut opt = optimizer(&m, &TrainConfig::default()).unwrap();
    for _ in 0..3 {
        let losses = train_step(&m, &mut opt, &b, &[1.0, 1.0], None).unwrap();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    }
    // A batch of one row.
    let single = d.batch(&[one], &dev()).unwrap();
    let losses = train_step(&m, &mut opt, &single, &[1.0, 1.0], None).unwrap();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let all = snapshot(&m);
    assert!(all.values().flatten().all(|v| v.is_finite()));
    // Domain 2 never appeared: its moving averages are still the initial 0 and 1.
    let n = all["partitioned-norm.moving_mean"].len() / 3;
    assert!(all["partitioned-norm.moving_mean"][2 * n..].iter().all(|&v| v == 0.0));
    assert!(all["partitioned-norm.moving_var"][2 * n..].iter().all(|&v| v == 1.0));
    let out = m.forward(&d.batch(&rows, &dev()).unwrap().inputs, false).unwrap();
    for o in &out.outputs {
        assert!(o.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn checkpoint_keeps_the_moving_averages() {
    let d = data(300, 6);
    let m = trained(&d, 3);
    let dir = std::env::temp_dir().join(format!("mtrec-star-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    m.params().save(&path).unwrap();
    let fresh = star(&d, 99);
    fresh.params().load(&path).unwrap();
    assert_eq!(snapshot(&fresh), snapshot(&m));
    let b = d.batch(&(0..50).collect::<Vec<_>>(), &dev()).unwrap();
    let (x, y) = (
        m.forward(&b.inputs, false).unwrap(),
        fresh.forward(&b.inputs, false).unwrap(),
    );
    assert_eq!(
        x.outputs[0].to_vec1::<f32>().unwrap(),
        y.outputs[0].to_vec1::<f32>().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn star_learns_and_reports_a_domain_by_task_grid() {
    let d = data(3000, 7);
    let sp = split(3000, [0.8, 0.1, 0.1], 7).unwrap();
    let m = star(&d, 3);
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 128,
        lr: 3e-3,
        patience: 0,
        ..TrainConfig::default()
    };
    let out = train(&m, &d, &sp, &cfg, |_| {}).unwrap();
    assert_eq!(out.history.len(), 4);
    let ev = evaluate(&m, &d, &sp.test, 1024).unwrap();
    for t in &ev.tasks {
        assert!(t.metrics.auc.unwrap() > 0.65, "{}: AUC {:?}", t.task, t.metrics.auc);
    }
    let names: Vec<&str> = ev.domains.iter().map(|x| x.domain.as_str()).collect();
    assert_eq!(names, ["domain0", "domain1", "domain2"]);
    assert_eq!(ev.domains.iter().map(|x| x.rows).sum::<usize>(), sp.test.len());
    for dom in &ev.domains {
        assert_eq!(dom.tasks.len(), 2);
        assert!(dom.rows > 0 && dom.tasks.iter().all(|c| c.metrics.logloss.is_some()));
        // STAR has no gates.
        assert!(dom.utilisation.is_empty());
    }
    let report = mtrec_train::Report {
        arch: "star".into(),
        parameters: m.params().parameter_count(),
        tasks: d.tasks.clone(),
        rows: mtrec_train::SplitRows {
            train: sp.train.len(),
            valid: sp.valid.len(),
            test: sp.test.len(),
        },
        train: ev.clone(),
        valid: ev.clone(),
        test: ev,
        outcome: out,
        task_outcomes: Vec::new(),
    };
    let text = report.render();
    assert!(
        text.contains("test metrics per domain") && text.contains("domain2"),
        "{text}"
    );
}

#[test]
fn auxiliary_network_starts_alive_for_every_seed() {
    // The auxiliary network reads only the domain embedding: if every hidden
    // ReLU starts dead for every domain, no gradient ever reaches the
    // embedding or the hidden layer and `s_a` stays one constant. With the
    // default sizes (3 domains, embedding 8, one hidden layer of 8) no seed
    // of 1..=300 may start that way, and `s_a` must differ between domains.
    for seed in 1..=300u64 {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(&store, seed, &dev());
        let aux = mtrec_star::AuxNet::new(&pb.pp("aux"), 3, 8, &[8]).unwrap();
        let hidden = rows2(&aux.hidden_per_domain().unwrap());
        let alive = hidden.iter().flatten().filter(|&&h| h > 0.0).count();
        assert!(
            alive > 0,
            "seed {seed}: every hidden unit of the auxiliary network starts dead"
        );
        let s_a: Vec<f32> = rows2(&aux.per_domain().unwrap()).into_iter().flatten().collect();
        assert!(
            s_a.iter().any(|&v| (v - s_a[0]).abs() > 1e-6),
            "seed {seed}: s_a {s_a:?} is the same for every domain"
        );
    }
}

#[test]
fn fused_partitioned_norm_matches_candle_ops_values_gradients_and_moving_averages() {
    use mtrec_core::ops::with_fused;
    // 3 domains of 5, 1 and 0 rows among 6; width 7; non-trivial per-domain
    // scale and shift. The same layer (same parameters) runs on both paths.
    let (pn, store) = layer("partitioned-norm", NodeSpec::new("n", "partitioned-norm"), 7, 3);
    let wave = |n: usize, a: f32, b: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * a + b).sin() * 1.5).collect() };
    set(
        &store,
        "n.gamma",
        &wave(7, 0.7, 0.3).iter().map(|v| 1.0 + v / 3.0).collect::<Vec<_>>(),
    );
    set(&store, "n.beta", &wave(7, 1.1, 0.2));
    set(
        &store,
        "n.domain_gamma",
        &wave(21, 0.37, 1.0).iter().map(|v| 1.0 + v / 2.0).collect::<Vec<_>>(),
    );
    set(&store, "n.domain_beta", &wave(21, 0.53, 0.4));
    let ids = vec![0u32, 0, 1, 0, 0, 0];
    let doms = Domains::new(ids, 3, &dev()).unwrap();
    let x0: Vec<f32> = wave(42, 0.91, 0.1)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + i as f32 / 10.0))
        .collect();
    let names = ["n.gamma", "n.beta", "n.domain_gamma", "n.domain_beta"];
    let moving = ["n.moving_mean", "n.moving_var"];
    let m0: Vec<Vec<f32>> = moving.iter().map(|n| values(&store, n)).collect();

    let run = |fused: bool| {
        for (n, v) in moving.iter().zip(&m0) {
            set(&store, n, v);
        }
        with_fused(fused, || {
            let x = Var::from_vec(x0.clone(), (6, 7), &dev()).unwrap();
            let y = pn
                .forward(x.as_tensor(), &ForwardCtx::train().with_domains(Some(&doms)))
                .unwrap();
            // A loss that weighs every output differently.
            let wts = Tensor::from_vec(wave(42, 0.29, 0.7), (6, 7), &dev()).unwrap();
            let grads = (y.clone() * wts).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            out.push(
                grads
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            );
            for n in names {
                out.push(
                    grads
                        .get(var(&store, n).as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap(),
                );
            }
            out.extend(moving.iter().map(|n| values(&store, n)));
            let xe = Tensor::from_vec(x0.clone(), (6, 7), &dev()).unwrap();
            let ye = pn.forward(&xe, &ForwardCtx::eval().with_domains(Some(&doms))).unwrap();
            out.push(ye.flatten_all().unwrap().to_vec1().unwrap());
            out
        })
    };
    let (fused, plain) = (run(true), run(false));
    let what = [
        "train output",
        "dx",
        "d gamma",
        "d beta",
        "d domain_gamma",
        "d domain_beta",
        "moving mean",
        "moving var",
        "eval output",
    ];
    for ((f, p), what) in fused.iter().zip(&plain).zip(what) {
        assert_eq!(f.len(), p.len(), "{what}");
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (a, b)) in f.iter().zip(p).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale, "{what}[{i}]: fused {a} vs plain {b}");
        }
    }
    // Not vacuous: the gradients are not all zero, and domain 2 (no rows) got none.
    assert!(fused[1].iter().any(|v| v.abs() > 1e-3));
    assert!(fused[4][14..].iter().all(|&v| v == 0.0) && fused[4][..7].iter().any(|v| v.abs() > 1e-3));
}

// ---- STAR against STAR with its per-domain weights frozen --------------

/// Trains `m` with Adam on `sp.train` in seeded batches, the variables for
/// which `frozen(name)` holds left out of the optimizer (never updated:
/// no weight decay either), and returns the test AUC of each task.
fn fit_frozen(m: &Model, d: &Dataset, sp: &mtrec_data::Split, frozen: fn(&str) -> bool, epochs: usize) -> Vec<f64> {
    let vars: Vec<(String, Var)> = m.params().vars().into_iter().filter(|(n, _)| !frozen(n)).collect();
    let adam = mtrec_train::AdamConfig {
        lr: 3e-3,
        ..Default::default()
    };
    let mut opt =
        mtrec_train::Optimizer::over(vars, m.params().tables(), adam, &Default::default(), &BTreeMap::new()).unwrap();
    for epoch in 0..epochs {
        let order: Vec<usize> = mtrec_data::shuffled(sp.train.len(), 100 + epoch as u64)
            .into_iter()
            .map(|i| sp.train[i])
            .collect();
        for rows in order.chunks(128) {
            train_step(m, &mut opt, &d.batch(rows, &dev()).unwrap(), &[1.0, 1.0], None).unwrap();
        }
    }
    let ev = evaluate(m, d, &sp.test, 4096).unwrap();
    ev.tasks.iter().map(|t| t.metrics.auc.unwrap()).collect()
}

/// The star-topology weights: `W_p` and `b_p` of the FCN and the towers.
fn star_topology(name: &str) -> bool {
    name.ends_with("domain_weight") || name.ends_with("domain_bias")
}

/// On strongly shifted domains of similar sizes (each domain's labels mostly
/// its own function; no domain field in the input), STAR with its `W_p`,
/// `b_p` trained beats the same model, same seed and batches, with them
/// frozen at their initial ones and zeros (the shared network, with PN's
/// per-domain scale/shift and the auxiliary network still trained). Would
/// fail if `W_p` / `b_p` did not reach the domains' rows or were not
/// per-domain.
#[test]
fn star_beats_star_with_frozen_per_domain_weights_on_shifted_domains() {
    let d = MultiDomainSynthetic {
        rows: 4000,
        seed: 11,
        history: 0,
        domain_shift: 0.9,
        domain_shares: vec![0.4, 0.3, 0.3],
        domain_feature: false,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let sp = split(d.rows(), [0.7, 0.1, 0.2], 11).unwrap();
    let full = star(&d, 5);
    let auc_full = fit_frozen(&full, &d, &sp, |_| false, 4);
    let frozen = star(&d, 5);
    let auc_frozen = fit_frozen(&frozen, &d, &sp, star_topology, 4);
    // The frozen ones stayed at ones and zeros; the trained ones moved.
    let (snap_frozen, snap_full) = (snapshot(&frozen), snapshot(&full));
    for (name, v) in snap_frozen.iter().filter(|(n, _)| star_topology(n)) {
        let init = if name.ends_with("domain_weight") { 1.0 } else { 0.0 };
        assert!(v.iter().all(|&x| x == init), "`{name}` moved while frozen");
        assert!(snap_full[name].iter().any(|&x| x != init), "`{name}` never trained");
    }
    eprintln!("test AUC: STAR {auc_full:?}, W_p/b_p frozen {auc_frozen:?}");
    // Measured: STAR 0.736 / 0.753, frozen 0.691 / 0.722 (mean margin
    // 0.038). Data and model seeds 12..=16 gave mean margins 0.020 to 0.042,
    // every task better. Asserted: every task better, mean margin > 0.015.
    let margin = (auc_full[0] - auc_frozen[0] + auc_full[1] - auc_frozen[1]) / 2.0;
    assert!(
        (0..2).all(|t| auc_full[t] > auc_frozen[t]) && margin > 0.015,
        "STAR {auc_full:?} vs frozen {auc_frozen:?}: mean margin {margin}"
    );
}
