"""The reproduction targets: for each synthetic-task figure of the paper, the sweep files that make its
runs, the config fields that define its configs, and the paper's claim it tests (``../shared/PAPER.md``).

A target's sweep files live in ``sweeps/`` beside this module: each is an ordinary sweep file
(``emergelab sweep FILE --scale cpu`` runs one by hand) whose ``scales`` hold the ``smoke`` and ``cpu``
sizes; the file as written is the ``paper`` size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SWEEPS = Path(__file__).resolve().parent / "sweeps"
SCALES = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class Target:
    """One figure of the paper.

    name: what ``emergelab reproduce NAME`` takes. parts: sweep files (stems under ``sweeps/``), each run
    into ``OUT/<part>``. by: config fields that define a config in the analysis (every other field that
    differs defines configs too). vs: the field of the plateau-scaling figure (None: no such figure).
    claim: the paper's claim, as ``docs/results.md`` quotes it beside ours. figure: the target's own
    figure beside the generic ones (``figures.py``).

    analysis: "runs" (the default: ``analysis.runs.analyze_runs``, its table and the generic figures) or
    "scales": the across-scales table and figure of ``analysis/scales.py`` instead, with ``by[0]`` as the
    scale, the final value of metric ``outcome`` (index "") per seed as the outcome, and success at
    ``outcome >= threshold``."""

    name: str
    parts: tuple[str, ...]
    by: tuple[str, ...]
    vs: str | None
    claim: str
    figure: str | None = None
    analysis: str = "runs"
    outcome: str | None = None
    threshold: float = 0.5

    def sweep_files(self) -> list[Path]:
        return [SWEEPS / f"{part}.yaml" for part in self.parts]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("sparsity", ("sparsity",), ("task.state_size", "task.sparsity"), "task.sparsity",
           "Linear map: learning is hardest at intermediate sparsity (s ~ S/2: C(S, s) candidate patterns per "
           "row); final loss and emergence step against s/S for S in {8, 16, 32}, 10k steps, 3 seeds.",
           figure="sparsity"),
    Target("state-size", ("state-size",), ("task.state_size", "train.bias_beta", "task.rules"), "task.state_size",
           "Cellular automata at a fixed token batch (S x T x batch constant): the plateau before the loss "
           "first drops grows multiplicatively with S; biasing attention toward the ground truth removes it. "
           "The paper's small-S losses lie below the fresh-rule floor, so it likely draws rules from a pool.",
           figure="bias"),
    Target("repeated-rules", ("repeated-rules", "repeated-rules-mixture"), ("task.rules", "task.pool_fraction"), None,
           "Zucchet et al. (The emergence of sparse attention): repetition shortens the plateau before sparse "
           "attention emerges. Here cross-sample repetition on the cellular automata: each sequence draws its "
           "rule from a pool of task.rules tables, so a smaller pool repeats each rule across more sequences "
           "(Baherwani et al. vary the number of rules in the pool); a fresh rule per sequence (task.rules = 0) "
           "is the limit of no repetition. Second part: a fraction task.pool_fraction of sequences from a pool of "
           "4, the rest fresh (Zucchet et al. repeat a fraction of the examples); every part also measures the "
           "loss on fresh rules, which in-context inference lowers and a memorised pool does not.",
           figure="repeated-rules"),
    Target("trajectory", ("trajectory",), ("task.trajectory_length",), "task.trajectory_length",
           "Cellular automata: the plateau against the trajectory length T at fixed S (published sweeps vary T)."),
    Target("width", ("width-linear-map", "width-cellular-automata"), ("task.name", "model.heads", "model.head_dim"),
           None,
           "More heads at fixed head dim, more heads at fixed width (smaller heads) and head dim at fixed heads "
           "change how fast the pattern is found (both tasks).", figure="width"),
    Target("layers", ("layers-linear-map", "layers-cellular-automata"), ("task.name", "model.layers"),
           "model.layers", "Depth from 1 to 12 layers (both tasks)."),
    Target("per-position", ("per-position",), (), None,
           "The S losses of x1 fall one at a time, each after its own plateau (the aggregate curve is "
           "jagged); the head whose entropy drops when a position's loss drops is the one that learned "
           "that row of the pattern.", figure="per-position"),
    Target("seeds", ("seeds",), (), None,
           "Across seeds: emergence steps are spread over training; P(solved by t), the mean of solved runs, "
           "bimodality of final performance (Zhao et al.: outcomes across seeds are bimodal near a threshold).",
           figure="seeds"),
    Target("random-scaling", ("random-scaling",), ("model.layers",), None,
           "Zhao et al. (Random Scaling of Emergent Capabilities): on length-generalization tasks trained over "
           "hundreds of seeds per model size, the outcome across seeds is bimodal near a capacity threshold; "
           "scale raises the fraction of seeds in the successful mode smoothly, while the mean over seeds "
           "looks like an abrupt breakthrough.",
           analysis="scales", outcome="ood_accuracy", threshold=0.5),
    Target("lm-emergence", ("lm-emergence",), ("model.d_model",), "model.d_model",
           "Pythia (10 seeds per size): in-context repetition appears at a random, seed-dependent step, abruptly, "
           "coinciding with specific heads learning their attention patterns; larger models get it earlier on "
           "average; patching a few heads' attention from a later checkpoint into an earlier one recovers much "
           "of it. Here on emergelab's own mini-suite (tasks/repetition.py): 3 sizes x 8 seeds at cpu scale.",
           figure="lm-emergence"),
    Target("pre-pretraining", ("pre-pretraining",), ("train.pretrain",), None,
           "Pre-pretraining on formal languages (Dyck) or neural cellular automata before language training makes "
           "the in-context repetition capability emerge earlier. Here on the mini-suite's corpus "
           "(tasks/repetition.py) after no pre-training, a k-Dyck stream or an NCA stream (tasks/pretraining.py), "
           "one model size, several seeds per arm: steps to emergence counted from the task's start and from "
           "training's, and the extra tokens the pre-training spent.",
           figure="pre-pretraining"),
    Target("mixers", ("mixers-linear-map", "mixers-cellular-automata"), ("task.name", "task.sparsity", "model.name"),
           None,
           "Alternative sequence mixers at a matched parameter count: a causal MLP-Mixer learns the sparse "
           "linear map far faster than a transformer but loses on the cellular automata; recurrent / "
           "state-space models (Mamba, Gated DeltaNet, RWKV; xLSTM and LRU cited) behave differently again.",
           figure="mixers"),
)}
