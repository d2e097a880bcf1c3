#!/usr/bin/env python3
"""PyTorch reference of mtrec's benchmark workloads (`cargo xtask bench compare`).

Reads the data file `mtrec-bench data` writes (identical rows on both sides),
builds the same model as mtrec (same shapes, same parameter count and
initialisation: PyTorch's U(+-1/sqrt(in)) for layers, bias-free softmax gates,
embeddings U(-0.05, 0.05), one table for all fields with per-field row
offsets), trains it with Adam (lr 1e-3; `--adam fused` for fused=True,
`--adam foreach` for foreach=True) on summed BCE-with-logits, and measures
what the Rust side measures: training samples/s over one pass after warm-up
steps (or its first `--max-steps` batches), inference samples/s at the batch
size, batch-1 latency median and p99, and peak RSS after training. Float32,
`torch.set_num_threads(--threads)`. Not needed by CI or tests:
`pip install torch` (the CPU build is enough).

The reference should be the fastest PyTorch we can write, or every ratio
flatters mtrec: the formulation flags choose between alternatives, and their
defaults are the fastest measured (docs/results/bench/pytorch-alternatives.md:
`--mix mul` was as fast or faster on every workload with experts, up to 1.28x
on small-model; the other alternatives were within noise or slower):
- `--bank`: an expert bank as `addmm` (the first layer, whose input all
  experts share, as one [B, d] x [d, n*out] addmm over the weights side by
  side; later layers one `baddbmm`), `bmm` (every layer one `baddbmm`), or
  `linear` (a ModuleList of nn.Linear experts, stacked);
- `--mix`: the gate-weighted sum over experts as `mul` (broadcast multiply and
  sum), `einsum`, or `bmm`;
- `--tables`: `one` table for all fields (as mtrec) or `per-field` tables;
- `--embedding`: `sparse` (nn.Embedding(sparse=True) gradients, SparseAdam for
  the tables, Adam for the rest) or `dense` (Adam over everything); the
  hashed-id workloads default to sparse: dense tables at 4M rows cost a full
  Adam pass over 134M parameters a step;
- `--compile`: torch.compile (inductor) of the network after the embedding
  lookup; its compile time falls in the warm-up (excluded, reported as
  `warmup_secs`).
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

MAGICS = {"mtrec-bench-data 1": 1, "mtrec-bench-data 2": 2}
EMBEDDING_DIM = 16
HASHED_ID_WORKLOADS = ("large-vocab", "small-model")
# Each workload's expected data: generator and, for hashed ids, the rows of each id table.
DATA = {
    "mmoe": ("census-like", None),
    "ple": ("census-like", None),
    "star": ("census-like", None),
    "large-vocab": ("hashed-ids", 4_194_304),
    "small-model": ("hashed-ids", 1_024),
}


def load(path):
    with open(path, "rb") as f:
        magic = f.readline().decode().strip()
        version = MAGICS.get(magic)
        if version is None:
            raise SystemExit(f"{path}: not a benchmark data file (expected `mtrec-bench-data 2`)")
        header = json.loads(f.readline())
        body = bytearray(f.read())
    if version == 1:
        header["generator"] = "census-like"
        header["vocabs"] = [header["vocab"]] * header["fields"]
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
    """A bank of n MLP experts (ReLU after every layer): [B, d] -> [B, n, out].

    `addmm` and `bmm` keep [n, in, out] weights and [n, 1, out] biases; `linear`
    is a ModuleList of nn.Linear stacks (same shapes transposed, same init)."""

    def __init__(self, n, d_in, units, how):
        super().__init__()
        self.n, self.how = n, how
        if how == "linear":
            self.experts = nn.ModuleList()
            for _ in range(n):
                layers, d = [], d_in
                for u in units:
                    layers += [nn.Linear(d, u), nn.ReLU()]
                    d = u
                self.experts.append(nn.Sequential(*layers))
            return
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        d = d_in
        for u in units:
            b = 1.0 / math.sqrt(d)
            self.weights.append(uniform((n, d, u), b))
            self.biases.append(uniform((n, 1, u), b))
            d = u

    def forward(self, x):
        if self.how == "linear":
            return torch.stack([e(x) for e in self.experts], 1)
        h = x.expand(self.n, *x.shape) if self.how == "bmm" else None
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i == 0 and self.how == "addmm":
                n, d, o = w.shape
                # One matmul for the whole bank: x [B, d] @ [d, n*o].
                wide = w.permute(1, 0, 2).reshape(d, n * o)
                h = torch.relu(torch.addmm(b.reshape(1, n * o), x, wide))
                h = h.view(x.shape[0], n, o).transpose(0, 1)
            else:
                h = torch.relu(torch.baddbmm(b, h, w))
        return h.transpose(0, 1)


class Gate(nn.Module):
    """softmax(x W), bias-free (MMoE / PLE)."""

    def __init__(self, d_in, n):
        super().__init__()
        self.weight = uniform((d_in, n), 1.0 / math.sqrt(d_in))

    def forward(self, x):
        return torch.softmax(x @ self.weight, dim=-1)


def mix(w, banks, how):
    """Gate-weighted sum: w [B, N], banks [B, n_j, d] (N = sum n_j) -> [B, d]."""
    bank = banks[0] if len(banks) == 1 else torch.cat(banks, 1)
    if how == "mul":
        return (w.unsqueeze(2) * bank).sum(1)
    if how == "einsum":
        return torch.einsum("bn,bnd->bd", w, bank)
    return torch.bmm(w.unsqueeze(1), bank).squeeze(1)


def tower(d_in, units):
    layers = []
    d = d_in
    for u in units:
        layers += [nn.Linear(d, u), nn.ReLU()]
        d = u
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class Input(nn.Module):
    """The embedding lookup, dense features appended: one table for all fields
    (field f owns the rows after fields 0..f-1, as mtrec builds it) or one
    table per field; `sparse` gives row-sparse table gradients."""

    def __init__(self, vocabs, tables, sparse):
        super().__init__()
        self.per_field = tables == "per-field"
        sizes = vocabs if self.per_field else [sum(vocabs)]
        self.tables = nn.ModuleList([nn.Embedding(v, EMBEDDING_DIM, sparse=sparse) for v in sizes])
        for t in self.tables:
            nn.init.uniform_(t.weight, -0.05, 0.05)
        starts = [sum(vocabs[:f]) for f in range(len(vocabs))]
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.int32).unsqueeze(0))

    def forward(self, ids, dense):
        if self.per_field:
            e = torch.cat([t(ids[:, f]) for f, t in enumerate(self.tables)], 1)
        else:
            e = self.tables[0](ids + self.offsets).flatten(1)
        return torch.cat([e, dense], 1)


def width(h):
    return len(h["vocabs"]) * EMBEDDING_DIM + h["dense"]


class Mmoe(nn.Module):
    def __init__(self, h, o, experts=8, expert_units=(256, 128), tower_units=(64,)):
        super().__init__()
        d = width(h)
        self.how = o.mix
        self.experts = Experts(experts, d, expert_units, o.bank)
        self.gates = nn.ModuleList([Gate(d, experts) for _ in range(h["tasks"])])
        self.towers = nn.ModuleList([tower(expert_units[-1], tower_units) for _ in range(h["tasks"])])

    def forward(self, x, domains=None):
        bank = self.experts(x)
        return [t(mix(g(x), [bank], self.how)).squeeze(1) for g, t in zip(self.gates, self.towers)]


def small_mmoe(h, o):
    """large-vocab and small-model: 8 experts [64, 32], towers [16]."""
    return Mmoe(h, o, experts=8, expert_units=(64, 32), tower_units=(16,))


class Ple(nn.Module):
    """PLE as mtrec's `ple` template expands it (paper routing)."""

    def __init__(self, h, o, levels=2, specific=2, shared=2, expert_units=(256, 128), tower_units=(64,)):
        super().__init__()
        d = width(h)
        k = h["tasks"]
        self.k, self.levels, self.how = k, levels, o.mix
        self.task_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        w = d
        for j in range(levels):
            last = j == levels - 1
            self.task_experts.append(nn.ModuleList([Experts(specific, w, expert_units, o.bank) for _ in range(k)]))
            self.shared_experts.append(Experts(shared, w, expert_units, o.bank))
            self.task_gates.append(nn.ModuleList([Gate(w, specific + shared) for _ in range(k)]))
            if not last:
                self.shared_gates.append(Gate(w, k * specific + shared))
            w = expert_units[-1]
        self.towers = nn.ModuleList([tower(w, tower_units) for _ in range(k)])

    def forward(self, x, domains=None):
        task_in = [x] * self.k
        shared_in = x
        for j in range(self.levels):
            last = j == self.levels - 1
            own = [e(a) for e, a in zip(self.task_experts[j], task_in)]
            sh = self.shared_experts[j](shared_in)
            outs = [mix(g(a), [o, sh], self.how) for g, a, o in zip(self.task_gates[j], task_in, own)]
            if not last:
                shared_in = mix(self.shared_gates[j](shared_in), own + [sh], self.how)
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

    def __init__(self, h, o, units=(256, 128), tower_units=(64,), aux_dim=8, aux_units=(8,)):
        super().__init__()
        d = width(h)
        nd = h["domains"]
        self.domains = nd
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

    def forward(self, x, domains):
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


