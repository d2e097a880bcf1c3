//! The `pepnet` template: its graph, gradients to every weight (ablations
//! included), batch size 1, configuration errors naming their key, and
//! PEPNet against Shared-Bottom with the domain as a feature. The equations
//! by hand: `tests/components.rs`.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use mtrec_core::{registry, GraphEnv, GraphSpec, Model};
use mtrec_data::{Batch, Dataset, MultiDomainSynthetic};
use mtrec_train::check::unchanged_after_one_step;

fn data(rows: usize) -> Dataset {
    MultiDomainSynthetic {
        rows,
        history: 0,
        domain_shares: vec![0.5, 0.3, 0.2],
        seed: 5,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn params(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn env_for(data: &Dataset, params: &toml::Table) -> (GraphEnv, mtrec_core::FeatureSpec) {
    mtrec_pepnet::link();
    let arch = registry::architecture("pepnet").unwrap();
    let mut features = data.features(4);
    features.side = arch.side_features(params).unwrap();
    let env = GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: data.domains.as_ref().map_or(0, |d| d.names.len()),
        features: features.clone(),
    };
    (env, features)
}

fn expand(data: &Dataset, params: &toml::Table) -> mtrec_core::Result<GraphSpec> {
    let (env, _) = env_for(data, params);
    registry::architecture("pepnet").unwrap().expand(params, &env)
}

fn build(data: &Dataset, params: &toml::Table, seed: u64) -> Model {
    let (env, features) = env_for(data, params);
    let graph = registry::architecture("pepnet").unwrap().expand(params, &env).unwrap();
    Model::build(&graph, &features, &data.tasks, env.domains, seed, &Device::Cpu).unwrap()
}

fn batch(data: &Dataset, rows: usize) -> Batch {
    let rows: Vec<usize> = (0..rows).collect();
    data.batch(&rows, &Device::Cpu).unwrap()
}

#[test]
fn the_graph_is_epnet_ppnet_gates_and_one_personalised_tower_per_task() {
    let d = data(200);
    let g = expand(&d, &toml::Table::new()).unwrap();
    let nodes: Vec<(&str, &str, &[String])> = g
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.kind.as_str(), n.inputs.as_slice()))
        .collect();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[0], ("epnet", "epnet", names(&["input"]).as_slice()));
    assert_eq!(nodes[1], ("ppnet-gates", "ppnet-gates", names(&["epnet"]).as_slice()));
    for (t, task) in d.tasks.iter().enumerate() {
        let n = &g.nodes[2 + t];
        assert_eq!(
            (n.kind.as_str(), n.task.as_deref()),
            ("ppnet-tower", Some(task.name.as_str()))
        );
        assert_eq!(n.params.get("slot").and_then(|v| v.as_integer()), Some(t as i64));
    }
    // Ablations: without PPNet the towers are plain MLP towers over EPNet;
    // without EPNet the gates read the input.
    let g = expand(&d, &params("ppnet = false")).unwrap();
    assert_eq!(
        g.nodes.iter().map(|n| n.kind.as_str()).collect::<Vec<_>>(),
        ["epnet", "mlp-tower", "mlp-tower"]
    );
    let g = expand(&d, &params("epnet = false")).unwrap();
    assert_eq!(g.nodes[0].kind, "ppnet-gates");
    assert_eq!(g.nodes[0].inputs, ["input"]);
}

/// One optimizer step changes every trainable variable: EPNet's domain
/// table and gate, every layer's Gate NU, every tower layer, the prior
/// fields' and the domain feature's embedding rows.
#[test]
fn gradients_reach_every_variable_with_and_without_each_half() {
    let d = data(256);
    let b = batch(&d, 256);
    for text in [
        "",
        "domain_features = [\"domain\"]\nprior = [\"user_id\", \"item_id\", \"item_category\"]",
        "epnet = false",
        "ppnet = false",
        "tower_units = []",
    ] {
        let m = build(&d, &params(text), 1);
        let unchanged = unchanged_after_one_step(&m, &b).unwrap();
        assert!(
            unchanged.is_empty(),
            "[{text}]: unchanged after one step: {unchanged:?}"
        );
    }
}

