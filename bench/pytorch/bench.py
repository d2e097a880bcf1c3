#!/usr/bin/env python3
"""PyTorch reference of mtrec's benchmark workloads (`cargo xtask bench compare`).

Reads the data file `mtrec-bench data` writes (identical rows on both sides),
builds the same model as mtrec (same shapes, same parameterisation: expert
banks as [n, in, out] weights, bias-free softmax gates, PyTorch's U(+-1/sqrt(in))
init, embeddings U(-0.05, 0.05), one table for all fields), trains it with
torch.optim.Adam (lr 1e-3; `--adam fused` for fused=True) on summed BCE-with-
logits, and measures what the Rust side measures: training samples/s over one
pass after warm-up steps, inference samples/s at the batch size, batch-1
latency median and p99, and peak RSS after training. Eager mode, float32,
`torch.set_num_threads(--threads)`. Not needed by CI or tests:
`pip install torch` (the CPU build is enough).

Each expert bank is written as few large PyTorch ops as mtrec's: the first
layer, whose input all experts share, as one [B, d] x [d, n*out] `addmm` over
the bank's weights viewed side by side; later layers as one batched matmul
(`torch.baddbmm`); the gate mix as one `einsum`. (Other formulations, e.g. a
ModuleList of nn.Linear experts, were not benchmarked.)
"""

import argparse
import json
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MAGIC = "mtrec-bench-data 1"
EMBEDDING_DIM = 16


def load(path):
    with open(path, "rb") as f:
        magic = f.readline().decode().strip()
        if magic != MAGIC:
            raise SystemExit(f"{path}: not a benchmark data file")
        header = json.loads(f.readline())
        body = bytearray(f.read())
    out = {}
    dtypes = {"int32": torch.int32, "float32": torch.float32}
    for s in header["sections"]:
        count = math.prod(s["shape"])
        t = torch.frombuffer(body, dtype=dtypes[s["dtype"]], count=count, offset=s["offset"])
        out[s["name"]] = t.view(*s["shape"])
    return header, out


def uniform(shape, bound):
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class Experts(nn.Module):
    """A bank of n MLP experts with [n, in, out] weights and [n, 1, out] biases."""

    def __init__(self, n, d_in, units):
        super().__init__()
        self.n = n
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        d = d_in
        for u in units:
            b = 1.0 / math.sqrt(d)
            self.weights.append(uniform((n, d, u), b))
            self.biases.append(uniform((n, 1, u), b))
            d = u

    def forward(self, x):  # [B, d] -> [n, B, out]
        h = None
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i == 0:
                n, d, o = w.shape
                # One matmul for the whole bank: x [B, d] @ [d, n*o].
                wide = w.permute(1, 0, 2).reshape(d, n * o)
                h = torch.relu(torch.addmm(b.reshape(1, n * o), x, wide))
                h = h.view(x.shape[0], n, o).transpose(0, 1)
            else:
                h = torch.relu(torch.baddbmm(b, h, w))
        return h


class Gate(nn.Module):
    """softmax(x W), bias-free (MMoE / PLE)."""

    def __init__(self, d_in, n):
        super().__init__()
        self.weight = uniform((d_in, n), 1.0 / math.sqrt(d_in))

    def forward(self, x):
        return torch.softmax(x @ self.weight, dim=-1)


def mix(w, banks):  # w [B, N], banks [n_j, B, d] -> [B, d]
    bank = banks[0] if len(banks) == 1 else torch.cat(banks, 0)
    return torch.einsum("bn,nbd->bd", w, bank)


def tower(d_in, units):
    layers = []
    d = d_in
    for u in units:
        layers += [nn.Linear(d, u), nn.ReLU()]
        d = u
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class Input(nn.Module):
    """One embedding table for all fields (field f owns rows f*vocab..), dense appended."""

    def __init__(self, fields, vocab):
        super().__init__()
        self.table = nn.Parameter(torch.empty(fields * vocab, EMBEDDING_DIM).uniform_(-0.05, 0.05))
        self.register_buffer("offsets", (torch.arange(fields, dtype=torch.int32) * vocab).unsqueeze(0))

    def forward(self, ids, dense):
        e = F.embedding(ids + self.offsets, self.table)
        return torch.cat([e.flatten(1), dense], 1)


class Mmoe(nn.Module):
    def __init__(self, h, experts=8, expert_units=(256, 128), tower_units=(64,)):
        super().__init__()
        d = h["fields"] * EMBEDDING_DIM + h["dense"]
        self.input = Input(h["fields"], h["vocab"])
        self.experts = Experts(experts, d, expert_units)
        self.gates = nn.ModuleList([Gate(d, experts) for _ in range(h["tasks"])])
        self.towers = nn.ModuleList([tower(expert_units[-1], tower_units) for _ in range(h["tasks"])])

    def forward(self, ids, dense, domains=None):
        x = self.input(ids, dense)
        bank = self.experts(x)
        return [t(mix(g(x), [bank])).squeeze(1) for g, t in zip(self.gates, self.towers)]


