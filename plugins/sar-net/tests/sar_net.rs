//! SAR-Net: debias networks and Fairness Coefficient in training only,
//! gradients to every weight (per-scenario and FC ones included), padding
//! masked, empty histories, grouping by domain equal to per-domain batches,
//! shapes, config errors, SAR-Net against Shared-Bottom with the domain as a
//! feature, and SAR-Net with debias against SAR-Net without on data logged
//! under exposure bias. The components by
//! hand: `tests/components.rs`.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::{registry, GraphEnv, Inputs, Model, SequenceInput};
use mtrec_data::{Batch, Dataset, MultiDomainSynthetic};
use mtrec_train::check::unchanged_after_one_step;

fn data(rows: usize) -> Dataset {
    MultiDomainSynthetic {
        rows,
        history: 6,
        domain_shares: vec![0.5, 0.3, 0.2],
        seed: 5,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn params(debias: &[&str]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("scenario_field".into(), "domain".into());
    t.insert(
        "debias".into(),
        toml::Value::Array(debias.iter().map(|s| toml::Value::from(*s)).collect()),
    );
    t
}

fn env_for(data: &Dataset, params: &toml::Table) -> (GraphEnv, mtrec_core::FeatureSpec) {
    mtrec_sar_net::link();
    let arch = registry::architecture("sar-net").unwrap();
    let mut features = data.features(4);
    features.side = arch.side_features(params).unwrap();
    let env = GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: data.domains.as_ref().unwrap().names.len(),
        features: features.clone(),
    };
    (env, features)
}

fn build(data: &Dataset, params: &toml::Table, seed: u64) -> Model {
    let (env, features) = env_for(data, params);
    let graph = registry::architecture("sar-net").unwrap().expand(params, &env).unwrap();
    Model::build(&graph, &features, &data.tasks, env.domains, seed, &Device::Cpu).unwrap()
}

fn all_rows(data: &Dataset) -> Batch {
    let rows: Vec<usize> = (0..data.rows()).collect();
    data.batch(&rows, &Device::Cpu).unwrap()
}

fn outputs(model: &Model, inputs: &Inputs, train: bool) -> Vec<Vec<f32>> {
    model
        .forward(inputs, train)
        .unwrap()
        .outputs
        .iter()
        .map(|t| t.to_vec1::<f32>().unwrap())
        .collect()
}

/// `inputs` with dense column `col` shifted by `by`.
fn shift_dense(inputs: &Inputs, col: usize, by: f32) -> Inputs {
    let d = inputs.dense.as_ref().unwrap();
    let mut v = d.to_vec2::<f32>().unwrap();
    for row in &mut v {
        row[col] += by;
    }
    let n = v[0].len();
    let flat: Vec<f32> = v.into_iter().flatten().collect();
    let dense = Tensor::from_vec(flat, (inputs.rows(), n), &Device::Cpu).unwrap();
    Inputs::new(inputs.sparse.clone(), Some(dense), inputs.domains.clone())
        .unwrap()
        .with_sequences(inputs.sequences.clone())
        .unwrap()
}

#[test]
fn debias_features_change_training_outputs_only() {
    let d = data(300);
    let p = params(&["x0"]);
    let model = build(&d, &p, 1);
    let batch = all_rows(&d);
    let moved = shift_dense(&batch.inputs, 0, 3.0);
    // Eval (serving): the bias networks are dropped, x0 is read nowhere else.
    assert_eq!(outputs(&model, &batch.inputs, false), outputs(&model, &moved, false));
    // Training: the bias networks read x0.
    assert_ne!(outputs(&model, &batch.inputs, true), outputs(&model, &moved, true));
    // And x0 is not part of the model input: the input is the 4 sparse
    // fields (4 wide each) and x1..x3 (the sequences are side features too).
    let full = d.features(4).width();
    assert_eq!(model.features().width(), full - 1 - 2 * 4);
    // Another dense feature does change the eval output.
    let other = shift_dense(&batch.inputs, 1, 3.0);
    assert_ne!(outputs(&model, &batch.inputs, false), outputs(&model, &other, false));

    // The bias networks and the FC networks (one per bank) are absent from
    // evaluation: any value of their weights gives the same eval output,
    // while the training output moves.
    let (eval, train) = (
        outputs(&model, &batch.inputs, false),
        outputs(&model, &batch.inputs, true),
    );
    let debias_vars: Vec<_> = model
        .params()
        .vars()
        .into_iter()
        .filter(|(n, _)| n.contains(".bias.") || n.contains(".fc."))
        .collect();
    for bank in ["experts-shared", "experts-scenario"] {
        let fc = format!("{bank}.fc.0.weight");
        assert!(debias_vars.iter().any(|(n, _)| *n == fc), "{fc} in the model");
    }
    for (_, v) in &debias_vars {
        v.set(&(v.as_tensor().ones_like().unwrap() * 3.0).unwrap()).unwrap();
    }
    assert_eq!(outputs(&model, &batch.inputs, false), eval);
    assert_ne!(outputs(&model, &batch.inputs, true), train);
}

#[test]
fn gradients_reach_every_variable_per_scenario_ones_included() {
    let d = data(400);
    let batch = all_rows(&d);
    let ids = batch.inputs.domains.as_ref().unwrap().ids().to_vec();
    for p in 0..3u32 {
        assert!(ids.contains(&p), "domain {p} is in the batch");
    }
    for debias in [&["x0"][..], &["x0", "item_category"][..], &[][..]] {
        let model = build(&d, &params(debias), 2);
        let names: Vec<String> = model.params().vars().into_iter().map(|(n, _)| n).collect();
        for s in 0..3 {
            assert!(names
                .iter()
                .any(|n| n.starts_with(&format!("experts-scenario.scenario{s}.main"))));
            if !debias.is_empty() {
                assert!(names
                    .iter()
                    .any(|n| n.starts_with(&format!("experts-scenario.scenario{s}.bias"))));
            }
        }
        let fc = ["experts-shared.fc.0.weight", "experts-scenario.fc.1.bias"];
        for name in fc {
            assert_eq!(
                names.iter().any(|n| n == name),
                !debias.is_empty(),
                "{name} in {names:?}"
            );
        }
        for want in [
            "behaviour.item_query",
            "behaviour.scenario_query",
            "scenario-transform.scale",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let unchanged = unchanged_after_one_step(&model, &batch).unwrap();
        assert!(
            unchanged.is_empty(),
            "debias {debias:?}: unchanged after one step: {unchanged:?}"
        );
    }
}

/// The sequences of `inputs` with every padded position set to `id`.
fn repad(inputs: &Inputs, id: u32) -> Inputs {
    let seqs = inputs
        .sequences
        .iter()
        .map(|s| {
            let mut v = s.ids.to_vec2::<u32>().unwrap();
            for (row, &n) in v.iter_mut().zip(&s.lengths) {
                row[n as usize..].fill(id);
            }
            let (b, l) = (v.len(), v[0].len());
            let ids = Tensor::from_vec(v.into_iter().flatten().collect(), (b, l), &Device::Cpu).unwrap();
            SequenceInput::new(ids, s.lengths.clone()).unwrap()
        })
        .collect();
    Inputs::new(inputs.sparse.clone(), inputs.dense.clone(), inputs.domains.clone())
        .unwrap()
        .with_sequences(seqs)
        .unwrap()
}

#[test]
fn padding_changes_nothing() {
    let d = data(200);
    let model = build(&d, &params(&[]), 3);
    let batch = all_rows(&d);
    let lengths = &batch.inputs.sequences[0].lengths;
    assert!(lengths.iter().any(|&n| (n as usize) < 6), "some rows are padded");
    let base = outputs(&model, &batch.inputs, false);
    // Ids 1 and 2 are real items / scenarios (both vocabularies hold them).
    for id in [1, 2] {
        assert_eq!(
            base,
            outputs(&model, &repad(&batch.inputs, id), false),
            "padding id {id}"
        );
    }
}

#[test]
fn empty_history_is_finite_and_pools_to_zero_interest() {
    let d = data(60);
    let p = params(&[]);
    let model = build(&d, &p, 4);
    let batch = all_rows(&d);
    // Row 0 without behaviours.
    let seqs: Vec<SequenceInput> = batch
        .inputs
        .sequences
        .iter()
        .map(|s| {
            let mut v = s.ids.to_vec2::<u32>().unwrap();
            v[0].fill(0);
            let mut lengths = s.lengths.clone();
            lengths[0] = 0;
            let (b, l) = (v.len(), v[0].len());
            SequenceInput::new(
                Tensor::from_vec(v.into_iter().flatten().collect(), (b, l), &Device::Cpu).unwrap(),
                lengths,
            )
            .unwrap()
        })
        .collect();
    let inputs = Inputs::new(
        batch.inputs.sparse.clone(),
        batch.inputs.dense.clone(),
        batch.inputs.domains.clone(),
    )
    .unwrap()
    .with_sequences(seqs)
    .unwrap();
    for train in [false, true] {
        for o in outputs(&model, &inputs, train) {
            assert!(o.iter().all(|v| v.is_finite()));
        }
    }
    // The behaviour layer itself: the interest columns of row 0 are zeros.
    let (env, features) = env_for(&d, &p);
    let graph = registry::architecture("sar-net").unwrap().expand(&p, &env).unwrap();
    let node = graph.nodes.iter().find(|n| n.id == mtrec_sar_net::BEHAVIOUR).unwrap();
    let store = mtrec_core::ParamStore::new();
    let pb = mtrec_core::ParamBuilder::new(&store, 1, &Device::Cpu);
    let input = mtrec_core::features::FeatureInput::new(&features, &pb.pp("features")).unwrap();
    let io = mtrec_core::NodeIo {
        inputs: vec![mtrec_core::Port::Dense { width: env.input_width }],
        experts: vec![],
    };
    let kind = registry::component("sar-behaviour").unwrap();
    let params = kind.parse(&node.params).unwrap();
    let layer = match kind.build(&params, &io, &env, &pb.pp("b")).unwrap() {
        mtrec_core::Component::Layer(l) => l,
        _ => panic!("sar-behaviour is a layer"),
    };
    let (x, views) = input.forward_with_views(&inputs, false).unwrap();
    let ctx = mtrec_core::ForwardCtx::eval()
        .with_domains(inputs.domains.as_ref())
        .with_features(Some(&views));
    let out = layer.forward(&x, &ctx).unwrap();
    assert_eq!(out.dims(), &[60, env.input_width + 4]);
    let rows = out.to_vec2::<f32>().unwrap();
    assert_eq!(&rows[0][env.input_width..], &[0.0; 4]);
    assert!(rows[1][env.input_width..].iter().any(|&v| v != 0.0));
}

#[test]
fn one_domain_batch_equals_its_rows_in_a_mixed_batch() {
    let d = data(300);
    let model = build(&d, &params(&["x0"]), 5);
    let mixed = all_rows(&d);
    let ids = mixed.inputs.domains.as_ref().unwrap().ids().to_vec();
    let all = outputs(&model, &mixed.inputs, false);
    // `Model::forward` sorts the mixed batch by domain; the gate weights, like
    // the outputs, must come back in batch order.
    let all_gates: Vec<Vec<Vec<f32>>> = model
        .forward(&mixed.inputs, false)
        .unwrap()
        .gates
        .iter()
        .map(|g| g.weights.to_vec2().unwrap())
        .collect();
    for p in 0..3u32 {
        let rows: Vec<usize> = (0..d.rows()).filter(|&r| ids[r] == p).collect();
        let own = d.batch(&rows, &Device::Cpu).unwrap();
        for (g, gate) in model.forward(&own.inputs, false).unwrap().gates.iter().enumerate() {
            for (k, row) in gate.weights.to_vec2::<f32>().unwrap().iter().enumerate() {
                for (a, b) in row.iter().zip(&all_gates[g][rows[k]]) {
                    assert!((a - b).abs() <= 1e-5, "gate {g}, row {}: {a} vs {b}", rows[k]);
                }
            }
        }
        let alone = outputs(&model, &own.inputs, false);
        for (t, task) in alone.iter().enumerate() {
            for (k, &r) in rows.iter().enumerate() {
                assert!(
                    (task[k] - all[t][r]).abs() <= 1e-5,
                    "domain {p} row {r} task {t}: {} vs {}",
                    task[k],
                    all[t][r]
                );
            }
        }
    }
}

#[test]
fn shapes_and_gates() {
    let d = data(100);
    let model = build(&d, &params(&[]), 6);
    let out = model.forward(&all_rows(&d).inputs, false).unwrap();
    assert_eq!(out.outputs.len(), 2);
    for o in &out.outputs {
        assert_eq!(o.dims(), &[100]);
    }
    assert_eq!(out.gates.len(), 2);
    for g in &out.gates {
        // 2 shared experts, then the row's own scenario's expert.
        assert_eq!(
            g.experts,
            ["experts-shared#0", "experts-shared#1", "experts-scenario#0"]
        );
        assert_eq!(g.weights.dims(), &[100, 3]);
        for row in g.weights.to_vec2::<f32>().unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    // Per-scenario parameters: one transform row and one expert set per domain.
    let vars = model.params().tensors();
    assert_eq!(
        vars["scenario-transform.scale"].dims(),
        &[3, model.features().width() + 4]
    );
    assert!(vars.contains_key("experts-scenario.scenario2.main.0.weight"));
}

#[test]
fn bad_names_are_errors_naming_the_key() {
    let d = data(50);
    let mut p = params(&[]);
    p.insert("behaviour_items".into(), "clicks".into());
    let (env, _) = env_for(&d, &params(&[]));
    let e = registry::architecture("sar-net")
        .unwrap()
        .expand(&p, &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`behaviour_items` = \"clicks\"") && e.contains("hist_item_id"),
        "{e}"
    );
    let e = registry::architecture("sar-net")
        .unwrap()
        .expand(&params(&["nope"]), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`debias` names `nope`"), "{e}");
    let e = registry::architecture("sar-net")
        .unwrap()
        .expand(&params(&["item_id"]), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be both"), "{e}");
}

/// The balancers' shared parameters come from the graph: every scenario's
/// experts feed both tasks (through both task gates), so they are shared even
/// when a batch has no row of that scenario and gives them no gradient; the
/// towers are not shared.
#[test]
fn shared_parameters_come_from_the_structure_not_from_a_batch() {
    let d = data(400);
    let model = build(&d, &params(&["x0"]), 2);
    let shared: Vec<String> = model.shared_vars().into_iter().map(|(n, _)| n).collect();
    for s in 0..3 {
        assert!(
            shared
                .iter()
                .any(|n| n.starts_with(&format!("experts-scenario.scenario{s}.main"))),
            "scenario {s}: {shared:?}"
        );
    }
    let towers: Vec<String> = model
        .params()
        .vars()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("tower"))
        .collect();
    assert!(!towers.is_empty());
    assert!(towers.iter().all(|t| !shared.contains(t)), "{towers:?}");
    // A batch of scenario 0 only: scenario 2's experts get no gradient, which
    // is why a batch cannot decide what is shared.
    let ids = all_rows(&d).inputs.domains.unwrap().ids().to_vec();
    let rows: Vec<usize> = (0..d.rows()).filter(|&r| ids[r] == 0).collect();
    let batch = d.batch(&rows, &Device::Cpu).unwrap();
    let out = model.forward(&batch.inputs, true).unwrap();
    let grads = out.outputs[0].sum_all().unwrap().backward().unwrap();
    let (_, v) = model
        .params()
        .vars()
        .into_iter()
        .find(|(n, _)| n.starts_with("experts-scenario.scenario2.main"))
        .unwrap();
    assert!(grads.get(v.as_tensor()).is_none());
}

// ---- SAR-Net against Shared-Bottom with the domain as a feature ---------

/// Shared-Bottom's graph (`plugins/shared-bottom`'s expansion: one bottom
/// MLP, one `mlp-tower` per task), written with the core kinds so that this
/// crate need not depend on the plugin.
fn shared_bottom_graph(tasks: &[mtrec_core::TaskInfo]) -> mtrec_core::GraphSpec {
    use mtrec_core::components::mlp::{MlpKind, MlpParams};
    let bottom = MlpParams {
        units: vec![32],
        ..Default::default()
    };
    let mut nodes = vec![mtrec_core::NodeSpec::of("bottom", &MlpKind, &bottom).input(mtrec_core::INPUT)];
    nodes.extend(mtrec_core::protocol::towers(tasks, &[8], |_| "bottom".to_string()));
    mtrec_core::GraphSpec { nodes }
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

/// On strongly shifted scenarios with cross-scenario behaviour logs, SAR-Net
/// beats Shared-Bottom that sees the same input (behaviour logs mean-pooled)
/// plus an embedding of the domain (`FeatureSpec::domain`, the runner's
/// `domain_as_feature`): same data, split, seed and training.
#[test]
fn sar_net_beats_shared_bottom_with_the_domain_as_a_feature() {
    let d = MultiDomainSynthetic {
        rows: 4000,
        history: 6,
        domain_shares: vec![0.4, 0.3, 0.3],
        domain_shift: 0.9,
        domain_feature: false,
        seed: 13,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let sp = mtrec_data::split(d.rows(), [0.7, 0.1, 0.2], 13).unwrap();
    let sar = build(&d, &toml::Table::new(), 3);
    let auc_sar = fit(&sar, &d, &sp);

    let mut features = d.features(4);
    features.domain = Some(mtrec_core::DomainEmbedding { count: 3, dim: 4 });
    let sb = Model::build(&shared_bottom_graph(&d.tasks), &features, &d.tasks, 3, 3, &Device::Cpu).unwrap();
    let auc_sb = fit(&sb, &d, &sp);
    eprintln!("test AUC: SAR-Net {auc_sar:?}, Shared-Bottom + domain feature {auc_sb:?}");
    // Measured: SAR-Net 0.710 / 0.812, Shared-Bottom 0.655 / 0.779 (mean
    // margin 0.045). Data and model seeds 14..=18 gave mean margins 0.014 to
    // 0.037, every task better (the smallest task margin 0.003). Asserted:
    // every task better, mean margin > 0.01.
    let margin = (auc_sar[0] - auc_sb[0] + auc_sar[1] - auc_sb[1]) / 2.0;
    assert!(
        (0..2).all(|t| auc_sar[t] > auc_sb[t]) && margin > 0.01,
        "SAR-Net {auc_sar:?} vs Shared-Bottom {auc_sb:?}: mean margin {margin}"
    );
}

/// SAR-Net with (`debias = ["promoted"]`) and without debias (`debias = []`:
/// the `promoted` field is an ordinary input feature) on data whose training
/// and validation labels were logged under a promotion's exposure boost,
/// both tested against the unbiased labels: test AUC per task.
fn debias_against_none(seed: u64) -> (Vec<f64>, Vec<f64>) {
    let logged = MultiDomainSynthetic {
        rows: 4000,
        history: 6,
        domain_shares: vec![0.5, 0.3, 0.2],
        // 0.5 x 0.6 = 30% of the rows boosted by 3 in logit.
        exposure_bias: 3.0,
        promoted_items: 0.5,
        promotion_rate: 0.6,
        seed,
        ..MultiDomainSynthetic::default()
    }
    .generate_logged()
    .unwrap();
    let sp = mtrec_data::split(logged.data.rows(), [0.7, 0.1, 0.2], seed).unwrap();
    let d = logged.with_unbiased_rows(&sp.test).unwrap();
    let auc_with = fit(&build(&d, &params(&["promoted"]), seed), &d, &sp);
    let auc_without = fit(&build(&d, &params(&[]), seed), &d, &sp);
    (auc_with, auc_without)
}

/// Debiasing the promotion flag beats using it as a feature, against the
/// unbiased test labels: every task better, mean margin asserted below.
#[test]
fn debias_beats_no_debias_against_unbiased_labels() {
    let (with, without) = debias_against_none(21);
    eprintln!("test AUC vs unbiased labels: debias {with:?}, no debias {without:?}");
    // Measured (`debias_margins_over_seeds`, seeds 21..=25): task margins
    // 0.042 / 0.045, 0.041 / 0.035, 0.064 / 0.096, 0.085 / 0.012,
    // 0.056 / 0.052 (mean margins 0.038 to 0.080). Asserted: every task
    // better, mean margin > 0.02.
    let margin = (with[0] - without[0] + with[1] - without[1]) / 2.0;
    assert!(
        (0..2).all(|t| with[t] > without[t]) && margin > 0.02,
        "debias {with:?} vs none {without:?}: mean margin {margin}"
    );
}

/// The seed sweep behind the margin asserted above (run with `--ignored`).
#[test]
#[ignore = "a seed sweep (5 trainings of 2 models), run by hand"]
fn debias_margins_over_seeds() {
    for seed in 21..=25 {
        let (with, without) = debias_against_none(seed);
        let m: Vec<f64> = (0..2).map(|t| with[t] - without[t]).collect();
        eprintln!("seed {seed}: debias {with:?}, no debias {without:?}, margins {m:?}");
    }
}
