//! The written model as a protobuf: a valid ONNX `ModelProto` (read back
//! with the protobuf decoder) for every built-in architecture, with the
//! expected graph inputs (dynamic batch), one output per task, a
//! well-ordered graph (every value defined once, before it is read), every
//! weight as an initializer with its values (or folded into a per-domain
//! tensor checked against an independent f64 computation); and the errors:
//! a kind without an ONNX form, a task named like an input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use mtrec_core::{
    registry, Component, ForwardCtx, GraphEnv, GraphSpec, Kind, Layer, Model, NodeIo, NodeSpec, ParamBuilder, Port,
    Role, INPUT,
};
use mtrec_data::{Dataset, MultiDomainSynthetic};
use mtrec_export::ExportError;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::Message as _;
use onnx_protobuf::{ModelProto, TensorProto, ValueInfoProto};

fn data() -> Dataset {
    MultiDomainSynthetic {
        rows: 200,
        history: 6,
        domain_shares: vec![0.5, 0.3, 0.2],
        seed: 3,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn sar_params() -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("scenario_field".into(), "domain".into());
    t.insert("debias".into(), toml::Value::Array(vec!["x0".into()]));
    t
}

/// `arch` with its default parameters (SAR-Net: see [`sar_params`]) for `data`.
fn build(arch: &str, data: &Dataset) -> Model {
    mtrec_plugins::link();
    let params = if arch == "sar-net" {
        sar_params()
    } else {
        toml::Table::new()
    };
    let template = registry::architecture(arch).unwrap();
    let mut features = data.features(4);
    features.side = template.side_features(&params).unwrap();
    let env = env(data, &features);
    let graph = template.expand(&params, &env).unwrap();
    Model::build(&graph, &features, &data.tasks, env.domains, 1, &Device::Cpu).unwrap()
}

fn env(data: &Dataset, features: &mtrec_core::FeatureSpec) -> GraphEnv {
    GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: data.domains.as_ref().map_or(0, |d| d.names.len()),
        features: features.clone(),
    }
}

fn domains(data: &Dataset) -> usize {
    data.domains.as_ref().map_or(0, |d| d.names.len())
}

/// Element type and dims (`None`: the named batch dimension) of a graph input or output.
fn typed(v: &ValueInfoProto) -> (i32, Vec<Option<i64>>) {
    let t = v.type_.tensor_type();
    let dims = t
        .shape
        .dim
        .iter()
        .map(|d| {
            if d.has_dim_param() {
                assert_eq!(d.dim_param(), "batch", "{}", v.name);
                None
            } else {
                Some(d.dim_value())
            }
        })
        .collect();
    (t.elem_type, dims)
}

fn values(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type, DataType::FLOAT as i32, "{}", t.name);
    t.float_data.clone()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// STAR's per-domain tensors, computed here in f64 from the model's weights.
fn check_star_folding(model: &Model, inits: &BTreeMap<String, &TensorProto>) {
    let w = model.params().tensors();
    let mut checked = 0;
    for name in inits.keys() {
        if let Some(prefix) = name.strip_suffix(".domain_effective_weight") {
            let (sw, dw) = (
                host(&w[&format!("{prefix}.weight")]),
                host(&w[&format!("{prefix}.domain_weight")]),
            );
            let want: Vec<f64> = dw.iter().enumerate().map(|(i, d)| d * sw[i % sw.len()]).collect();
            assert_close(&values(inits[name]), &want, name);
            let (b, db) = (
                host(&w[&format!("{prefix}.bias")]),
                host(&w[&format!("{prefix}.domain_bias")]),
            );
            let want: Vec<f64> = db.iter().enumerate().map(|(i, d)| d + b[i % b.len()]).collect();
            assert_close(&values(inits[&format!("{prefix}.domain_effective_bias")]), &want, name);
            checked += 1;
        }
        if let Some(id) = name.strip_suffix(".eval_scale") {
            let p = |n: &str| host(&w[&format!("{id}.{n}")]);
            let (g, dg, b, db, m, v) = (
                p("gamma"),
                p("domain_gamma"),
                p("beta"),
                p("domain_beta"),
                p("moving_mean"),
                p("moving_var"),
            );
            let eps = 1e-5;
            let a: Vec<f64> = (0..dg.len())
                .map(|i| g[i % g.len()] * dg[i] / (v[i] + eps).sqrt())
                .collect();
            let c: Vec<f64> = (0..dg.len()).map(|i| b[i % b.len()] + db[i] - m[i] * a[i]).collect();
            assert_close(&values(inits[name]), &a, name);
            assert_close(&values(inits[&format!("{id}.eval_shift")]), &c, name);
            checked += 1;
        }
    }
    assert!(checked > 0, "no STAR tensor found");
}

