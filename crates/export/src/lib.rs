//! `mtrec export --format onnx`: a trained model as an ONNX graph.
//!
//! The graph is written from the validated model graph (the model's
//! `GraphSpec` checked again by `mtrec_core::graph::validate`, the same
//! typed parameters and evaluation order as `Model::build`) and the model's
//! weights: the input layer ([`features`]), then every node in evaluation
//! order, each component kind mapped to ONNX ops ([`kinds`], STAR's in
//! [`star`], SAR-Net's in [`sar_net`], PEPNet's in [`pepnet`], AdaSparse's
//! in [`adasparse`], AITM's in [`aitm`]), the weights as initializers under
//! their mtrec names. Objective-term nodes (AITM's `funnel-calibrator`:
//! training penalties that feed no tower) have nothing to export and are
//! skipped.
//!
//! **Inputs** are the encoded tensors the fitted preprocessing produces
//! (`preprocess.json`, written beside the model as it is), each with a
//! dynamic batch dimension `batch`: [`SPARSE`] `[B, F]` int64 ids, [`DENSE`]
//! `[B, N]` float, per sequence `sequence.<name>.ids` `[B, L]` int64 and
//! `sequence.<name>.lengths` `[B]` int64, and [`DOMAIN`] `[B]` int64 where
//! the data has domains; each only where the model has it.
//!
//! **Outputs**: one `[B]` float per task, named after the task, in task
//! order: the probability `sigmoid(logit)` for binary tasks (what `mtrec
//! predict` writes), the value for regression tasks.
//!
//! The graph is the evaluation-mode model: STAR's partitioned norm uses its
//! moving statistics, AdaSparse's pruners the sharpness saved in their
//! `alpha` buffer, SAR-Net-style training-only parts are absent.
//! Per-domain weights are stacked by domain and gathered per row (see
//! [`star`]). A kind without an ONNX form is an
//! [`ExportError::Unsupported`] naming the node and kind, and nothing is
//! written. ONNX IR version 8, opset 17 (ONNX Runtime 1.13 and later).

pub mod adasparse;
pub mod aitm;
pub mod builder;
pub mod error;
pub mod features;
pub mod kinds;
pub mod pepnet;
pub mod sar_net;
pub mod star;
pub mod weights;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mtrec_core::{graph, registry, GraphEnv, Model, TaskKind, INPUT};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto, OperatorSetIdProto};

use builder::{value_info, Builder, BATCH};
pub use error::{ExportError, Result};
use features::Features;
pub use features::{sequence_ids, sequence_lengths, DENSE, DOMAIN, SPARSE};
use kinds::{Ctx, NodeInputs};
use weights::Weights;

/// The ONNX IR version written (ONNX 1.10+).
pub const IR_VERSION: i64 = 8;
/// The ONNX operator set the graph uses.
pub const OPSET: i64 = 17;
/// The model file [`export`] writes.
pub const MODEL_FILE: &str = "model.onnx";
/// The preprocessing file [`export`] writes beside it.
pub const PREPROCESS_FILE: &str = "preprocess.json";

/// `model` (built for data with `domains` domains, 0 for none) as an ONNX model.
pub fn to_onnx(model: &Model, domains: usize) -> Result<ModelProto> {
    let spec = model.features();
    let env = GraphEnv {
        input_width: spec.width(),
        features: spec.clone(),
        tasks: model.tasks().to_vec(),
        domains,
    };
    let checked = graph::validate(model.graph(), &env)?;
    let features = Features::new(spec, domains)?;
    let inputs = features.inputs();
    let mut ctx = Ctx {
        b: Builder::default(),
        w: Weights::new(model.params().tensors()),
        features,
        domain: (domains > 0).then(|| DOMAIN.to_string()),
        domains,
    };
    let x = ctx.features.input(&mut ctx.b, &mut ctx.w)?;
    let mut values: HashMap<&str, String> = HashMap::from([(INPUT, x)]);
    for &i in &checked.order {
        let node = &checked.spec.nodes[i];
        if registry::component(&node.kind)?.objective_term() {
            continue;
        }
        let get = |names: &[String]| -> Result<Vec<String>> {
            names
                .iter()
                .map(|n| {
                    values.get(n.as_str()).cloned().ok_or_else(|| {
                        ExportError::Core(mtrec_core::Error::GraphWide(format!(
                            "internal: `{}` read `{n}` before it was written",
                            node.id
                        )))
                    })
                })
                .collect()
        };
        let io = NodeInputs {
            inputs: get(&node.inputs)?,
            experts: get(&node.experts)?,
        };
        let out = ctx.node(node, &io)?;
        values.insert(node.id.as_str(), out);
    }
    let mut taken: BTreeSet<String> = inputs.iter().map(|v| v.name.clone()).collect();
    taken.extend(ctx.b.initializers.iter().map(|t| t.name.clone()));
    let mut outputs = Vec::new();
    for (task, &t) in model.tasks().iter().zip(&checked.towers) {
        if !taken.insert(task.name.clone()) {
            return Err(ExportError::NameClash(task.name.clone()));
        }
        let logit = &values[checked.spec.nodes[t].id.as_str()];
        match task.kind {
            TaskKind::Binary => {
                let l = ctx.b.squeeze(logit, 1);
                ctx.b.op_to("Sigmoid", &[&l], vec![], &task.name);
            }
            TaskKind::Regression => {
                let axes = ctx.b.ints("axes", &[1], vec![1]);
                ctx.b.op_to("Squeeze", &[logit, &axes], vec![], &task.name);
            }
        }
        outputs.push(value_info(&task.name, DataType::FLOAT, &[BATCH]));
    }
    let mut g = GraphProto::new();
    g.name = "mtrec".into();
    g.node = std::mem::take(&mut ctx.b.nodes);
    g.initializer = std::mem::take(&mut ctx.b.initializers);
    g.input = inputs;
    g.output = outputs;
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.opset_import = vec![opset];
    m.producer_name = "mtrec".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    m.graph = Some(g).into();
    Ok(m)
}

/// [`to_onnx`] as protobuf bytes.
pub fn to_bytes(model: &Model, domains: usize) -> Result<Vec<u8>> {
    to_onnx(model, domains)?
        .write_to_bytes()
        .map_err(|e| ExportError::Encode(e.to_string()))
}

/// Writes `out/model.onnx` and a copy of `preprocess` (the run folder's
/// `preprocess.json`, byte for byte) as `out/preprocess.json`, each
/// atomically; the model is encoded before anything is written, so an
/// unsupported kind leaves `out` untouched. Returns the model's path.
pub fn export(model: &Model, domains: usize, preprocess: &Path, out: &Path) -> Result<PathBuf> {
    let bytes = to_bytes(model, domains)?;
    let pre = std::fs::read(preprocess).map_err(|source| ExportError::Io {
        path: preprocess.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let path = out.join(MODEL_FILE);
    mtrec_core::atomic::write_bytes(&path, &bytes)?;
    mtrec_core::atomic::write_bytes(&out.join(PREPROCESS_FILE), &pre)?;
    Ok(path)
}
