"""Training throughput of emergelab's seed-batched trainer, beside a plain nanoGPT-style loop.

    python benchmarks/train_throughput.py [--quick] [--out benchmarks/results/train_throughput.json]
    python benchmarks/train_throughput.py --device cuda      # ensemble + plain loop on a GPU

For each size (the ``linear-map-tiny`` and ``demo`` presets' models) and each seed count N (1, 8, 64):

* ``ensemble/1t``, ``ensemble/2t``: one ``SeedGroup`` of N members in this process, torch threads 1 / 2.
* ``workers/2x1t``: 2 spawned processes with 1 thread each, each running a ``SeedGroup`` of N/2 seeds,
  concurrently (a barrier starts every timed block together); throughput = sum over workers. The two
  processes live for the whole benchmark; their start-up (spawn + import) is timed once, ``startup_s``.
* ``plain/1t``, ``plain/2t``: N sequential runs of a standard one-model loop (nn.Linear, SDPA, AdamW,
  batch 64, grad clipping), i.e. 1 / step-time seed-steps per second whatever N.

Method: warm-up steps first (excluded), then ``repeats`` timed blocks of ``n`` steps of the steady-state
training step (``SeedGroup._train_step``: batch, forward, loss, backward, per-member clipping, AdamW; no
probes or checkpoints); the best block counts (the machine may be shared). GFLOP/s =
3 x ``flops_per_token()`` x tokens/s (forward + backward ~ 3 x forward), beside a large fp32 matmul's
GFLOP/s measured here (the machine's practical peak). Tokens per seed-step = batch x context_length.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZES = {"tiny": "linear-map-tiny", "demo": "demo"}  # size name -> preset whose model and task it uses
SEED_COUNTS = (1, 8, 64)
GPU_SEED_COUNTS = (1, 8, 64, 256)  # a GPU keeps gaining past 64 members


# ----------------------------------------------------------------------------------------------------
# A plain nanoGPT-style model and loop: one model at a time, standard modules
# ----------------------------------------------------------------------------------------------------


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int, head_dim: int, mlp: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, d)
        self.mlp = None
        if mlp:
            self.ln2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, d]
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + self.proj(z)
        return x + self.mlp(self.ln2(x)) if self.mlp is not None else x


class PlainGPT(nn.Module):
    def __init__(self, cfg):  # cfg: a resolved emergelab TransformerConfig, for the sizes only
        super().__init__()
        d = cfg.width
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Embedding(cfg.context_length, d)
        self.blocks = nn.ModuleList(PlainBlock(d, cfg.heads, cfg.head_dim, cfg.mlp_width)
                                    for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: [B, T] -> logits [B, T, V]
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def plain_stepper(config, device: torch.device):
    """A closure doing one training step of one plain model (same task data as emergelab)."""
    from emergelab.tasks import make_generator

    torch.manual_seed(0)
    model = PlainGPT(config.model).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.train.lr)
    task = config.task.build(make_generator(0, device))
    data = make_generator(1, device)
    B = config.train.batch_size

    def step() -> None:
        tokens = task.sample(B, data).tokens  # [B, L]
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        opt.step()

    return step


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


def experiment(size: str, seeds: int, device: str):
    from emergelab.presets import preset_dict
    from emergelab.train import ExperimentConfig

    data = preset_dict(SIZES[size])
    data["train"] = {**data["train"], "seeds": seeds, "steps": 10 ** 7}
    data["execution"] = {"device": device}
    return ExperimentConfig.from_dict(data).resolved()


def group_stepper(config, seeds: list[int]):
    """A closure doing one steady-state training step of a SeedGroup."""
    from emergelab.train.group import SeedGroup

    group = SeedGroup(config, seeds)

    def step() -> None:
        group._train_step()
        group.step += 1

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, target_s: float, repeats: int,
               barrier=None) -> tuple[float, int]:
    """Best seconds per step over ``repeats`` blocks of ``n`` steps (``n`` sized to ~target_s a block)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    n = max(1, math.ceil(target_s / max(time.perf_counter() - start, 1e-6)))
    best = math.inf
    for _ in range(repeats):
        if barrier is not None:
            barrier.wait()
        start = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / n)
    return best, n