/// Where a weight that is not an initializer went: folded into a
/// per-domain tensor (which must exist), or training-only.
fn folded(name: &str, inits: &BTreeMap<String, &TensorProto>, graph: &GraphSpec) -> bool {
    let (node, rest) = name.split_once('.').unwrap_or((name, ""));
    let kind = graph.nodes.iter().find(|n| n.id == node).map(|n| n.kind.as_str());
    let has = |n: String| inits.contains_key(&n);
    match kind {
        Some("partitioned-norm") => has(format!("{node}.eval_scale")),
        Some("star-fcn" | "star-tower") => {
            let prefix = name.rsplit_once('.').unwrap().0;
            has(format!("{prefix}.domain_effective_weight"))
        }
        // Training-only debias networks and their Fairness Coefficient
        // network, and scenario experts stacked by scenario.
        Some("sar-experts") if rest.starts_with("bias.") || rest.contains(".bias.") || rest.starts_with("fc.") => true,
        Some("sar-experts") => {
            let (_, main) = rest.split_once('.').unwrap();
            has(format!("{node}.{main}_by_scenario"))
        }
        _ => false,
    }
}

fn check_model(arch: &str, data: &Dataset) {
    let model = build(arch, data);
    let bytes = mtrec_export::to_bytes(&model, domains(data)).unwrap();
    let proto = ModelProto::parse_from_bytes(&bytes).unwrap_or_else(|e| panic!("{arch}: not an ONNX protobuf: {e}"));
    assert_eq!(proto.ir_version, mtrec_export::IR_VERSION, "{arch}");
    assert_eq!(proto.opset_import.len(), 1);
    assert_eq!(
        (proto.opset_import[0].domain.as_str(), proto.opset_import[0].version),
        ("", 17)
    );
    let g = &proto.graph;

    // Inputs: what the preprocessing produces, batch dimension named.
    let f = model.features();
    let int64 = DataType::INT64 as i32;
    let mut want = vec![
        (
            "sparse_ids".to_string(),
            (int64, vec![None, Some(f.sparse.len() as i64)]),
        ),
        (
            "dense".to_string(),
            (DataType::FLOAT as i32, vec![None, Some(f.dense.len() as i64)]),
        ),
    ];
    for q in &f.sequences {
        want.push((
            format!("sequence.{}.ids", q.name),
            (int64, vec![None, Some(q.max_len as i64)]),
        ));
        want.push((format!("sequence.{}.lengths", q.name), (int64, vec![None])));
    }
    want.push(("domain".to_string(), (int64, vec![None])));
    let got: Vec<_> = g.input.iter().map(|v| (v.name.clone(), typed(v))).collect();
    assert_eq!(got, want, "{arch}: inputs");
    assert_eq!(f.sequences.len(), 2, "the data has two behaviour sequences");

    // Outputs: one `[batch]` float per task, named after it.
    let got: Vec<_> = g.output.iter().map(|v| (v.name.clone(), typed(v))).collect();
    let want: Vec<_> = model
        .tasks()
        .iter()
        .map(|t| (t.name.clone(), (DataType::FLOAT as i32, vec![None])))
        .collect();
    assert_eq!(got, want, "{arch}: outputs");

    // Every value defined once, before it is read; every output produced.
    let mut defined: BTreeSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    for t in &g.initializer {
        assert!(defined.insert(&t.name), "{arch}: `{}` defined twice", t.name);
    }
    for n in &g.node {
        for i in &n.input {
            assert!(
                defined.contains(i.as_str()),
                "{arch}: {} reads `{i}` before it exists",
                n.name
            );
        }
        for o in &n.output {
            assert!(defined.insert(o), "{arch}: `{o}` written twice");
        }
    }
    for o in &g.output {
        assert!(
            defined.contains(o.name.as_str()),
            "{arch}: output `{}` never written",
            o.name
        );
    }

    // Weights: each as an initializer with its values, or folded.
    let inits: BTreeMap<String, &TensorProto> = g.initializer.iter().map(|t| (t.name.clone(), t)).collect();
    for (name, t) in model.params().tensors() {
        match inits.get(&name) {
            Some(p) => {
                let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
                assert_eq!(p.dims, dims, "{arch}: {name}");
                let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(values(p), want, "{arch}: {name}");
            }
            None => assert!(
                folded(&name, &inits, model.graph()),
                "{arch}: weight `{name}` is missing"
            ),
        }
    }
    if arch == "star" {
        check_star_folding(&model, &inits);
    }
}

