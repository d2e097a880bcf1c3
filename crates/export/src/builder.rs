//! An ONNX graph under construction: nodes in evaluation order, weights as
//! initializers, fresh value names.

use candle_core::{DType, Tensor};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::type_proto;
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto};

use crate::error::Result;

/// A dimension of a graph input or output: fixed, or named (the batch).
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// The name of the dynamic batch dimension of every input and output.
pub const BATCH: Dim = Dim::Named("batch");

/// A node attribute.
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
}

impl Attr {
    fn proto(self) -> AttributeProto {
        let mut a = AttributeProto::new();
        match self {
            Attr::Int(name, v) => {
                a.name = name.into();
                a.i = v;
                a.type_ = AttributeType::INT.into();
            }
            Attr::Ints(name, v) => {
                a.name = name.into();
                a.ints = v;
                a.type_ = AttributeType::INTS.into();
            }
        }
        a
    }
}

/// A graph input or output's declared type: element type and shape.
pub fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        match d {
            Dim::Fixed(n) => dim.set_dim_value(*n as i64),
            Dim::Named(p) => dim.set_dim_param((*p).into()),
        }
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

#[derive(Default)]
pub struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    counter: usize,
}

impl Builder {
    /// A value name not used before, readable in a graph viewer: `hint:n`.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}:{}", self.counter)
    }

    /// Node `op` over `inputs` writing `output`.
    pub fn op_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>, output: &str) -> String {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{op}:{}", self.nodes.len());
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.to_string()];
        n.attribute = attrs.into_iter().map(Attr::proto).collect();
        self.nodes.push(n);
        output.to_string()
    }

    /// Node `op` over `inputs`, writing a fresh value named after `hint`.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>, hint: &str) -> String {
        let out = self.fresh(hint);
        self.op_to(op, inputs, attrs, &out)
    }

    /// A float initializer named `name` holding `t` (any float dtype, stored as f32).
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String> {
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut p = TensorProto::new();
        p.name = name.into();
        p.dims = dims;
        p.data_type = DataType::FLOAT as i32;
        p.float_data = data;
        self.initializers.push(p);
        Ok(name.to_string())
    }

    /// An int64 constant (an initializer) named after `hint`.
    pub fn ints(&mut self, hint: &str, dims: &[usize], data: Vec<i64>) -> String {
        let name = self.fresh(hint);
        let mut p = TensorProto::new();
        p.name = name.clone();
        p.dims = dims.iter().map(|&d| d as i64).collect();
        p.data_type = DataType::INT64 as i32;
        p.int64_data = data;
        self.initializers.push(p);
        name
    }

    /// A float scalar constant (an initializer).
    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        let name = self.fresh(hint);
        let mut p = TensorProto::new();
        p.name = name.clone();
        p.data_type = DataType::FLOAT as i32;
        p.float_data = vec![v];
        self.initializers.push(p);
        name
    }

    /// `x` with a new axis of size 1 at `axis`.
    pub fn unsqueeze(&mut self, x: &str, axis: i64) -> String {
        let axes = self.ints("axes", &[1], vec![axis]);
        self.op("Unsqueeze", &[x, &axes], vec![], "unsqueeze")
    }

    /// `x` without its axis `axis` (of size 1).
    pub fn squeeze(&mut self, x: &str, axis: i64) -> String {
        let axes = self.ints("axes", &[1], vec![axis]);
        self.op("Squeeze", &[x, &axes], vec![], "squeeze")
    }

    /// The sum over `axis`, that axis dropped.
    pub fn reduce_sum(&mut self, x: &str, axis: i64) -> String {
        let axes = self.ints("axes", &[1], vec![axis]);
        self.op("ReduceSum", &[x, &axes], vec![Attr::Int("keepdims", 0)], "sum")
    }

    /// `len` entries of `x` along `axis` from `offset` (candle's `narrow`).
    pub fn narrow(&mut self, x: &str, axis: i64, offset: usize, len: usize) -> String {
        let starts = self.ints("starts", &[1], vec![offset as i64]);
        let ends = self.ints("ends", &[1], vec![(offset + len) as i64]);
        let axes = self.ints("axes", &[1], vec![axis]);
        self.op("Slice", &[x, &starts, &ends, &axes], vec![], "narrow")
    }

    /// Rows `index` (`[B]` int64) of `table` (`[D, ...]`): `[B, ...]`.
    pub fn gather_rows(&mut self, table: &str, index: &str) -> String {
        self.op("Gather", &[table, index], vec![Attr::Int("axis", 0)], "rows")
    }
}
