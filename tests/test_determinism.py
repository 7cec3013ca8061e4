"""Same config, same seed -> the same bits, however the work is executed.

Seed ``i``'s metrics and checkpoints are bit-identical when it trains alone, in ensembles of other sizes
and orders, in worker processes, and at 1 or 2 threads (the ops that broke this, and their fixes:
``models/layers.py:RowSoftmax``, ``train/group.py:MemberAdamW`` and ``_clip_per_member``; the training
step's attention, ``models/fast_attention.py``, keeps it with the native softmax backward at one thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from emergelab.models import TransformerConfig
from emergelab.train import ExperimentConfig, SeedGroup, train

LINEAR = {"name": "linear-map", "state_size": 6, "sparsity": 3}
CELLULAR = {"name": "cellular-automata", "state_size": 4, "trajectory_length": 4, "alphabet": 3}
COUNT = {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [3, 6]}
EXECUTIONS = {  # name: execution section
    "all-at-once-1t": {"strategy": "ensemble", "threads": 1},
    "all-at-once-2t": {"strategy": "ensemble", "threads": 2},
    "alone-1t": {"strategy": "ensemble", "threads": 1, "seed_batch": 1},
    "three-and-one-2t": {"strategy": "ensemble", "threads": 2, "seed_batch": 3},
    "workers-2x1t": {"strategy": "workers", "workers": 2},
}


def config(task: dict, execution: dict, head_dim: int = 4, **train_fields) -> ExperimentConfig:
    """head_dim 4: the torch form of the training attention; 8: the C kernel (models/native.py) where built."""
    return ExperimentConfig.from_dict({
        "task": task, "model": {"layers": 2, "heads": 3, "head_dim": head_dim, "mlp_ratio": 2},
        "train": {"steps": 40, "batch_size": 16, "lr": 0.02, "eval_every": 4, "eval_batch_size": 16, "seeds": 4,
                  "checkpoints": 3, "attention_snapshots": 2, "grad_clip": 0.05, **train_fields},
        "execution": execution})


def same_table(a, b) -> bool:
    """Two metric tables equal row for row, the values bit for bit: a NaN (an output without a ground-truth
    query, e.g. a cellular automaton's first state, has NaN attention metrics) equals the same NaN, which
    ``Table.equals`` would not grant."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = (t[name].to_numpy(zero_copy_only=False) for t in (a, b))
        if x.dtype.kind == "f":
            x, y = x.view(np.int64 if x.itemsize == 8 else np.int32), y.view(np.int64 if y.itemsize == 8 else np.int32)
        if not np.array_equal(x, y):
            return False
    return True


def checkpoints(path: Path) -> dict[str, bytes]:
    """Every checkpoint's and attention snapshot's file, as bytes (headers included: store/atomic.py sorts
    the metadata safetensors would order at random)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.safetensors"))}


@pytest.mark.parametrize("task,bias,head_dim", [(LINEAR, 0.0, 4), (CELLULAR, 0.0, 4), (LINEAR, 2.0, 4),
                                                (LINEAR, 0.0, 8)],
                         ids=["linear-map", "cellular-automata", "linear-map-bias", "linear-map-native-attention"])
def test_every_execution_gives_the_same_bits(tmp_path, task, bias, head_dim):
    runs = {name: train(config(task, execution, head_dim, bias_beta=bias), tmp_path / name, progress=False)
            for name, execution in EXECUTIONS.items()}
    reference = runs["all-at-once-1t"]
    metrics, weights = reference.metrics(), checkpoints(reference.path)
    loss = metrics.filter(pc.equal(metrics["metric"], "loss"))["value"].to_numpy()
    assert loss.max() - loss.min() > 0.01  # the weights really moved
    for name, run in runs.items():
        assert same_table(run.metrics(), metrics), name
        assert checkpoints(run.path) == weights, name
        assert run.summary() == reference.summary(), name


@pytest.mark.parametrize("task,head_dim", [(LINEAR, 4), (LINEAR, 8), (COUNT, 8)],
                         ids=["torch-attention", "native-attention", "count-loss-positions"])
def test_member_steps_are_identical_at_every_step_in_any_group(task, head_dim):
    """Lock-step: after every optimizer step, member ``i``'s parameters equal seed ``i`` trained alone,
    for groups of different sizes and orders, at 1 and 2 threads (counting: logits at its loss positions
    only, ``SeedGroup.loss_positions``)."""
    cfg = config(task, {}, head_dim, grad_clip=0.05).resolved()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = {s: SeedGroup(cfg, [s]) for s in (0, 1, 2)}
        groups = []
        for threads, seeds in ((1, [0, 1, 2]), (2, [2, 0]), (2, [1]), (1, [2, 1, 0, 3])):
            groups.append((threads, SeedGroup(cfg, seeds)))
        for step in range(12):
            torch.set_num_threads(1)
            for g in alone.values():
                g._train_step()
                g.step += 1
            for threads, g in groups:
                torch.set_num_threads(threads)
                g._train_step()
                g.step += 1
                for e, seed in enumerate(g.seeds):
                    if seed not in alone:
                        continue
                    ours, theirs = g.model.member_state_dict(e), alone[seed].model.member_state_dict(0)
                    for key in ours:
                        assert torch.equal(ours[key], theirs[key]), (step, threads, g.seeds, seed, key)
    finally:
        torch.set_num_threads(before)


def test_materialised_and_fused_attention_agree_and_materialised_is_the_default_on_cpu():
    cfg = TransformerConfig(layers=2, heads=3, head_dim=4, vocab_size=3, context_length=9).resolved(3, 9)
    model = cfg.build(2, seeds=[1, 2])
    tokens = torch.randint(0, 3, (2, 5, 9))
    default = model(tokens)
    with model.observing():
        observed = model(tokens)
    # on a CPU the default is the materialised attention of models/fast_attention.py: the observed path's
    # math with its own rounding (tests/test_fast_attention.py); without it, the observed path itself
    torch.testing.assert_close(default, observed, rtol=1e-5, atol=1e-6)
    for block in model.blocks:
        block.attn.blocked = False
    default = model(tokens)
    assert torch.equal(default, observed)
    model.use_fused_attention(True)
    fused = model(tokens)
    assert not torch.equal(fused, default)  # really another kernel ...
    torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-6)  # ... computing the same thing


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/determinism.md)")


@CUDA
def test_cuda_same_grouping_reproduces(tmp_path):
    runs = [train(config(LINEAR, {"strategy": "ensemble", "device": "cuda"}), tmp_path / f"r{k}", progress=False)
            for k in range(2)]
    a, b = (r.metrics()["value"].to_numpy() for r in runs)
    assert abs(a - b).max() < 1e-5


@CUDA
def test_cuda_member_gradient_matches_seed_alone_within_rounding():
    """On CUDA a member's bits may depend on the ensemble's size (cuBLAS picks kernels by shape): its
    first gradient agrees with the seed's own to float rounding. Adam then magnifies rounding in
    near-zero gradients (one parameter of 288 moved 1.6e-5 apart after one step on an H200) and the
    plateau amplifies it over a run (docs/determinism.md)."""
    cfg = config(LINEAR, {"device": "cuda"}).resolved()
    groups = [SeedGroup(cfg, [0, 1, 2, 3]), SeedGroup(cfg, [0])]
    grads = []
    for group in groups:
        group.optimizer.step = lambda: None  # keep the gradients the step computed (clipped per member)
        group._train_step()
        grads.append({n: p.grad[0].detach().cpu() for n, p in group.model.named_parameters()})
    together, alone = grads
    for name, g in alone.items():
        err = (together[name] - g).double().norm() / max(g.double().norm().item(), 1e-30)
        assert err < 1e-4, name


@CUDA
def test_cuda_adamw_on_whole_tensors_equals_per_member_slices():
    """MemberAdamW passes whole [E, ...] tensors to the CUDA kernel (elementwise: no tail), the CPU's
    per-member slices there would give the same bits."""
    from emergelab.train.group import MemberAdamW

    g = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(5, 7, 3, device="cuda", generator=g).requires_grad_() for _ in range(2)]
    copies = [p.detach().clone() for p in params]
    opt = MemberAdamW([{"params": params, "weight_decay": 0.01}], lr=1e-2)
    avgs = [torch.zeros_like(c) for c in copies]
    squares = [torch.zeros_like(c) for c in copies]
    steps = [torch.zeros((), device="cuda") for _ in copies]
    for _ in range(3):
        grads = [torch.randn(p.shape, device="cuda", generator=g) for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_([c[e] for c in copies for e in range(5)], [x[e] for x in grads for e in range(5)],
                            [a[e] for a in avgs for e in range(5)], [s[e] for s in squares for e in range(5)],
                            [], [s for s in steps for _ in range(5)], amsgrad=False, lr=1e-2, beta1=0.9,
                            beta2=0.999, weight_decay=0.01, eps=1e-8, maximize=False, grad_scale=None,
                            found_inf=None)
    for p, c in zip(params, copies):
        assert torch.equal(p.detach(), c)

@pytest.mark.parametrize("start", [pytest.param("fork", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU, torch refuses a backward in a child forked after one "
    "(this process ran some); start_method spawns there")), "spawn"])
def test_forked_and_spawned_workers_give_the_same_bits(tmp_path, start):
    from emergelab.train import WorkerProcesses

    reference = train(config(LINEAR, EXECUTIONS["all-at-once-1t"]), tmp_path / "ref", progress=False)
    run = train(config(LINEAR, EXECUTIONS["workers-2x1t"]), tmp_path / start, progress=False,
                executor=WorkerProcesses(2, start=start))
    assert run.metrics().equals(reference.metrics())
    assert checkpoints(run.path) == checkpoints(reference.path)