#[test]
fn one_row_batches_work_and_outputs_are_finite() {
    let d = data(64);
    let m = build(&d, &toml::Table::new(), 2);
    for rows in [1, 64] {
        let out = m.forward(&batch(&d, rows).inputs, true).unwrap();
        assert_eq!(out.outputs.len(), 2);
        for o in &out.outputs {
            assert_eq!(o.dims(), &[rows]);
            assert!(o.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn bad_values_are_errors_naming_the_key() {
    let d = data(64);
    let err = |text: &str| expand(&d, &params(text)).unwrap_err().to_string();
    let e = err("prior = [\"user\"]");
    assert!(
        e.contains("prior") && e.contains("`user`") && e.contains("user_id"),
        "{e}"
    );
    let e = err("prior = []");
    assert!(e.contains("prior") && e.contains("ppnet = false"), "{e}");
    let e = err("domain_features = [\"nope\"]");
    assert!(e.contains("domain_features") && e.contains("`nope`"), "{e}");
    let e = err("domain_features = [\"user_id\"]");
    assert!(e.contains("domain_features") && e.contains("prior"), "{e}");
    let e = err("epnet = false\ndomain_features = [\"domain\"]");
    assert!(e.contains("domain_features") && e.contains("epnet = false"), "{e}");
    let e = err("epnet = false\nppnet = false");
    assert!(e.contains("epnet") && e.contains("shared-bottom"), "{e}");
    let e = err("gamma = 0.0");
    assert!(e.contains("gamma"), "{e}");
    let e = err("gate_hidden = 0");
    assert!(e.contains("gate_hidden"), "{e}");
    let e = err("domain_dim = 0");
    assert!(e.contains("domain_dim"), "{e}");
    let e = err("tower_units = [4, 0]");
    assert!(e.contains("tower_units"), "{e}");
    let arch = registry::architecture("pepnet").unwrap();
    let e = arch.parse(&params("tower_unit = [4]")).err().unwrap().to_string();
    assert!(e.contains("tower_unit") && e.contains("unknown field"), "{e}");
    let e = arch.parse(&params("gamma = \"two\"")).err().unwrap().to_string();
    assert!(e.contains("gamma") && e.contains("gamma = 2.0"), "{e}");

    let no_domains = MultiDomainSynthetic {
        rows: 64,
        domains: 1,
        domain_shares: vec![1.0],
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let mut plain = no_domains.clone();
    plain.domains = None;
    let e = expand(&plain, &toml::Table::new()).unwrap_err().to_string();
    assert!(e.contains("domain") && e.contains("epnet = false"), "{e}");
    assert!(expand(&plain, &params("epnet = false")).is_ok());
}

// ---- PEPNet against Shared-Bottom with the domain as a feature ----------

/// Shared-Bottom's graph (`plugins/shared-bottom`'s expansion: one bottom
/// MLP, one `mlp-tower` per task), written with the core kinds so that this
/// crate need not depend on the plugin.
fn shared_bottom_graph(tasks: &[mtrec_core::TaskInfo]) -> GraphSpec {
    use mtrec_core::components::mlp::{MlpKind, MlpParams};
    let bottom = MlpParams {
        units: vec![32],
        ..Default::default()
    };
    let mut nodes = vec![mtrec_core::NodeSpec::of("bottom", &MlpKind, &bottom).input(mtrec_core::INPUT)];
    nodes.extend(mtrec_core::protocol::towers(tasks, &[16, 8], |_| "bottom".to_string()));
    GraphSpec { nodes }
}

/// Trains `m` on `sp.train` and returns the test AUC of each task.
fn fit(m: &Model, d: &Dataset, sp: &mtrec_data::Split) -> Vec<f64> {
    let cfg = mtrec_train::TrainConfig {
        epochs: 4,
        batch_size: 128,
        lr: 3e-3,
        patience: 0,
        ..Default::default()
    };
    mtrec_train::train(m, d, sp, &cfg, |_| {}).unwrap();
    let ev = mtrec_train::evaluate(m, d, &sp.test, 4096).unwrap();
    ev.tasks.iter().map(|t| t.metrics.auc.unwrap()).collect()
}

fn compare(seed: u64) -> (Vec<f64>, Vec<f64>) {
    let d = MultiDomainSynthetic {
        rows: 4000,
        history: 0,
        domain_shares: vec![0.4, 0.3, 0.3],
        domain_shift: 0.9,
        domain_feature: false,
        seed,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let sp = mtrec_data::split(d.rows(), [0.7, 0.1, 0.2], seed).unwrap();
    // Both read the same input: the fields, the dense features and an
    // embedding of the domain (the runner's `domain_as_feature`).
    let mut features = d.features(4);
    features.domain = Some(mtrec_core::DomainEmbedding { count: 3, dim: 4 });
    let (env, _) = env_for(&d, &toml::Table::new());
    let env = GraphEnv {
        input_width: features.width(),
        features: features.clone(),
        ..env
    };
    let graph = registry::architecture("pepnet")
        .unwrap()
        .expand(&toml::Table::new(), &env)
        .unwrap();
    let pep = Model::build(&graph, &features, &d.tasks, 3, 3, &Device::Cpu).unwrap();
    let auc_pep = fit(&pep, &d, &sp);
    let sb = Model::build(&shared_bottom_graph(&d.tasks), &features, &d.tasks, 3, 3, &Device::Cpu).unwrap();
    let auc_sb = fit(&sb, &d, &sp);
    (auc_pep, auc_sb)
}

/// On strongly shifted domains, PEPNet learns both tasks and keeps level
/// with Shared-Bottom reading the same input (fields, dense features and a
/// domain embedding): same data, split, seed and training.
///
/// Measured (4000 rows, 4 epochs, data seeds 13 to 18, mean margin over the
/// two tasks, PEPNet minus Shared-Bottom): +0.031, +0.004, +0.004, -0.004,
/// -0.012, +0.006; with 10,000 rows: +0.022, +0.001, -0.005, +0.012, +0.001,
/// +0.002. PEPNet does not reliably beat Shared-Bottom on this data, so
/// the test asserts learning and parity, not a win. Without the domain
/// embedding in PEPNet's input (the domain only in EPNet's gate) it lost by
/// 0.03 to 0.08 on every seed: the data's domain bias is additive, which
/// column factors cannot express.
#[test]
fn pepnet_learns_and_keeps_level_with_shared_bottom_on_the_same_input() {
    let (pep, sb) = compare(14);
    eprintln!("test AUC: PEPNet {pep:?}, Shared-Bottom + domain feature {sb:?}");
    // Seed 14 measured: PEPNet 0.704 / 0.800, Shared-Bottom 0.696 / 0.799.
    let margin = (pep[0] - sb[0] + pep[1] - sb[1]) / 2.0;
    assert!(
        pep.iter().all(|&a| a > 0.68) && margin > -0.02,
        "PEPNet {pep:?} vs Shared-Bottom {sb:?}: mean margin {margin}"
    );
}