class Ple(nn.Module):
    """PLE as mtrec's `ple` template expands it (paper routing)."""

    def __init__(self, h, levels=2, specific=2, shared=2, expert_units=(256, 128), tower_units=(64,)):
        super().__init__()
        d = h["fields"] * EMBEDDING_DIM + h["dense"]
        k = h["tasks"]
        self.k, self.levels = k, levels
        self.input = Input(h["fields"], h["vocab"])
        self.task_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        width = d
        for j in range(levels):
            last = j == levels - 1
            self.task_experts.append(nn.ModuleList([Experts(specific, width, expert_units) for _ in range(k)]))
            self.shared_experts.append(Experts(shared, width, expert_units))
            self.task_gates.append(nn.ModuleList([Gate(width, specific + shared) for _ in range(k)]))
            if not last:
                self.shared_gates.append(Gate(width, k * specific + shared))
            width = expert_units[-1]
        self.towers = nn.ModuleList([tower(width, tower_units) for _ in range(k)])

    def forward(self, ids, dense, domains=None):
        x = self.input(ids, dense)
        task_in = [x] * self.k
        shared_in = x
        for j in range(self.levels):
            last = j == self.levels - 1
            own = [e(a) for e, a in zip(self.task_experts[j], task_in)]
            sh = self.shared_experts[j](shared_in)
            outs = [mix(g(a), [o, sh]) for g, a, o in zip(self.task_gates[j], task_in, own)]
            if not last:
                shared_in = mix(self.shared_gates[j](shared_in), own + [sh])
            task_in = outs
        return [t(a).squeeze(1) for t, a in zip(self.towers, task_in)]


class Groups:
    """Rows grouped by domain, as mtrec's STAR does: one index_select per
    domain present, then a concatenation and the inverse permutation."""

    def __init__(self, domains, count):
        self.parts = []
        order = []
        for p in range(count):
            idx = (domains == p).nonzero().squeeze(1)
            if idx.numel() > 0:
                self.parts.append((p, idx))
                order.append(idx)
        order = torch.cat(order)
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(order.numel())

    def map(self, x, f):
        if len(self.parts) == 1:
            return f(self.parts[0][0], x)
        outs = [f(p, x.index_select(0, idx)) for p, idx in self.parts]
        return torch.cat(outs, 0).index_select(0, self.inverse)


class StarLinear(nn.Module):
    def __init__(self, d_in, d_out, domains):
        super().__init__()
        b = 1.0 / math.sqrt(d_in)
        self.weight = uniform((d_in, d_out), b)
        self.bias = uniform((d_out,), b)
        self.domain_weight = nn.Parameter(torch.ones(domains, d_in, d_out))
        self.domain_bias = nn.Parameter(torch.zeros(domains, d_out))

    def forward(self, x, p):
        return x @ (self.weight * self.domain_weight[p]) + (self.bias + self.domain_bias[p])


class PartitionedNorm(nn.Module):
    def __init__(self, width, domains, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width))
        self.domain_gamma = nn.Parameter(torch.ones(domains, width))
        self.domain_beta = nn.Parameter(torch.zeros(domains, width))
        self.register_buffer("moving_mean", torch.zeros(domains, width))
        self.register_buffer("moving_var", torch.ones(domains, width))

    def forward(self, x, groups):
        def f(p, xp):
            if self.training:
                mean = xp.mean(0, keepdim=True)
                var = (xp - mean).square().mean(0, keepdim=True)
                with torch.no_grad():
                    m = self.momentum
                    self.moving_mean[p].mul_(1 - m).add_(m * mean.squeeze(0))
                    self.moving_var[p].mul_(1 - m).add_(m * var.squeeze(0))
            else:
                mean, var = self.moving_mean[p : p + 1], self.moving_var[p : p + 1]
            z = (xp - mean) / (var + self.eps).sqrt()
            return z * (self.gamma * self.domain_gamma[p]) + (self.beta + self.domain_beta[p])

        return groups.map(x, f)


class Star(nn.Module):
    """STAR as mtrec's `star` template expands it: PN, star FCN, per task a
    star tower (hidden star layers, star output layer) plus the auxiliary
    network (domain embedding -> MLP -> logit) added to the logit."""

    def __init__(self, h, units=(256, 128), tower_units=(64,), aux_dim=8, aux_units=(8,)):
        super().__init__()
        d = h["fields"] * EMBEDDING_DIM + h["dense"]
        nd = h["domains"]
        self.domains = nd
        self.input = Input(h["fields"], h["vocab"])
        self.norm = PartitionedNorm(d, nd)
        self.fcn = nn.ModuleList()
        w = d
        for u in units:
            self.fcn.append(StarLinear(w, u, nd))
            w = u
        self.tower_hidden = nn.ModuleList()
        self.tower_out = nn.ModuleList()
        self.aux_emb = nn.ParameterList()
        self.aux_mlp = nn.ModuleList()
        for _ in range(h["tasks"]):
            layers = nn.ModuleList()
            t = w
            for u in tower_units:
                layers.append(StarLinear(t, u, nd))
                t = u
            self.tower_hidden.append(layers)
            self.tower_out.append(StarLinear(t, 1, nd))
            self.aux_emb.append(nn.Parameter(torch.empty(nd, aux_dim).normal_(0.0, 1.0)))
            self.aux_mlp.append(tower(aux_dim, aux_units))

    def forward(self, ids, dense, domains):
        x = self.input(ids, dense)
        groups = Groups(domains, self.domains)
        h = self.norm(x, groups)

        def fcn(p, xp):
            for l in self.fcn:
                xp = torch.relu(l(xp, p))
            return xp

        h = groups.map(h, fcn)
        outs = []
        for hidden, out, emb, mlp in zip(self.tower_hidden, self.tower_out, self.aux_emb, self.aux_mlp):
            def head(p, xp, hidden=hidden, out=out):
                for l in hidden:
                    xp = torch.relu(l(xp, p))
                return out(xp, p)

            s_m = groups.map(h, head)
            s_a = mlp(emb).index_select(0, domains)
            outs.append((s_m + s_a).squeeze(1))
        return outs


