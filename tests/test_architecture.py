"""The seams of the architecture (docs/architecture.md), each exercised from outside the package:

* a model with no attention at all, defined and registered in this file alone, trains through
  ``train()`` and ``emergelab run --set model.name=...``, gets loss/accuracy per output and no attention
  metrics;
* a parameter without an initialiser is an error, never a silent zero;
* the store imports and works without importing a model or the trainer;
* nothing imports upward (``shared/tools/layers.py`` reports no circle);
* a custom measurement and a custom executor plug in through ``SeedGroup`` / ``train``;
* a task (or model) that an installed package declares as an entry point is found by every process:
  training in worker processes, then a later ``emergelab report`` / ``list``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pyarrow.compute as pc
import pytest
import torch
from torch import nn

from emergelab.cli import main
from emergelab.models import MODELS, SequenceModel, normal, register_model, zeros
from emergelab.train import ExperimentConfig, InProcess, Metric, SeedGroup, default_measurements, train

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------
# A causal bag-of-tokens model: logits at t depend on the mean embedding of tokens 0..t. No attention.
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BagConfig:
    name: ClassVar[str] = "bag-of-tokens"
    width: int = 8
    vocab_size: int | None = None
    context_length: int | None = None

    def resolved(self, vocab_size: int, context_length: int) -> "BagConfig":
        return replace(self, vocab_size=vocab_size, context_length=context_length)

    def n_params(self) -> int:
        return 2 * self.vocab_size * self.width + self.context_length * self.width + self.vocab_size

    def flops_per_token(self) -> int:
        return 2 * self.width * self.vocab_size

    def build(self, n_models: int = 1, seeds: list[int] | None = None) -> "Bag":
        return Bag(self, n_models, seeds)


class Bag(SequenceModel):
    def __init__(self, config: BagConfig, n_models: int = 1, seeds: list[int] | None = None):
        super().__init__(config, n_models)
        E, V, d, T = n_models, config.vocab_size, config.width, config.context_length
        self.embed = nn.Parameter(torch.empty(E, V, d))
        self.pos = nn.Parameter(torch.empty(E, T, d))
        self.unembed = nn.Parameter(torch.empty(E, d, V))
        self.bias = nn.Parameter(torch.empty(E, V))
        self.finish_init(seeds)

    def init_specs(self):
        return {"embed": normal(0.5), "pos": normal(0.5), "unembed": normal(0.5), "bias": zeros}

    def forward_members(self, tokens: torch.Tensor) -> torch.Tensor:  # [E, B, T] -> [E, B, T, V]
        E, B, T = tokens.shape
        x = torch.stack([self.embed[e][tokens[e]] for e in range(E)]) + self.pos[:, None, :T]  # [E, B, T, d]
        counts = torch.arange(1, T + 1, device=tokens.device, dtype=x.dtype)[None, None, :, None]
        mean = x.cumsum(dim=2) / counts  # causal: position t sees tokens 0..t
        return torch.einsum("ebtd,edv->ebtv", torch.tanh(mean), self.unembed) + self.bias[:, None, None]


@pytest.fixture
def bag_registered():
    register_model(BagConfig)
    yield
    MODELS.pop(BagConfig.name, None)


def bag_experiment(**train_fields) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"name": "bag-of-tokens", "width": 8},
        "train": {"steps": 30, "batch_size": 16, "eval_every": 10, "eval_batch_size": 32, "seeds": 2,
                  "lr": 0.01, "checkpoints": 2, "attention_snapshots": 2, **train_fields},
        "execution": {"strategy": "ensemble"}})


def test_a_model_without_attention_trains_through_train(bag_registered, tmp_path):
    config = bag_experiment()
    assert config.model.name == "bag-of-tokens"
    run = train(config, tmp_path / "bag", progress=False)
    table = run.metrics()
    metrics = set(table["metric"].to_pylist())
    assert {"loss", "accuracy", "target_prob", "loss_pos", "accuracy_pos", "target_prob_pos", "train_loss",
            "lr"} <= metrics
    assert not any(m.startswith("attn") for m in metrics)
    loss_pos = table.filter(pc.equal(table["metric"], "loss_pos"))
    assert sorted(set(loss_pos["index"].to_pylist()), key=int) == ["0", "1", "2", "3"]  # one per bit of x1
    assert sorted(set(table["seed"].to_pylist())) == [0, 1]
    assert not (run.path / "attention").exists()  # nothing to snapshot
    assert run.checkpoint_steps(1) == [0, 1, 30]
    summary = run.summary()
    assert set(summary["seeds"]) == {"0", "1"} and len(summary["seeds"]["0"]["learned_step"]) == 4
    saved = json.loads((run.path / "task.json").read_text())
    assert saved["output_optima"] == [0.0] * 4 and saved["labels"][0] == "bit 0"
    # the bias intervention needs attention scores: refused before any work
    from emergelab.config import ConfigError

    with pytest.raises(ConfigError, match="train.bias_beta"):
        train(bag_experiment(bias_beta=2.0), tmp_path / "biased", progress=False)


def test_a_model_without_attention_trains_through_the_cli(bag_registered, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["run", "linear-map", "--set", "model.name=bag-of-tokens", "--set", "model.width=6",
                 "--set", "task.state_size=4", "--set", "task.sparsity=1", "--steps", "20", "--seeds", "2",
                 "--strategy", "ensemble", "--set", "train.eval_every=10", "--set", "train.eval_batch_size=16",
                 "--set", "train.batch_size=8", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "step at which each output emerged" in printed
    assert (out / "figures" / "loss.png").exists()  # per-output figure; no attention figures
    assert not (out / "figures" / "attention_entropy.png").exists()
    assert main(["run", "linear-map", "--set", "model.name=nope", "--out", str(tmp_path / "x")]) == 2
    assert "model.name='nope'" in capsys.readouterr().err


def test_member_of_the_toy_ensemble_equals_the_single_model(bag_registered):
    config = BagConfig(width=5).resolved(3, 9)
    ensemble, single = config.build(3, seeds=[4, 5, 6]), config.build(1, seeds=[5])
    tokens = torch.randint(0, 3, (3, 2, 9))
    assert torch.equal(ensemble(tokens)[1], single(tokens[1]))
    assert torch.equal(ensemble.member(1)(tokens[1]), single(tokens[1]))


def test_a_model_that_cannot_select_positions_computes_all_and_returns_the_selected():
    model = BagConfig().resolved(5, 9).build(n_models=2, seeds=[3, 4])
    tokens = torch.randint(0, 5, (2, 4, 9), generator=torch.Generator().manual_seed(0))
    full = model(tokens)
    assert torch.equal(model(tokens, positions=slice(3, 9)), full[:, :, 3:])
    assert torch.equal(model(tokens, positions=torch.tensor([0, 2, 8])), full[:, :, [0, 2, 8]])


def test_a_parameter_without_an_initialiser_is_an_error():
    class Forgetful(Bag):
        def __init__(self, config, n_models=1, seeds=None):
            SequenceModel.__init__(self, config, n_models)
            self.embed = nn.Parameter(torch.empty(n_models, 2, 2))
            self.extra = nn.Parameter(torch.empty(n_models, 2))
            self.finish_init(seeds)

        def init_specs(self):
            return {"embed": normal(1.0)}

    with pytest.raises(TypeError, match="extra has no initialiser"):
        Forgetful(BagConfig(width=2).resolved(2, 3))


# ------------------------------------------------------------------------------------------------------
# Measurements and executors plug in from outside
# ------------------------------------------------------------------------------------------------------
class FirstLogit:
    """A custom measurement: the mean first logit per member."""

    snapshot_name = None

    def applies(self, model):
        return True

    def hooks(self, model):
        return []

    def measure(self, data):
        return [Metric("first_logit", [""], data.logits[..., 0].mean((1, 2)).double().cpu().numpy()[:, None])]

    def snapshot(self, data):
        return None


def test_a_custom_measurement_is_recorded():
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                                         "train": {"steps": 5, "eval_every": 5, "eval_batch_size": 8,
                                                   "attention_snapshots": 0}}).resolved()
    group = SeedGroup(config, [0, 1], measurements=[*default_measurements(), FirstLogit()])
    group.train()
    table = group.metrics.table()
    assert table.filter(pc.equal(table["metric"], "first_logit")).num_rows == 2 * 2  # 2 probes x 2 seeds


@pytest.mark.parametrize("strategy", ["ensemble", "workers"])
def test_train_records_an_extra_measurement_beside_the_defaults(tmp_path, strategy):
    """``train(..., measurements=[...])``: the extra metric in metrics.parquet, every default one kept and
    the numbers unchanged (a measurement only reads); in worker processes too (the unit carries it)."""
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                                         "train": {"steps": 10, "eval_every": 5, "eval_batch_size": 8, "seeds": 2,
                                                   "attention_snapshots": 0, "checkpoints": 0},
                                         "execution": {"strategy": strategy, "workers": 2}})
    plain = train(config, tmp_path / "plain", progress=False).metrics()
    extra = train(config, tmp_path / "extra", progress=False, measurements=[FirstLogit()]).metrics()
    mine = pc.equal(extra["metric"], "first_logit")
    assert extra.filter(mine).num_rows == 3 * 2  # probes at 0, 5, 10 x 2 seeds
    assert extra.filter(pc.invert(mine)).equals(plain)


def test_extra_measurements_keep_the_tasks_own_evaluations():
    """Passing ``measurements=[...]`` replaces the defaults, the held-out length evaluation included;
    ``extra_measurements`` adds to them."""
    config = ExperimentConfig.from_dict({"task": {"name": "count"},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                                         "train": {"steps": 2, "eval_every": 2, "eval_batch_size": 8}}).resolved()
    names = [type(m).__name__ for m in SeedGroup(config, [0], extra_measurements=[FirstLogit()]).measurements]
    assert "LengthEval" in names and names[-1] == "FirstLogit"
    assert "LengthEval" not in [type(m).__name__ for m in SeedGroup(config, [0], measurements=[FirstLogit()]).measurements]


def test_a_custom_executor_receives_the_units(tmp_path):
    seen = []

    class Recording(InProcess):
        def map(self, units, on_progress=None):
            seen.extend((u.group, u.seeds, u.threads) for u in units)
            super().map(units, on_progress)

    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                                         "train": {"steps": 5, "eval_every": 5, "eval_batch_size": 8, "seeds": 3},
                                         "execution": {"strategy": "ensemble", "seed_batch": 2, "threads": 1}})
    run = train(config, tmp_path / "run", executor=Recording(), progress=False)
    assert seen == [(0, (0, 1), 1), (1, (2,), 1)]
    assert run.is_complete() and sorted(set(run.metrics()["seed"].to_pylist())) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------------
def test_store_works_without_models_or_the_trainer(tmp_path):
    script = f"""