def matmul_peak(device: torch.device, threads: int, n: int, target_s: float, library: str = "torch") -> float:
    """GFLOP/s of an n x n fp32 matmul (best of 3 blocks): torch's ``a @ b`` (MKL on a CPU), or with
    ``library="onednn"`` oneDNN's product (``models/onednn.py``, what the CPU step's large maps use; 0 where it
    is not used)."""
    from emergelab.models import onednn  # (main put src/ on the path)

    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    if library == "onednn" and (device.type != "cpu" or not onednn.available()):
        return 0.0
    product = (lambda: a @ b) if library == "torch" else (lambda: onednn.linear(a, b.t()))
    seconds, _ = time_steps(product, device, warmup=1, target_s=target_s, repeats=3)
    return 2 * n ** 3 / seconds / 1e9


def machine_info() -> dict:
    """The machine as the results need it to be compared: the CPUs this process may use (not the host's
    count: under ``taskset`` they differ), the CPU's model and vendor, which library multiplies the CPU step's
    large maps (``models/onednn.py``), torch."""
    from emergelab.models import onednn  # (main put src/ on the path)

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
            "cpu_vendor": onednn.cpu_vendor(), "matrix_products": onednn.describe(), "torch": torch.__version__,
            "python": platform.python_version()}


def _worker(jobs, barrier, results) -> None:
    """A 1-thread worker process: for each job (size, seeds, budget), time a SeedGroup of those seeds."""
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import emergelab.train.group  # noqa: F401  (the import is part of start-up)

    results.put(("ready", time.time()))
    for size, seeds, budget in iter(jobs.get, None):
        step = group_stepper(experiment(size, len(seeds), "cpu"), seeds)
        barrier.wait()  # both workers start warming up together
        seconds, n = time_steps(step, torch.device("cpu"), budget["warmup"], budget["target_s"],
                                budget["repeats"], barrier)
        results.put(("done", (len(seeds), seconds, n)))