MODELS = {"mmoe": Mmoe, "ple": Ple, "star": Star, "large-vocab": small_mmoe, "small-model": small_mmoe}


class Net(nn.Module):
    """The embedding lookup, then the workload's network."""

    def __init__(self, h, o):
        super().__init__()
        self.input = Input(h["vocabs"], o.tables, o.embedding == "sparse")
        self.body = MODELS[o.workload](h, o)

    def forward(self, ids, dense, domains):
        return self.body(self.input(ids, dense), domains)


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
    ap.add_argument("--adam", choices=["default", "fused", "foreach"], default="default",
                    help="Adam of the dense parameters: torch.optim.Adam's default, fused=True, foreach=True")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--max-steps", type=int, help="timed training steps at most (default: one whole pass)")
    ap.add_argument("--infer-batches", type=int, default=40)
    ap.add_argument("--latency-calls", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bank", choices=["addmm", "bmm", "linear"], default="addmm")
    ap.add_argument("--mix", choices=["mul", "einsum", "bmm"], default="mul")
    ap.add_argument("--tables", choices=["one", "per-field"], default="one")
    ap.add_argument("--embedding", choices=["sparse", "dense"],
                    help="table gradients (default: sparse for large-vocab and small-model, dense otherwise)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network after the lookup")
    ap.add_argument("--json")
    a = ap.parse_args()
    default_embedding = "sparse" if a.workload in HASHED_ID_WORKLOADS else "dense"
    a.embedding = a.embedding or default_embedding

    load_before = load_average()
    ticks_before = cpu_ticks()
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    h, data = load(a.data)
    generator, buckets = DATA[a.workload]
    if h.get("generator") != generator or (buckets is not None and h["vocabs"][:2] != [buckets, buckets]):
        raise SystemExit(f"{a.data}: {h.get('generator')} data with vocabularies {h['vocabs']} is not the data of "
                         f"workload {a.workload} (`mtrec-bench data --workload {a.workload}` writes it)")
    ids, dense, labels, domains = data["sparse"], data["dense"], data["labels"], data["domains"]
    rows = h["rows"]
    model = Net(h, a)
    if a.compile:
        model.body = torch.compile(model.body, dynamic=False)
    adam = {"fused": {"fused": True}, "foreach": {"foreach": True}}.get(a.adam, {})
    if a.embedding == "sparse":
        tables = list(model.input.parameters())
        ids_of_tables = {id(p) for p in tables}
        rest = [p for p in model.parameters() if id(p) not in ids_of_tables]
        opts = [torch.optim.SparseAdam(tables, lr=1e-3), torch.optim.Adam(rest, lr=1e-3, **adam)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=1e-3, **adam)]
    bs = a.batch_size

    def batch(idx):
        return ids.index_select(0, idx), dense.index_select(0, idx), labels.index_select(0, idx), domains.index_select(0, idx)

    def step(idx):
        i, x, y, d = batch(idx)
        outs = model(i, x, d)
        loss = sum(F.binary_cross_entropy_with_logits(o, y[:, k]) for k, o in enumerate(outs))
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        return [F.binary_cross_entropy_with_logits(o.detach(), y[:, k]).item() for k, o in enumerate(outs)]

    model.train()
    g = torch.Generator().manual_seed(7)
    warm = torch.randperm(rows, generator=g)[: a.warmup_steps * bs]
    t0 = time.perf_counter()
    for s in range(0, warm.numel(), bs):
        step(warm[s : s + bs])
    if a.compile and rows % bs:
        # The pass's last, short batch compiles too: not in the timed pass.
        step(warm[: rows % bs])
    warmup_secs = time.perf_counter() - t0
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    sums = [0.0] * h["tasks"]
    steps = 0
    train_rows = 0
    starts = list(range(0, rows, bs))[: a.max_steps]
    t0 = time.perf_counter()
    for s in starts:
        idx = order[s : s + bs]
        for k, l in enumerate(step(idx)):
            sums[k] += l
        steps += 1
        train_rows += idx.numel()
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
    lat_med, lat_p99 = median_p99(lat) if lat else (float("nan"), float("nan"))

    name = "pytorch"
    if a.embedding != default_embedding:
        name += f"-{a.embedding}-embedding"
    if a.adam != "default":
        name += f"-{a.adam}-adam"
    ticks_after = cpu_ticks()
    result = {
        "implementation": name,
        "variant": {"bank": a.bank, "mix": a.mix, "tables": a.tables, "embedding": a.embedding,
                    "adam": a.adam, "compile": a.compile},
        "workload": a.workload,
        "threads": a.threads,
        "batch_size": bs,
        "rows": rows,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": steps,
        "train_rows": train_rows,
        "warmup_steps": a.warmup_steps,
        "warmup_secs": warmup_secs,
        "train_samples_per_s": train_rows / train_secs,
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
