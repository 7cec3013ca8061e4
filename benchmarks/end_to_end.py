"""End to end: ``emergelab`` ``train()`` (what ``emergelab run`` does: auto strategy, probes every
``eval_every`` steps, checkpoints, metrics, summary) against a plain nanoGPT-style loop training the same
seeds one after another with torch's default threads, on the same machine in one run; beside the FLOP
floor (training FLOPs / the faster of MKL's and oneDNN's 2-thread fp32 matmul rates measured here) and the
probe cost.

    python benchmarks/end_to_end.py [--size lm16 demo] [--seeds 4] [--steps 1000] [--rounds 1] [--out benchmarks/results/end_to_end.json]
    python benchmarks/end_to_end.py --probes-only [--eval-batch-size 256 128] [--out ...]   # the probe share alone

Sizes: ``lm16`` = linear map S=16 s=3, 1 layer, 8 heads x 8, MLP 4x, batch 128 (T=31); ``demo`` = the
demo preset's model and task (S=8, batch 64, T=15). The plain loop is ``train_throughput.PlainGPT``
(nn.Linear, nn.LayerNorm, SDPA, AdamW with decay groups, clip_grad_norm_) with the same task data
generator per step. Prints a table; writes JSON with the load averages before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {
    "lm16": ({"name": "linear-map", "state_size": 16, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 128),
    "demo": ({"name": "linear-map", "state_size": 8, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 64),
}


def config(size: str, seeds: int, steps: int, execution: dict | None = None, eval_batch_size: int | None = None):
    from emergelab.train import ExperimentConfig

    task, model, batch = SIZES[size]
    train = {"steps": steps, "batch_size": batch, "seeds": seeds}
    if eval_batch_size is not None:
        train["eval_batch_size"] = eval_batch_size
    return ExperimentConfig.from_dict({"task": task, "model": model, "train": train,
                                       "execution": execution or {}})


def plain_run(cfg, seed: int, steps: int) -> None:
    """One seed of the plain loop: model init, ``steps`` steps (data sampled per step)."""
    import torch.nn.functional as F

    from emergelab.tasks import make_generator
    from train_throughput import PlainGPT

    torch.manual_seed(seed)
    model = PlainGPT(cfg.model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr)
    task = cfg.task.build(make_generator(2 * seed, torch.device("cpu")))
    data = make_generator(2 * seed + 1, torch.device("cpu"))
    B = cfg.train.batch_size
    for _ in range(steps):
        tokens = task.sample(B, data).tokens
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()


def probe_share(size: str, steps: int, eval_every: int = 50, eval_batch_size: int | None = None) -> dict:
    """Probe time / (eval_every x step time) for a group of 2 seeds at 1 thread (CPU time, best of 5), and
    the share with the run's whole probe schedule (every ``eval_every`` steps plus the attention-snapshot
    steps and the end: ``schedule.probe_steps``) over ``steps`` steps."""
    from emergelab.train.allocator import keep_freed_memory
    from emergelab.train.group import SeedGroup
    from emergelab.train.schedule import probe_steps

    keep_freed_memory()  # as every training process does (train/unit.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = SeedGroup(config(size, 2, 10 ** 6, eval_batch_size=eval_batch_size).resolved(), [0, 1])
        for _ in range(3):
            g._train_step()
        step = probe = float("inf")
        for _ in range(5):
            c = time.process_time()
            for _ in range(5):
                g._train_step()
            step = min(step, (time.process_time() - c) / 5)
            c = time.process_time()
            g._measure(g.config.train.eval_every)  # a regular probe (step 0's also records the marginals)
            probe = min(probe, time.process_time() - c)
    finally:
        torch.set_num_threads(threads)
    probes = len(probe_steps(config(size, 2, steps, eval_batch_size=eval_batch_size).resolved().train)) - 1  # the one at step 0 is not paid per step
    return {"step_cpu_s": step, "probe_cpu_s": probe, "eval_every": eval_every,
            "probe_share": probe / (eval_every * step), "probes_per_run": probes,
            "probe_share_schedule": probes * probe / (steps * step)}


def matmul_rate(threads: int, n: int = 2048, library: str = "mkl") -> float:
    """GFLOP/s of an ``n x n`` fp32 product at ``threads``: torch's ``a @ b`` (MKL) or oneDNN's
    (``models/onednn.py``, what the training step's large maps use; 0 where it is not usable)."""
    from emergelab.models import onednn

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    if library == "onednn" and not onednn.available():
        return 0.0
    product = (lambda: a @ b) if library == "mkl" else (lambda: onednn.linear(a, b.t()))
    product()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def write_result(result: dict, out: str) -> None:
    """Stamp ``result`` with the load average and the time, write it as JSON to ``out`` (atomically)."""
    from emergelab.store import write_text

    result["load_avg_after"] = os.getloadavg()
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_text(out, json.dumps(result, indent=1))
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of both sides; best of each")
    p.add_argument("--out", default="benchmarks/results/end_to_end.json")
    p.add_argument("--probes-only", action="store_true", help="only the probes' share of step time (a minute)")
    p.add_argument("--eval-batch-size", type=int, nargs="+", default=[None],
                   help="with --probes-only: held-out batches to measure (default: train.eval_batch_size's)")
    args = p.parse_args()
    if args.probes_only:
        return probes_only(args)
    from emergelab.train import train
    from emergelab.train.run import make_plan, train_flops
    from train_throughput import machine_info

    default_threads = torch.get_num_threads()
    result = {"benchmark": "end_to_end", "seeds": args.seeds, "steps": args.steps,
              "emergelab_src": str(Path(sys.modules["emergelab"].__file__).parent),
              "machine": {**machine_info(), "default_threads": default_threads},
              "load_avg_before": os.getloadavg(), "rows": []}
    result["matmul_2t_gflops"] = matmul_rate(2)  # MKL: the plain loop's products
    result["onednn_matmul_2t_gflops"] = matmul_rate(2, library="onednn")
    peak2 = max(result["matmul_2t_gflops"], result["onednn_matmul_2t_gflops"])  # the floor at the faster
    torch.set_num_threads(default_threads)
    for size in args.size:
        cfg = config(size, args.seeds, args.steps)
        flops = train_flops(cfg.resolved())
        plan = make_plan(cfg.resolved())
        row = {"size": size, "train_flops": flops, "floor_s": flops / (peak2 * 1e9),
               "strategy": plan.strategy, "processes": plan.processes, "load_before": os.getloadavg()[0]}
        row["emergelab_rounds_s"], row["plain_rounds_s"] = [], []
        for _ in range(args.rounds):  # alternating, so a change in the machine's speed hits both sides
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                train(cfg, Path(tmp) / "run", progress=False)
                row["emergelab_rounds_s"].append(time.perf_counter() - t)
            torch.set_num_threads(default_threads)
            if not args.skip_plain:
                t = time.perf_counter()
                for seed in range(args.seeds):
                    plain_run(cfg.resolved(), seed, args.steps)
                row["plain_rounds_s"].append(time.perf_counter() - t)
        row["emergelab_s"] = min(row["emergelab_rounds_s"])
        if not args.skip_plain:
            row["plain_s"] = min(row["plain_rounds_s"])
            row["speedup"] = row["plain_s"] / row["emergelab_s"]  # best against best
            row["speedup_rounds"] = [p / e for p, e in zip(row["plain_rounds_s"], row["emergelab_rounds_s"])]
        row.update(probe_share(size, args.steps))
        row["load_after"] = os.getloadavg()[0]
        result["rows"].append(row)
        print(f"{size}: {args.seeds} seeds x {args.steps} steps: emergelab {row['emergelab_s']:.1f} s "
              f"({plan.strategy}, {plan.processes} proc), plain loop "
              f"{row.get('plain_s', float('nan')):.1f} s ({default_threads} threads) -> "
              f"{row.get('speedup', float('nan')):.2f}x (best of {args.rounds}; per round "
              f"{', '.join(f'{r:.2f}x' for r in row.get('speedup_rounds', []))}); FLOP floor {row['floor_s']:.1f} s at "
              f"{peak2:.0f} GFLOP/s (MKL {result['matmul_2t_gflops']:.0f}, oneDNN "
              f"{result['onednn_matmul_2t_gflops']:.0f}); probes {100 * row['probe_share']:.1f}% of step time at eval_every=50, "
              f"{100 * row['probe_share_schedule']:.1f}% with the run's {row['probes_per_run']} probes; "
              f"load {row['load_before']:.1f} -> {row['load_after']:.1f}", flush=True)
    write_result(result, args.out)


def probes_only(args: argparse.Namespace) -> None:
    """The probe's share of step time per size and held-out batch, alternating the batches for 3 rounds
    (best of each): the probe and step are timed in the same process, so the share is robust to the
    machine's speed."""
    result = {"benchmark": "end_to_end_probes", "steps": args.steps, "load_avg_before": os.getloadavg(),
              "rows": []}
    for size in args.size:
        best: dict = {}
        for _ in range(3):
            for eb in args.eval_batch_size:
                row = probe_share(size, args.steps, eval_batch_size=eb)
                if eb not in best or row["probe_share"] < best[eb]["probe_share"]:
                    best[eb] = row
        for eb, row in best.items():
            row.update(size=size, eval_batch_size=eb or config(size, 2, 1).train.eval_batch_size)
            result["rows"].append(row)
            print(f"{size}, {row['eval_batch_size']} held-out sequences: probe {1e3 * row['probe_cpu_s']:.1f} ms, "
                  f"step {1e3 * row['step_cpu_s']:.1f} ms (2 seeds, 1 thread, CPU time) -> "
                  f"{100 * row['probe_share']:.2f}% of step time at eval_every=50, "
                  f"{100 * row['probe_share_schedule']:.2f}% with the run's {row['probes_per_run']} probes over "
                  f"{args.steps} steps", flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
