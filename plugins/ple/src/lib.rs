//! PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel
//! Multi-Task Learning (MTL) Model for Personalized Recommendations",
//! RecSys 2020), and the extraction layers CGC is made of.
//!
//! Notation: `x` the model input, `K` tasks, `L = levels` extraction layers,
//! `m_k = specific_experts` per task, `m_s = shared_experts`.
//! At layer `j` (`1..=L`), with `a_{k,j-1}` what task k's branch reads and
//! `a_{s,j-1}` what the shared branch reads (`a_{k,0} = a_{s,0} = x`):
//!
//! - task k's experts `E_{k,j}`: a bank of `m_k` MLP experts (ReLU) over
//!   `a_{k,j-1}`; the shared experts `E_{s,j}`: a bank of `m_s` over `a_{s,j-1}`;
//! - task k's gate (`W_{k,j}` in `R^{(m_k + m_s) x d}`, linear, no bias):
//!   `g_{k,j} = softmax(W_{k,j} a_{k,j-1})^T [E_{k,j}; E_{s,j}]`;
//! - on every layer but the last, the shared gate over ALL experts of the layer:
//!   `g_{s,j} = softmax(W_{s,j} a_{s,j-1})^T [E_{1,j}; ...; E_{K,j}; E_{s,j}]`,
//!   `W_{s,j}` in `R^{(K m_k + m_s) x d}`;
//! - the next layer's inputs, `next_input = "paper"` (the default, the paper's
//!   routing): `a_{k,j} = g_{k,j}`, `a_{s,j} = g_{s,j}` (experts AND gates of
//!   layer `j+1` read the previous layer's gate outputs, never the raw input:
//!   reading `x` at every layer is a known bug of public code);
//!   `next_input = "concat" | "sum" | "product" | "concat-sum-product"` (the
//!   seed note's variant): every expert and gate of layer `j+1` reads one
//!   fusion `a_{k,j} = a_{s,j} = fuse(g_{1,j}, ..., g_{K,j}, g_{s,j})`;
//! - the last layer has only the K task gates; tower k gives
//!   `y_k = t_k(g_{k,L})`.
//!
//! CGC is this with `L = 1` (no shared gate); the `mtrec-cgc` crate calls
//! [`expand_ple`]. The graph uses only core component kinds: `mlp-experts`
//! banks, `softmax-gate` nodes listing the banks they mix, fusions and
//! `mlp-tower`s. Node ids (they name the gates in expert-utilisation
//! reports): `l<j>-experts-<task>`, `l<j>-experts-shared`, `l<j>-gate-<task>`,
//! `l<j>-gate-shared`, `l<j>-input` (a fusion feeding layer `j`), `tower-<task>`.
//!
//! Choices where the paper leaves room:
//! - one `m_k` for every task (the paper allows one per task);
//! - every expert of every layer has the same layers `expert_units` (gates
//!   mix experts of one width);
//! - `m_k = 0` (no task-specific experts) or `m_s = 0` (no shared experts)
//!   is allowed, not both; with `m_s = 0` and the paper's routing the
//!   shared gate is left out, since nothing would read it;
//! - defaults: two layers and towers `[256, 128, 64]` (the paper's setup);
//!   2 specific and 2 shared experts of one 16-unit layer (the paper tunes
//!   expert counts and does not fix expert widths for its public data; 16
//!   units are the MMoE paper's experts, so that the two compare).

use mtrec_core::components::experts::{MlpExpertsKind, MlpExpertsParams};
use mtrec_core::components::fusion::{FusionKind, FusionOp, NoParams};
use mtrec_core::components::gate::{SoftmaxGateKind, SoftmaxGateParams};
use mtrec_core::protocol::towers;
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

/// The owner name of the shared experts and the shared gate in node ids.
pub const SHARED: &str = "shared";

/// What the experts and gates of layer `j + 1` read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextInput {
    /// The paper: task k's branch reads task k's gate output, the shared
    /// branch the shared gate's output.
    #[default]
    Paper,
    /// One fusion of all gate outputs of the previous layer, read by all.
    Concat,
    Sum,
    Product,
    ConcatSumProduct,
}

impl NextInput {
    /// The core fusion of a fusion choice; `None` for the paper's routing.
    pub fn fusion(self) -> Option<FusionOp> {
        match self {
            NextInput::Paper => None,
            NextInput::Concat => Some(FusionOp::Concat),
            NextInput::Sum => Some(FusionOp::Sum),
            NextInput::Product => Some(FusionOp::Product),
            NextInput::ConcatSumProduct => Some(FusionOp::ConcatSumProduct),
        }
    }
}

/// PLE's parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PleParams {
    /// Number of extraction layers `L` (1 is CGC).
    pub levels: usize,
    /// Task-specific experts per task and layer, `m_k`.
    pub specific_experts: usize,
    /// Shared experts per layer, `m_s`.
    pub shared_experts: usize,
    /// Layer widths of every expert, e.g. `[16]`.
    pub expert_units: Vec<usize>,
    /// Hidden layer widths of every tower.
    pub tower_units: Vec<usize>,
    /// A bias in the gates' linear maps (the paper has none).
    pub gate_bias: bool,
    /// What layer `j + 1` reads: `paper` or a fusion of all gate outputs.
    pub next_input: NextInput,
}

impl Default for PleParams {
    fn default() -> Self {
        Self {
            levels: 2,
            specific_experts: 2,
            shared_experts: 2,
            expert_units: vec![16],
            tower_units: vec![256, 128, 64],
            gate_bias: false,
            next_input: NextInput::Paper,
        }
    }
}

