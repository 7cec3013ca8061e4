"""The training step replayed from a CUDA graph (``train/graphed.py``, ``execution.cuda_graphs``).

On a CPU: the setting is validated and never used. On a CUDA device: the graphed run computes what the
eager run computes (bit for bit where the kernels are deterministic: the materialised attention under
``torch.use_deterministic_algorithms``; within float rounding with the default fused attention), across
probes, data-chunk boundaries and the switch from pre-training to the task, through a resume, for every
model that allows capture; a model that reads the GPU back during the step falls back to eager training
with a warning.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from emergelab.config import ConfigError
from emergelab.models import MODELS
from emergelab.store import RunDir
from emergelab.train import ExperimentConfig, SeedGroup, train
from emergelab.train.graphed import GraphCaptureWarning, GraphedStep

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LINEAR = {"name": "linear-map", "state_size": 6, "sparsity": 3}


def config(graphs: str = "auto", device: str = "cuda", model: dict | None = None, **train_fields) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": LINEAR, "model": model or {"layers": 2, "heads": 3, "head_dim": 4, "mlp_ratio": 2},
        "train": {"steps": 40, "batch_size": 16, "lr": 0.02, "eval_every": 4, "eval_batch_size": 16, "seeds": 4,
                  "checkpoints": 3, "attention_snapshots": 2, "grad_clip": 0.05, "warmup_steps": 5,
                  **train_fields},
        "execution": {"strategy": "ensemble", "device": device, "cuda_graphs": graphs}}).resolved()


def test_cuda_graphs_setting_is_validated_and_unused_on_a_cpu():
    with pytest.raises(ConfigError, match="execution.cuda_graphs.*auto, off"):
        config(graphs="always", device="cpu")
    assert config(graphs=False, device="cpu").execution.cuda_graphs == "off"  # `--set ...=off` in YAML
    assert config(graphs=True, device="cpu").execution.cuda_graphs == "auto"
    group = SeedGroup(config(device="cpu"), [0, 1])
    assert group.graphed is None and group.lr is None
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(lambda tokens, weights: None, torch.device("cpu"))
    assert not MODELS["mamba"].model_class.capturable  # its chunked scan reads a bound back from the GPU
    assert SeedGroup(config(device="cpu"), [0]).model.capturable


@pytest.fixture
def deterministic():
    """Deterministic CUDA kernels (cuBLAS needs its workspace setting for that)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def trained(cfg: ExperimentConfig, materialised: bool, run: RunDir | None = None, stop_after: int | None = None,
            resume: bool = False) -> SeedGroup:
    group = SeedGroup(cfg, [0, 1, 2, 3], run=run)
    if materialised:
        group.model.use_fused_attention(False)
    if resume:
        assert group.resume()
    group.train(stop_after=stop_after)
    return group


def same_bits(a: SeedGroup, b: SeedGroup) -> None:
    assert a.metrics.table().equals(b.metrics.table())
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), name


@CUDA
@pytest.mark.parametrize("pretrain", [{}, {"pretrain": "dyck", "pretrain_steps": 10}], ids=["task", "pretrain"])
def test_cuda_graphed_training_equals_eager_bit_for_bit(deterministic, pretrain):
    graphed = trained(config("auto", **pretrain), materialised=True)
    eager = trained(config("off", **pretrain), materialised=True)
    assert graphed.graphed is not None and graphed.graphed.graph is not None  # really replayed
    assert eager.graphed is None
    same_bits(graphed, eager)


@CUDA
def test_cuda_graphed_run_resumes_bit_for_bit(deterministic, tmp_path):
    cfg = config("auto")
    whole = trained(cfg, materialised=True)
    run = RunDir(tmp_path / "run")
    first = trained(cfg, materialised=True, run=run, stop_after=20)
    first.save_state()
    resumed = trained(cfg, materialised=True, run=run, resume=True)
    assert resumed.graphed is not None and resumed.graphed.graph is not None
    same_bits(resumed, whole)


@CUDA
def test_cuda_graphed_training_agrees_with_eager_under_the_default_kernels(tmp_path):
    runs = {g: train(config(g), tmp_path / g, progress=False) for g in ("auto", "off")}
    a, b = (r.metrics().sort_by([("step", "ascending"), ("seed", "ascending"), ("metric", "ascending"),
                                 ("index", "ascending")])["value"].to_numpy() for r in runs.values())
    assert np.abs(a - b).max() < 1e-4


MIXERS = [name for name in MODELS if name != "transformer"]


@CUDA
@pytest.mark.parametrize("name", MIXERS)
def test_cuda_every_mixer_trains_the_same_graphed(name, recwarn):
    model = {"name": name, "layers": 2}
    graphed = trained(config("auto", model=model, steps=20), materialised=False)
    eager = trained(config("off", model=model, steps=20), materialised=False)
    if MODELS[name].model_class.capturable:
        assert graphed.graphed is not None and graphed.graphed.graph is not None, name
    else:
        assert graphed.graphed is None
    a = graphed.metrics.table()["value"].to_numpy()
    b = eager.metrics.table()["value"].to_numpy()
    assert np.abs(a - b).max() < 1e-4, name


@CUDA
def test_cuda_a_step_that_reads_the_gpu_back_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(MODELS["mamba"].model_class, "capturable", True)
    cfg = config("auto", model={"name": "mamba", "layers": 1}, steps=8)
    with pytest.warns(GraphCaptureWarning, match="could not be captured.*without CUDA graphs"):
        fallback = trained(cfg, materialised=False)
    assert fallback.graphed is None
    eager = trained(config("off", model={"name": "mamba", "layers": 1}, steps=8), materialised=False)
    a, b = fallback.metrics.table()["value"].to_numpy(), eager.metrics.table()["value"].to_numpy()
    assert np.abs(a - b).max() < 1e-4


@CUDA
def test_cuda_default_kernels_rerun_bit_for_bit():
    """With the small heads' batched-product attention (``transformer.bmm_attention``, heads of at most
    ``MATH_SDPA_MAX_HEAD_DIM``) and the Triton layer norm nothing in the step accumulates with atomics: a
    rerun, graphed or not, gives the same bits."""
    graphed = [trained(config("auto"), materialised=False) for _ in range(2)]
    same_bits(*graphed)
    same_bits(graphed[0], trained(config("off"), materialised=False))