/// Built-in architectures with a component kind that has no ONNX form yet,
/// and that kind: exporting them is an error naming it (and the node).
pub const NOT_EXPORTED: &[(&str, &str)] = &[];

#[test]
fn every_builtin_architecture_is_a_valid_onnx_model() {
    let data = data();
    let mut seen = 0;
    for arch in mtrec_plugins::BUILTIN.iter().flat_map(|p| p.architectures) {
        if let Some((_, kind)) = NOT_EXPORTED.iter().find(|(a, _)| a == arch) {
            let err = mtrec_export::to_bytes(&build(arch, &data), domains(&data))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("component kind `{kind}` cannot be expressed")),
                "{arch}: {err}"
            );
            continue;
        }
        check_model(arch, &data);
        seen += 1;
    }
    assert_eq!(seen, 11);
}

/// A layer kind with no ONNX form, as a third-party plugin could register.
struct Opaque;

impl Layer for Opaque {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> mtrec_core::Result<Tensor> {
        Ok(x.clone())
    }
}

struct OpaqueKind;

impl Kind for OpaqueKind {
    type Params = mtrec_core::components::fusion::NoParams;
    fn name(&self) -> &'static str {
        "test-opaque"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "a layer the ONNX export does not know (tests)"
    }
    fn check(&self, _p: &Self::Params, io: &NodeIo, _env: &GraphEnv) -> Result<Port, String> {
        Ok(io.inputs[0])
    }
    fn build(
        &self,
        _p: &Self::Params,
        _io: &NodeIo,
        _env: &GraphEnv,
        _pb: &ParamBuilder,
    ) -> mtrec_core::Result<Component> {
        Ok(Component::Layer(Box::new(Opaque)))
    }
}

mtrec_core::register_kind!(OpaqueKind);

#[test]
fn a_kind_without_onnx_form_is_an_error_naming_it_and_nothing_is_written() {
    mtrec_plugins::link();
    let data = data();
    let features = data.features(4);
    let mut nodes = vec![NodeSpec::new("hidden", "test-opaque").input(INPUT)];
    for t in &data.tasks {
        nodes.push(
            NodeSpec::new(format!("tower-{}", t.name), "mlp-tower")
                .input("hidden")
                .task(&t.name),
        );
    }
    let graph = GraphSpec { nodes };
    let model = Model::build(&graph, &features, &data.tasks, domains(&data), 1, &Device::Cpu).unwrap();
    let e = mtrec_export::to_bytes(&model, domains(&data)).unwrap_err();
    assert!(matches!(e, ExportError::Unsupported { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "graph node `hidden`: component kind `test-opaque` cannot be expressed in ONNX: \
         mtrec-export has no ONNX form for this kind"
    );
    let out = std::env::temp_dir().join(format!("mtrec-export-opaque-{}", std::process::id()));
    let pre = out.with_extension("json");
    std::fs::write(&pre, "{}").unwrap();
    assert!(mtrec_export::export(&model, domains(&data), &pre, &out).is_err());
    assert!(!out.exists(), "nothing is written for a model that cannot be exported");
    std::fs::remove_file(&pre).ok();
}

#[test]
fn a_task_named_like_an_input_is_refused() {
    mtrec_plugins::link();
    let mut data = data();
    data.tasks[0].name = "domain".into();
    let model = build("mmoe", &data);
    let e = mtrec_export::to_bytes(&model, domains(&data)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ONNX name `domain` would name two graph inputs or outputs: rename the task"
    );
}