MODELS = {"mmoe": Mmoe, "ple": Ple, "star": Star}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def cpu_ticks():
    """Busy ticks of the machine (/proc/stat) and of this process (user + system)."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        total = sum(x for i, x in enumerate(v) if i not in (3, 4))
    except OSError:
        total = float("nan")
    t = os.times()
    return total, (t.user + t.system) * 100.0


def median_p99(xs):
    xs = sorted(xs)
    at = lambda q: xs[round((len(xs) - 1) * q)]
    return at(0.5), at(0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(MODELS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--adam", choices=["default", "fused"], default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--infer-batches", type=int, default=40)
    ap.add_argument("--latency-calls", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()

    load_before = load_average()
    ticks_before = cpu_ticks()
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    h, data = load(a.data)
    ids, dense, labels, domains = data["sparse"], data["dense"], data["labels"], data["domains"]
    rows = h["rows"]
    model = MODELS[a.workload](h)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=(a.adam == "fused") or None)
    bs = a.batch_size

    def batch(idx):
        return ids.index_select(0, idx), dense.index_select(0, idx), labels.index_select(0, idx), domains.index_select(0, idx)

    def step(idx):
        i, x, y, d = batch(idx)
        outs = model(i, x, d)
        loss = sum(F.binary_cross_entropy_with_logits(o, y[:, k]) for k, o in enumerate(outs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return [F.binary_cross_entropy_with_logits(o.detach(), y[:, k]).item() for k, o in enumerate(outs)]

    model.train()
    g = torch.Generator().manual_seed(7)
    warm = torch.randperm(rows, generator=g)[: a.warmup_steps * bs]
    for s in range(0, warm.numel(), bs):
        step(warm[s : s + bs])
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    sums = [0.0] * h["tasks"]
    steps = 0
    t0 = time.perf_counter()
    for s in range(0, rows, bs):
        for k, l in enumerate(step(order[s : s + bs])):
            sums[k] += l
        steps += 1
    train_secs = time.perf_counter() - t0
    rss_train = peak_rss_mb()

    model.eval()
    with torch.no_grad():
        batches = [batch(order[s : s + bs]) for s in range(0, min(rows - bs + 1, (a.infer_batches + 2) * bs), bs)]
        for i, x, _, d in batches[:2]:
            model(i, x, d)
        timed = batches[2:]
        t0 = time.perf_counter()
        for i, x, _, d in timed:
            model(i, x, d)
        infer_secs = time.perf_counter() - t0
        singles = [batch(order[r : r + 1]) for r in range(256)]
        for c in range(a.latency_calls // 10 + 1):
            i, x, _, d = singles[c % 256]
            model(i, x, d)
        lat = []
        for c in range(a.latency_calls):
            i, x, _, d = singles[c % 256]
            t = time.perf_counter()
            model(i, x, d)
            lat.append((time.perf_counter() - t) * 1e6)
    lat_med, lat_p99 = median_p99(lat)

    ticks_after = cpu_ticks()
    result = {
        "implementation": "pytorch-fused-adam" if a.adam == "fused" else "pytorch",
        "workload": a.workload,
        "threads": a.threads,
        "batch_size": bs,
        "rows": rows,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": steps,
        "warmup_steps": a.warmup_steps,
        "train_samples_per_s": rows / train_secs,
        "train_loss": [s / max(steps, 1) for s in sums],
        "infer_samples_per_s": sum(b[0].shape[0] for b in timed) / infer_secs,
        "latency_us_median": lat_med,
        "latency_us_p99": lat_p99,
        "peak_rss_train_mb": rss_train,
        "peak_rss_end_mb": peak_rss_mb(),
        "load_before": load_before,
        "load_after": load_average(),
        "other_cpu": max(0.0, ((ticks_after[0] - ticks_before[0]) - (ticks_after[1] - ticks_before[1])) / 100.0
                         / (time.perf_counter() - started)),
        "fused_ops": False,
        "version": f"torch {torch.__version__}",
    }
    text = json.dumps(result, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