class WorkerPair:
    """``n`` spawned 1-thread processes kept alive across measurements (start-up is timed once).

    Each measurement splits the seeds among them as ``train()`` does; a barrier starts every timed
    block on all workers together, so they contend for the machine as real workers do."""

    def __init__(self, n: int):
        ctx = mp.get_context("spawn")
        self.n, self.barrier, self.results = n, ctx.Barrier(n), ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(n)]
        started = time.time()
        self.procs = [ctx.Process(target=_worker, args=(q, self.barrier, self.results), daemon=True)
                      for q in self.jobs]
        for p in self.procs:
            p.start()
        self.startup_s = max(self.results.get(timeout=600)[1] for _ in range(n)) - started

    def measure(self, size: str, n_seeds: int, budget: dict) -> dict:
        for i, q in enumerate(self.jobs):
            q.put((size, list(range(i, n_seeds, self.n)), budget))
        done = [self.results.get(timeout=600)[1] for _ in range(self.n)]
        rate = sum(e / seconds for e, seconds, _ in done)  # seed-steps per second, all workers together
        return {"seed_steps_per_s": rate, "step_s": max(s for _, s, _ in done), "startup_s": self.startup_s}

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join()


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def run(args) -> dict:
    device = torch.device(args.device)
    quick = args.quick
    budget = {"warmup": 2 if quick else 5, "target_s": 0.12 if quick else 0.5, "repeats": 2 if quick else 4}
    cpu = device.type == "cpu"
    thread_counts = (1, 2) if cpu else (1,)
    seed_counts = SEED_COUNTS if cpu else GPU_SEED_COUNTS
    rows = []
    load_before = os.getloadavg()

    peaks, by_library = {}, {}
    for threads in thread_counts:
        for library in ("torch", "onednn"):
            by_library[f"{library}/{threads}t"] = matmul_peak(device, threads, 1024 if quick else 2048,
                                                              0.3 if quick else 1.0, library)
        peaks[f"{threads}t"] = max(by_library[f"torch/{threads}t"], by_library[f"onednn/{threads}t"])
    print(f"fp32 matmul peak ({args.device}; the faster of torch's a @ b and oneDNN's): "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in by_library.items()), flush=True)

    def add(size, strategy, n_seeds, threads, config, seed_steps_per_s, step_s, extra=None):
        tokens = seed_steps_per_s * config.train.batch_size * config.model.context_length
        gflops = 3 * config.model.flops_per_token() * tokens / 1e9
        peak = peaks[f"{min(threads, 2) if cpu else 1}t"]
        row = {"size": size, "strategy": strategy, "seeds": n_seeds, "threads": threads,
               "seed_steps_per_s": seed_steps_per_s, "tokens_per_s": tokens, "step_ms": step_s * 1e3,
               "gflops": gflops, "peak_fraction": gflops / peak, **(extra or {})}
        rows.append(row)
        print(f"{size:5s} {strategy:14s} N={n_seeds:3d}  {seed_steps_per_s:9.1f} seed-steps/s  "
              f"{tokens / 1e3:9.1f} ktok/s  {gflops:6.2f} GFLOP/s ({100 * gflops / peak:4.1f}% of peak)"
              , flush=True)

    pool = WorkerPair(args.workers) if cpu and args.workers >= 2 else None
    if pool is not None:
        print(f"worker start-up (spawn, import torch + emergelab): {pool.startup_s:.1f} s", flush=True)
    for size in SIZES:
        base = experiment(size, 1, args.device)
        m = base.model
        print(f"\n{size}: {SIZES[size]} model layers={m.layers} heads={m.heads} head_dim={m.head_dim} "
              f"d={m.width} mlp={m.mlp_width} V={m.vocab_size} T={m.context_length} batch="
              f"{base.train.batch_size}; {m.flops_per_token()} fwd FLOP/token", flush=True)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            seconds, _ = time_steps(plain_stepper(base, device), device, **budget)
            for n_seeds in seed_counts:  # N runs one after another: the same rate whatever N
                add(size, f"plain/{threads}t", n_seeds, threads, base, 1 / seconds, seconds)
        for n_seeds in seed_counts:
            config = experiment(size, n_seeds, args.device)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                seconds, _ = time_steps(group_stepper(config, list(range(n_seeds))), device, **budget)
                add(size, f"ensemble/{threads}t", n_seeds, threads, config, n_seeds / seconds, seconds)
            if pool is not None and n_seeds >= args.workers:
                w = pool.measure(size, n_seeds, budget)
                add(size, f"workers/{args.workers}x1t", n_seeds, args.workers, config, w["seed_steps_per_s"],
                    w["step_s"], {"startup_s": w["startup_s"]})
    if pool is not None:
        pool.close()

    return {
        "benchmark": "train_throughput", "quick": quick, "device": args.device,
        "machine": {**machine_info(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "ld_preload": os.environ.get("LD_PRELOAD", ""), "malloc_conf": os.environ.get("MALLOC_CONF", "")},
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "budget": budget, "matmul_peak_gflops": peaks, "matmul_peak_by_library": by_library, "rows": rows, "seed_counts": list(seed_counts),
        "worker_startup_s": pool.startup_s if pool is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def print_table(result: dict) -> None:
    print(f"\nseed-steps/s (GFLOP/s, % of fp32 matmul peak {result['matmul_peak_gflops']}); "
          f"load avg before/after {result['load_avg_before'][0]:.1f}/{result['load_avg_after'][0]:.1f}")
    rows = result["rows"]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    seed_counts = result.get("seed_counts", SEED_COUNTS)
    for size in dict.fromkeys(r["size"] for r in rows):
        print(f"\n{size:14s}" + "".join(f"{'N=' + str(n):>26s}" for n in seed_counts))
        for strategy in strategies:
            cells = []
            for n in seed_counts:
                r = next((r for r in rows if (r["size"], r["strategy"], r["seeds"]) == (size, strategy, n)), None)
                cells.append(f"{r['seed_steps_per_s']:8.1f} ({r['gflops']:5.2f}, {100 * r['peak_fraction']:4.1f}%)"
                             if r else "-")
            print(f"{strategy:14s}" + "".join(f"{c:>26s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter timing blocks (~1 min)")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: no workers, 1 thread)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the workers strategy")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.store import write_text

    result = run(args)
    print_table(result)
    write_text(args.out, json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