import sys
import numpy as np
from emergelab.store import MetricsBuffer, RunDir, connect, write_parquet
run = RunDir({str(tmp_path / 'plain')!r})
run.write_config({{"task": {{"name": "linear-map"}}, "train": {{"seeds": 1}}}})
run.write_task_info({{"output_name": "bit", "n_outputs": 1, "labels": ["bit 0"], "optimal_loss": 0.1,
                      "output_optima": [0.0], "describe": "plain"}})
buffer = MetricsBuffer()
buffer.add(0, np.array([0]), "loss", [""], np.array([[0.7]]))
write_parquet(run.metrics_path, buffer.table())
con = connect(run.path)
assert con.sql("SELECT value FROM metrics").fetchall() == [(0.7,)]
assert con.sql("SELECT optimum FROM optima ORDER BY index").fetchall() == [(0.1,), (0.0,)]
loaded = [m for m in sys.modules if m.startswith("emergelab.")]
assert not any(m.startswith(("emergelab.models", "emergelab.train", "emergelab.analysis")) for m in loaded), loaded
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_imports_flow_one_way():
    tool = ROOT.parent / "shared" / "tools" / "layers.py"
    if not tool.exists():
        pytest.skip("shared/tools/layers.py is not beside this checkout")
    out = subprocess.run([sys.executable, str(tool), str(ROOT / "src" / "emergelab")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "CIRCLE" not in out.stdout, out.stdout


# ------------------------------------------------------------------------------------------------------
# Plugins: tasks and models that installed packages declare as entry points
# ------------------------------------------------------------------------------------------------------
PLUGIN = """
from dataclasses import dataclass
from typing import ClassVar

from emergelab.tasks import LinearMapConfig


@dataclass(frozen=True)
class PluginMapConfig(LinearMapConfig):
    name: ClassVar[str] = "plugin-map"


@dataclass(frozen=True)
class MisnamedConfig(LinearMapConfig):
    name: ClassVar[str] = "something-else"
"""
ENTRY_POINTS = """[emergelab.tasks]
plugin-map = emergelab_test_plugin:PluginMapConfig
misnamed = emergelab_test_plugin:MisnamedConfig
broken = emergelab_test_plugin_missing:Config
"""


@pytest.fixture
def plugin_path(tmp_path):
    """A folder that makes ``emergelab_test_plugin`` an installed distribution declaring three tasks."""
    (tmp_path / "emergelab_test_plugin.py").write_text(PLUGIN)
    info = tmp_path / "emergelab_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: emergelab-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return tmp_path


def test_a_task_declared_as_an_entry_point_is_found_by_every_process(plugin_path, tmp_path):
    env = {**__import__("os").environ, "PYTHONPATH": str(plugin_path), "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "emergelab.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    out = tmp_path / "run"
    done = cli("run", "plugin-map", "--steps", "6", "--seeds", "2", "--set", "model.head_dim=4",
               "--set", "model.heads=2", "--set", "train.eval_every=3", "--set", "execution.strategy=workers",
               "--set", "execution.workers=2", "--out", str(out), "--quiet", "--no-figures")
    assert done.returncode == 0, done.stderr
    assert "task:\n  name: plugin-map" in (out / "config.yaml").read_text()
    report = cli("report", str(out))  # a later process reads the run's config: it finds the plugin again
    assert report.returncode == 0, report.stderr
    listed = cli("list")
    assert listed.returncode == 0 and "  plugin-map\n    task.* fields: state_size=8" in listed.stdout
    assert "  broken\n    not usable: task.name='broken': its plugin" in listed.stdout  # listed with its error
    for name, message in (("misnamed", "the entry point's name must be the class's name"),
                          ("broken", "failed to load: ModuleNotFoundError")):
        bad = cli("run", name, "--steps", "6", "--out", str(tmp_path / name))
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / name).exists()
    unknown = cli("run", "nope", "--out", str(tmp_path / "nope"))
    assert unknown.returncode == 2 and "plugin-map" in unknown.stderr  # the allowed names include the plugins'