/// `l<level>-experts-<owner>`: task `owner`'s experts (or the shared ones,
/// owner [`SHARED`]) of extraction layer `level` (from 1).
pub fn experts_id(level: usize, owner: &str) -> String {
    format!("l{level}-experts-{owner}")
}

/// `l<level>-gate-<owner>`: task `owner`'s gate (or the shared gate).
pub fn gate_id(level: usize, owner: &str) -> String {
    format!("l{level}-gate-{owner}")
}

/// `l<level>-input`: the fusion every node of layer `level` reads, when
/// `next_input` is a fusion.
pub fn input_id(level: usize) -> String {
    format!("l{level}-input")
}

fn check(arch: &str, p: &PleParams, env: &GraphEnv) -> Result<()> {
    let bad = |key: &str, message: &str| Err(Error::arch_param(arch, key, message));
    if p.levels == 0 {
        return bad("levels", "`levels` must be at least 1 (one extraction layer is CGC)");
    }
    if p.specific_experts == 0 && p.shared_experts == 0 {
        return bad(
            "shared_experts",
            "`specific_experts` and `shared_experts` are both 0: the gates would mix no expert; \
             give at least one of them a count >= 1",
        );
    }
    if p.expert_units.is_empty() {
        return bad(
            "expert_units",
            "`expert_units` must list at least one layer width, e.g. [16]",
        );
    }
    for (key, units) in [("expert_units", &p.expert_units), ("tower_units", &p.tower_units)] {
        if units.contains(&0) {
            return bad(key, &format!("a layer width of 0 in `{key}` = {units:?}"));
        }
    }
    if env.tasks.iter().any(|t| t.name == SHARED) {
        return Err(Error::GraphWide(format!(
            "architecture `{arch}`: a task is named `{SHARED}`, which the shared experts' and shared gate's \
             node ids use; rename the task"
        )));
    }
    Ok(())
}

/// Expands PLE (CGC when `p.levels == 1`) into a graph of core components;
/// `arch` names the template in error messages.
pub fn expand_ple(arch: &str, p: &PleParams, env: &GraphEnv) -> Result<GraphSpec> {
    check(arch, p, env)?;
    let tasks: Vec<&str> = env.tasks.iter().map(|t| t.name.as_str()).collect();
    let fusion = p.next_input.fusion();
    let bank = |id: String, input: &str, count: usize| {
        let params = MlpExpertsParams {
            count,
            units: p.expert_units.clone(),
            ..Default::default()
        };
        NodeSpec::of(id, &MlpExpertsKind, &params).input(input)
    };
    let gate_params = SoftmaxGateParams { bias: p.gate_bias };
    let gate = |id: String, input: &str, banks: Vec<String>| {
        NodeSpec::of(id, &SoftmaxGateKind, &gate_params)
            .input(input)
            .experts(banks)
    };
    let mut nodes = Vec::new();
    // What each task's branch and the shared branch read at the current layer.
    let mut task_in: Vec<String> = vec![INPUT.to_string(); tasks.len()];
    let mut shared_in = INPUT.to_string();
    for j in 1..=p.levels {
        let last = j == p.levels;
        let specific = p.specific_experts > 0;
        let shared = p.shared_experts > 0;
        if specific {
            for (t, input) in tasks.iter().zip(&task_in) {
                nodes.push(bank(experts_id(j, t), input, p.specific_experts));
            }
        }
        if shared {
            nodes.push(bank(experts_id(j, SHARED), &shared_in, p.shared_experts));
        }
        for (t, input) in tasks.iter().zip(&task_in) {
            let mut banks = Vec::new();
            if specific {
                banks.push(experts_id(j, t));
            }
            if shared {
                banks.push(experts_id(j, SHARED));
            }
            nodes.push(gate(gate_id(j, t), input, banks));
        }
        if last {
            break;
        }
        // With the paper's routing and no shared experts, nothing would read
        // the shared gate.
        let shared_gate = shared || fusion.is_some();
        if shared_gate {
            let mut banks: Vec<String> = Vec::new();
            if specific {
                banks.extend(tasks.iter().map(|t| experts_id(j, t)));
            }
            if shared {
                banks.push(experts_id(j, SHARED));
            }
            nodes.push(gate(gate_id(j, SHARED), &shared_in, banks));
        }
        match fusion {
            None => {
                task_in = tasks.iter().map(|t| gate_id(j, t)).collect();
                shared_in = gate_id(j, SHARED);
            }
            Some(op) => {
                let id = input_id(j + 1);
                let mut gates: Vec<String> = tasks.iter().map(|t| gate_id(j, t)).collect();
                gates.push(gate_id(j, SHARED));
                nodes.push(NodeSpec::of(&id, &FusionKind(op), &NoParams {}).inputs(gates));
                task_in = vec![id.clone(); tasks.len()];
                shared_in = id;
            }
        }
    }
    let last = p.levels;
    nodes.extend(towers(&env.tasks, &p.tower_units, |t| gate_id(last, &t.name)));
    Ok(GraphSpec { nodes })
}

pub struct Ple;

impl Template for Ple {
    const NAME: &'static str = "ple";
    const SUMMARY: &'static str = "Progressive Layered Extraction (RecSys'20): stacked CGC layers of task-specific and shared experts, progressive routing";
    type Params = PleParams;
    fn expand(&self, p: &PleParams, env: &GraphEnv) -> Result<GraphSpec> {
        expand_ple(Self::NAME, p, env)
    }
}

mtrec_core::register_template!(Ple);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
