"""Runs an ONNX model with ONNX Runtime on inputs written by tests/onnx_export.rs.

usage: onnx_run.py MODEL.onnx FEEDS.json OUT.json
FEEDS.json: {input name: {"type": "int64" | "float", "shape": [...], "data": [...]}}
OUT.json:   {output name: [values, row-major]}
"""
import json
import sys

import numpy as np
import onnxruntime as ort

model, feeds_path, out_path = sys.argv[1:4]
with open(feeds_path) as f:
    feeds = json.load(f)
types = {"int64": np.int64, "float": np.float32}
inputs = {
    name: np.array(v["data"], dtype=types[v["type"]]).reshape(v["shape"])
    for name, v in feeds.items()
}
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
outputs = session.run(names, inputs)
with open(out_path, "w") as f:
    json.dump({n: [float(x) for x in o.reshape(-1)] for n, o in zip(names, outputs)}, f)
