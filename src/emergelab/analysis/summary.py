"""``summary.json`` of a run: per seed, the final loss and the step at which each output emerged.

The steps come from :func:`~emergelab.analysis.emergence.curve_emergence` with its defaults, the same
call the figures' markers and ``emergelab analyze`` make, so every place that prints "the step at which
output i was learned" prints the same number.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..store import RunDir, connect
from .emergence import curve_emergence
from .fetch import step0_by_seed


def summarize_run(run: RunDir) -> dict[str, Any]:
    """``{"task", "steps", "optimal_loss", "output_labels", "seeds": {seed: {...}}}`` where each seed has
    ``final_loss``, ``learned_step`` (output index -> emergence step, None if not yet), ``n_learned``
    and ``all_learned`` (every output with something to learn: ``not_judged`` lists the others, e.g. a
    cellular automaton's uniform first state, when there are any; ``not_measured`` those no held-out
    sequence had, whose metrics are NaN), and ``fan_in`` (output index -> the fewest tokens it is a function
    of, earlier outputs included) where the task records it (the linear map), and ``fresh_loss`` (the last
    ``fresh_loss``: on ground truth outside the pool) where the run trained on a pool, whose floor is then
    ``fresh_optimal_loss``; with pre-training (``train.pretrain``) also ``"pretrain"``: see
    :func:`pretrain_record`."""
    config = run.read_config_dict()
    info = run.task_info() or {}
    con = connect(run.path)
    try:  # closed explicitly: a DuckDB connection left to interpreter exit can abort the process
        emergence, _ = curve_emergence(con)
        final = {int(seed): float(value) for seed, value in con.sql(
            "SELECT seed, arg_max(value, step) FROM metrics WHERE metric = 'loss' GROUP BY seed").fetchall()}
        fresh = {seed: value for (_, seed), value in fresh_loss_by_seed(con).items()}  # one run
        fan_in = {seed: fans for (_, seed), fans in fan_in_by_seed(con).items()}
    finally:
        con.close()
    seeds: dict[str, dict[str, Any]] = {}
    for row in sorted(emergence.to_pylist(), key=lambda r: (r["seed"], r["target"])):
        if not row["target"].startswith("pos:"):
            continue
        entry = seeds.setdefault(str(row["seed"]), {"final_loss": final.get(int(row["seed"])), "learned_step": {},
                                                    "not_judged": []})
        entry["learned_step"][row["target"][4:]] = int(row["step"]) if row["emerged"] else None
        if not row["judged"]:
            entry["not_judged"].append(row["target"][4:])
    n_outputs = int(info.get("n_outputs") or 0)
    for seed, entry in seeds.items():
        if int(seed) in fresh:  # a task trained on a pool: the loss on fresh ground truth (FreshEval)
            entry["fresh_loss"] = fresh[int(seed)]
        if int(seed) in fan_in:  # the task's per-output fan-in (the linear map: 1 = a copy of an earlier output)
            entry["fan_in"] = dict(sorted(fan_in[int(seed)].items(), key=lambda kv: int(kv[0])))
        # an output without a finite curve: no held-out sequence had it (tasks.SampleOutputTask)
        unmeasured = [str(i) for i in range(n_outputs) if str(i) not in entry["learned_step"]]
        entry["learned_step"].update({i: None for i in unmeasured})
        if unmeasured:
            entry["not_measured"] = unmeasured
        entry["learned_step"] = dict(sorted(entry["learned_step"].items(), key=lambda kv: int(kv[0])))
        learned = [s for s in entry["learned_step"].values() if s is not None]
        entry["n_learned"] = len(learned)
        entry["all_learned"] = (not unmeasured  # an output not measured is not known to be learned
                                and len(learned) == len(entry["learned_step"]) - len(entry["not_judged"]))
        if not entry["not_judged"]:
            del entry["not_judged"]
        else:
            entry["not_judged"] = sorted(entry["not_judged"], key=int)
    pretrain = pretrain_record(config)
    return {"task": config["task"]["name"], "steps": config["train"]["steps"],
            "optimal_loss": info.get("optimal_loss"), "output_labels": info.get("labels"),
            **({"fresh_optimal_loss": info["fresh_optimal_loss"]} if "fresh_optimal_loss" in info else {}),
            **({"pretrain": pretrain} if pretrain else {}),
            "seeds": dict(sorted(seeds.items(), key=lambda kv: int(kv[0])))}


def copy_outputs(fan_in: Mapping[str, int]) -> set[str]:
    """The outputs of one seed equal to an earlier output, from its ``fan_in`` (output -> fan-in): fan-in 1
    where the task's own is more. Output 0 has no earlier output, so its fan-in is the task's own and the
    largest (1 at s = 1, where every bit reads one key and a repeated row is no shortcut)."""
    top = max(fan_in.values(), default=1)
    return {k for k, fan in fan_in.items() if fan == 1 < top}


def fan_in_by_seed(con: Any) -> dict[tuple[str, int], dict[str, int]]:
    """The step-0 ``fan_in`` metric of every run and seed in the store ``con``: ``(run, seed)`` -> output
    index -> fan-in (none for a task that does not record it)."""
    return {key: {i: int(v) for i, v in fans.items()} for key, fans in step0_by_seed(con, "fan_in").items()}


def fresh_loss_by_seed(con: Any) -> dict[tuple[str, int], float]:
    """The last ``fresh_loss`` (index ``""``: on ground truth outside the pool, ``train.measure_ood.FreshEval``)
    of every run and seed in the store ``con`` that trained on a pool: ``(run, seed)`` -> loss."""
    return {(run, int(seed)): float(value) for run, seed, value in con.sql(
        "SELECT run, seed, arg_max(value, step) FROM metrics WHERE metric = 'fresh_loss' AND \"index\" = '' "
        "GROUP BY run, seed").fetchall()}


def copied_outputs(con: Any) -> set[tuple[str, int, int]]:
    """:func:`copy_outputs` of every run and seed in the store ``con``, as ``(run, seed, output)``."""
    return {(run, seed, int(k)) for (run, seed), fans in fan_in_by_seed(con).items() for k in copy_outputs(fans)}


def pretrain_record(config: dict[str, Any]) -> dict[str, Any] | None:
    """The pre-training of a saved (resolved) config, None without: ``stream``, ``steps`` (the first
    optimizer steps, counted in every step number), ``tokens_per_seed`` (tokens of the sequences trained
    on: steps x batch x sequence length) and ``task_tokens_per_seed`` (the same for the task's steps)."""
    train = config["train"]
    stream, steps = train.get("pretrain", "none"), int(train.get("pretrain_steps", 0))
    if stream == "none":
        return None
    per_step = int(train["batch_size"]) * (int(config["model"]["context_length"]) + 1)
    return {"stream": stream, "steps": steps, "tokens_per_seed": steps * per_step,
            "task_tokens_per_seed": (int(train["steps"]) - steps) * per_step}
