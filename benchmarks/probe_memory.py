"""What a run's probes do to the process's memory: glibc's heap over many probes, page faults and time per
probe, peak RSS; this tree, or this tree against an earlier commit.

    python benchmarks/probe_memory.py [--size demo] [--probes 150] [--every 25] [--base f4f2696]
                                      [--rounds 2] [--out benchmarks/results/probe_memory.json]

Each measurement is a fresh 1-thread process (with the workers' ``keep_freed_memory``) that builds a 2-seed
``SeedGroup`` at ``--size`` (``end_to_end.SIZES``) and runs ``--probes`` cycles of ``--every`` training steps
and one probe (``SeedGroup._measure``, which also records the metrics). It reports glibc's main arena
(``mallinfo2``: the heap's size, in use and free) every 30 probes, minor page faults and CPU ms per probe,
CPU ms per step and the peak RSS. With ``--base``, that commit's ``src/`` (``git archive``) runs the same
cycles, the two trees alternating for ``--rounds``. Prints a table; writes JSON (atomic).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import ctypes, json, resource, sys, time
import torch
from end_to_end import config
import emergelab
from emergelab.train.allocator import keep_freed_memory
from emergelab.train.group import SeedGroup

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
keep_freed_memory()
torch.set_num_threads(1)
size, probes, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
group = SeedGroup(config(size, 2, 10 ** 6).resolved(), [0, 1])
for _ in range(3):
    group._train_step()
arena, probe_s, step_s, faults = [], 0.0, 0.0, 0
for i in range(probes):
    c = time.process_time()
    for _ in range(every):
        group._train_step()
    step_s += time.process_time() - c
    f, c = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    group._measure(group.config.train.eval_every)  # a regular probe (step 0's also records the marginals)
    probe_s += time.process_time() - c
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
    if (i + 1) % 30 == 0:
        info = libc.mallinfo2()
        arena.append({"probes": i + 1, "heap_mb": info.arena / 2 ** 20, "in_use_mb": info.uordblks / 2 ** 20,
                      "free_mb": info.fordblks / 2 ** 20, "free_chunks": info.ordblks})
print(json.dumps({"emergelab": str(emergelab.__file__), "arena": arena, "probe_ms": probe_s / probes * 1e3,
                  "step_ms": step_s / (probes * every) * 1e3, "faults_per_probe": faults / probes,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(code: str, src: Path, *args: object) -> dict:
    """Run ``code`` in a fresh Python with ``src`` (an ``emergelab`` tree) and ``benchmarks/`` importable;
    its last line of output is JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).resolve().parent)])}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def source_trees(base: str | None, tmp: str) -> dict[str, Path]:
    """This tree's ``src/``, and with ``base`` that commit's (``git archive`` into ``tmp``)."""
    trees = {"this tree": ROOT / "src"}
    if base:
        subprocess.run(f"git -C {ROOT} archive {base} src | tar -x -C {tmp}", shell=True, check=True)
        trees[base] = Path(tmp) / "src"
    return trees


def main() -> None:
    from end_to_end import write_result

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="demo", choices=["demo", "lm16"])
    p.add_argument("--probes", type=int, default=150)
    p.add_argument("--every", type=int, default=25, help="training steps between probes")
    p.add_argument("--base", help="also measure this commit's src/ (alternating)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "probe_memory.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees, rows = source_trees(args.base, tmp), []
        for r in range(args.rounds):
            for name, src in trees.items():
                row = {"tree": name, "round": r, **run_child(CHILD, src, args.size, args.probes, args.every)}
                rows.append(row)
                heap = " ".join(f"{a['heap_mb']:.0f}" for a in row["arena"])
                print(f"{name:>10} round {r}: heap MB every 30 probes {heap} | in use {row['arena'][-1]['in_use_mb']:.0f} "
                      f"| faults/probe {row['faults_per_probe']:.0f} | probe {row['probe_ms']:.1f} ms | "
                      f"step {row['step_ms']:.1f} ms | peak RSS {row['maxrss_mb']:.0f} MB", flush=True)
    write_result({"benchmark": "probe_memory", "size": args.size, "probes": args.probes, "every": args.every,
                  "base": args.base, "load_avg": os.getloadavg(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
