"""Step time and tokens/s of every sequence model, fast form and reference form, at T = 256 and 1024.

    python benchmarks/mixers.py                  # full grid (E = 1, 8; T = 256, 1024)
    python benchmarks/mixers.py --quick          # T = 64 and 256, fewer repeats (a smoke run)
    python benchmarks/mixers.py --device cuda
    python benchmarks/mixers.py --models transformer,mlstm --lengths 256 --members 1,8   # a subset
    python benchmarks/mixers.py --lengths 1024 --forms fast                               # fast forms only

One training step = forward, next-token cross-entropy, backward and an AdamW step of a 1-layer model
(d_model 64, MLP 4x; the transformer: 4 heads x 16) on random binary tokens, ``E`` members batched, batch
``B`` sequences per member. The **fast** form is what training runs; the **reference** form swaps the
mixer's fast kernel for its plain recurrent reference (``models/mixers/*.py``: the pairs in
``REFERENCES``); an **alternative** form (``ALTERNATIVES``: the fast forms before the chunked ones, the
mLSTM's and Mamba's parallel forms and RWKV-7's recurrence) swaps the fast kernel for another one kept
beside it. The best of
``repeats`` timed blocks counts (the machine may be shared). Prints a table and writes
``benchmarks/results/mixers.json``; the ratio column is the step time over the transformer's at the same
(E, T). Target (the mixers issue): every fast form within 3x of the transformer at T = 1024 on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

MODELS = ["transformer", "mlp_mixer", "lru", "mamba", "gated_deltanet", "mlstm", "rwkv7"]
# model name -> (module, fast kernel, reference kernel): module-level functions the mixer calls. The LRU
# mixer holds its diagonal scan as an attribute (``mixer.scan``), swapped per instance instead.
REFERENCES = {
    "mlp_mixer": ("emergelab.models.mixers.mlp_mixer", "token_mix", "token_mix_naive"),
    "lru": None,
    "mamba": ("emergelab.models.mixers.mamba", "selective_scan_chunked", "selective_scan_naive"),
    "gated_deltanet": ("emergelab.models.mixers.gated_deltanet", "gated_delta_rule_chunk", "gated_delta_rule_naive"),
    "mlstm": ("emergelab.models.mixers.mlstm", "mlstm_chunkwise", "mlstm_recurrent"),
    "rwkv7": ("emergelab.models.mixers.rwkv7", "rwkv7_chunked", "rwkv7_recurrent"),
}

# model name -> {form: (module, the fast kernel, the kernel that replaces it)}: other fast forms kept beside
ALTERNATIVES = {
    "mlstm": {"parallel": ("emergelab.models.mixers.mlstm", "mlstm_chunkwise", "mlstm_parallel")},
    "mamba": {"parallel": ("emergelab.models.mixers.mamba", "selective_scan_chunked", "selective_scan")},
}


@contextlib.contextmanager
def swapped(module_name: str, fast: str, other: str) -> Iterator[None]:
    """``module.fast`` is ``module.other`` for the scope (the mixer looks its kernel up in its module)."""
    module = importlib.import_module(module_name)
    original = getattr(module, fast)
    setattr(module, fast, getattr(module, other))
    try:
        yield
    finally:
        setattr(module, fast, original)


@contextlib.contextmanager
def reference_form(name: str, model: torch.nn.Module) -> Iterator[None]:
    """Swap the model's fast kernel for its step-by-step reference for the scope."""
    from emergelab.models.mixers.common import diag_scan_naive

    if REFERENCES[name] is None:
        mixers = [block.mixer for block in model.blocks]
        before = [m.scan for m in mixers]
        for m in mixers:
            m.scan = diag_scan_naive
        try:
            yield
        finally:
            for m, scan in zip(mixers, before):
                m.scan = scan
        return
    module = importlib.import_module(REFERENCES[name][0])
    fast, slow = REFERENCES[name][1:]
    original, reference = getattr(module, fast), getattr(module, slow)
    setattr(module, fast, lambda *args, **tuning: reference(*args))  # drops the fast form's knobs (chunk)
    try:
        yield
    finally:
        setattr(module, fast, original)


def build(name: str, T: int, E: int, device: str):
    from emergelab.models import MODELS as REGISTRY

    fields = {"layers": 1, "mlp_ratio": 4.0}
    fields.update({"heads": 4, "head_dim": 16} if name == "transformer" else {"d_model": 64})
    config = REGISTRY[name](**fields).resolved(2, T)
    model = config.build(E, seeds=list(range(E))).to(device)
    return config, model


def time_step(name: str, T: int, E: int, B: int, device: str, repeats: int, form: str) -> float:
    config, model = build(name, T, E, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 2, (E, B, T + 1), device=device)

    def step() -> None:
        logits = model(tokens[..., :-1])
        loss = F.cross_entropy(logits.reshape(-1, 2), tokens[..., 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if form == "reference":
        scope = reference_form(name, model)
    elif form == "fast":
        scope = contextlib.nullcontext()
    else:
        scope = swapped(*ALTERNATIVES[name][form])
    with scope:
        step()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="sequences per member (default 4)")
    parser.add_argument("--models", help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--lengths", help="comma-separated sequence lengths (default 256,1024; --quick 64,256)")
    parser.add_argument("--members", default="1,8", help="comma-separated E values (default 1,8)")
    parser.add_argument("--forms", help="comma-separated subset of fast,reference and the ALTERNATIVES' "
                                        "names (default: all; the references take minutes at T = 1024)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mixers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = (64, 256) if args.quick else (256, 1024)
    if args.lengths:
        lengths = tuple(int(t) for t in args.lengths.split(","))
    members = tuple(int(e) for e in args.members.split(","))
    models = args.models.split(",") if args.models else MODELS
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models {','.join(unknown)}: allowed models are {', '.join(MODELS)}")
    repeats = 2 if args.quick else 3
    rows = []
    load_before = os.getloadavg()
    print(f"{'model':15s} {'form':9s} {'E':>2s} {'T':>5s} {'step ms':>10s} {'tokens/s':>10s} {'x transformer':>14s}")
    for T in lengths:
        for E in members:
            base = None
            for name in models:
                for form in ("fast", "reference", *ALTERNATIVES.get(name, {})):
                    if form == "reference" and name not in REFERENCES:
                        continue
                    if args.forms and form not in args.forms.split(",") and name != "transformer":
                        continue
                    seconds = time_step(name, T, E, args.batch, args.device, repeats, form)
                    if name == "transformer":
                        base = seconds
                    tokens_per_s = E * args.batch * T / seconds
                    ratio = seconds / base if base else float("nan")
                    rows.append({"model": name, "form": form, "E": E, "T": T, "batch": args.batch,
                                 "step_s": seconds, "tokens_per_s": tokens_per_s, "vs_transformer": ratio})
                    print(f"{name:15s} {form:9s} {E:2d} {T:5d} {seconds * 1e3:10.1f} {tokens_per_s:10.0f} {ratio:14.2f}",
                          flush=True)
    result = {"machine": platform.processor() or platform.machine(), "device": args.device,
              "torch": torch.__version__, "threads": args.threads, "load_before": load_before,
              "load_after": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
