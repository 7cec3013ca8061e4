"""match_params picks the d_model whose parameter count is closest to a target."""

import pytest

from emergelab.config import ConfigError
from emergelab.models import MODELS
from emergelab.models.sizing import match_params


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("target", [5_000, 60_000])
def test_match_params_is_closest_over_d_model(name, target):
    fields = {"layers": 2}
    config = match_params(MODELS[name], target, vocab_size=7, context_length=32, **fields)
    gap = abs(config.n_params() - target)
    for d in range(max(1, config.d_model - 8), config.d_model + 9):  # no neighbour is closer
        try:
            other = MODELS[name](**fields, d_model=d).resolved(7, 32)
        except ConfigError:
            continue
        assert abs(other.n_params() - target) >= gap
    assert config.vocab_size == 7 and config.context_length == 32


def test_match_params_respects_divisibility_and_reports_impossible_requests():
    config = match_params(MODELS["mlp_mixer"], 20_000, 7, 32, heads=5)
    assert config.d_model % 5 == 0
    with pytest.raises(ConfigError, match="model.d_model"):
        match_params(MODELS["mlp_mixer"], 20_000, 7, 32, max_d_model=3, heads=5)


@pytest.mark.parametrize("name", ["transformer", "mlp_mixer", "mamba", "gated_deltanet", "lru", "mlstm", "rwkv7"])
def test_match_params_field_sizes_every_model_from_the_config(name):
    from emergelab.train import ExperimentConfig

    target = 30_000
    cfg = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 3},
                                      "model": {"name": name, "match_params": target}})
    n = cfg.resolved().model.n_params()
    assert abs(n - target) / target < 0.15, (name, n)
    assert "match_params" not in cfg.to_dict()["model"]  # the saved config holds the chosen d_model
    assert sum(p[0].numel() for p in cfg.resolved().model.build(1).parameters()) == n


def test_a_matched_config_hashes_as_its_saved_config_reloads(tmp_path):
    """Fields given as YAML writes them (``mlp_ratio: 4``, an int) are coerced as ``build`` coerces them,
    so the matched config's hash is the one its saved config.yaml gives back: a finished run is found
    again (re-running a sweep of matched models once failed with "a different config ()")."""
    import yaml

    from emergelab.train import ExperimentConfig

    cfg = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 3},
                                      "model": {"name": "gated_deltanet", "mlp_ratio": 4, "match_params": 20_000}})
    saved = yaml.safe_load(yaml.safe_dump(cfg.resolved().to_dict()))
    assert ExperimentConfig.from_saved(saved).resolved().science_key() == cfg.resolved().science_key()


def test_match_params_field_refuses_a_budget_the_fields_cannot_meet():
    from emergelab.train import ExperimentConfig

    # the MLP-Mixer's token mixing alone is heads * T^2 = 4 * 63^2 weights at T = 63: 5,000 is out of reach
    task = {"name": "cellular-automata", "state_size": 8, "trajectory_length": 8, "alphabet": 4}
    with pytest.raises(ConfigError, match=r"model.match_params=5000: the closest mlp_mixer \(d_model=4\) has "
                                          r"\d+ parameters, \d+% off \(at most 20%\)"):
        ExperimentConfig.from_dict({"task": task, "model": {"name": "mlp_mixer", "heads": 4, "match_params": 5000}})
    one_head = ExperimentConfig.from_dict({"task": task, "model": {"name": "mlp_mixer", "heads": 1,
                                                                   "match_params": 8000}})
    assert abs(one_head.resolved().model.n_params() - 8000) <= 0.2 * 8000
