"""The figure helpers every report module shares: one DPI, figures without pyplot, atomic PNG saves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def new_figure(width: float, height: float, constrained: bool = True) -> "Figure":
    """A ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)


LEGEND_FONTSIZE = 8
CHAR_EM = 0.55  # a character's mean width in the sans-serif font, in em (config labels: letters, digits, =)
LEGEND_WIDTH = 7.5  # inches: the width a legend is laid out for when the figure's is not given
MAX_LEGEND_ENTRIES = 24  # past this a legend would be taller than the figure: a note names where labels are


def crowded(labels: list[str]) -> bool:
    """Whether a legend of these config labels would cover the curves inside an axes: more than 6
    entries, more than 3 long ones, or one too long for a panel (over 60 characters)."""
    longest = max(map(len, labels), default=0)
    return len(labels) > 6 or (len(labels) > 3 and longest > 40) or longest > 60


def line_chars(width: float, columns: int = 1) -> int:
    """Characters of a legend entry that fit on one line of one of ``columns`` columns below axes as wide
    as a figure of ``width`` inches (the entry's handle and padding take about 5)."""
    return max(20, int(width * 72 / (CHAR_EM * LEGEND_FONTSIZE) / columns) - 5)


def legend_columns(labels: list[str], width: float = LEGEND_WIDTH) -> int:
    """Two columns below the axes when every label fits half the figure's width, else one (a fit's formula,
    a long config label)."""
    return 2 if labels and max(map(len, labels)) <= line_chars(width, 2) else 1


def wrapped(label: str, width: float = LEGEND_WIDTH, columns: int = 1) -> str:
    """``label`` broken at its spaces into lines that fit a column (a config label listing many fields ran
    past both edges of the figure)."""
    import textwrap

    return textwrap.fill(label, line_chars(width, columns), break_on_hyphens=False)


def taller_for_legend(height: float, labels: list[str], width: float = LEGEND_WIDTH) -> float:
    """A figure's height with room below the axes for the legend of ``labels`` when :func:`crowded`
    (:func:`legend_columns` columns, each label :func:`wrapped` to its column); unchanged for a legend that
    fits inside."""
    if not crowded(labels):
        return height
    if len(labels) > MAX_LEGEND_ENTRIES:
        return height + 0.5  # the note of legend_below
    columns = legend_columns(labels, width)
    lines = sum(wrapped(label, width, columns).count("\n") + 1 for label in labels)
    return height + 0.2 * -(-lines // columns) + 0.2


def legend_below(fig: "Figure", ax: Any, labels: list[str], **inside: Any) -> None:
    """``ax``'s legend inside it (``inside``: ``loc``, ``title``) unless its entries' ``labels`` are
    :func:`crowded`: then below every axes of ``fig`` (:func:`legend_columns` columns, each entry
    :func:`wrapped` to its column; the figure made taller by :func:`taller_for_legend`)."""
    if len(labels) > MAX_LEGEND_ENTRIES:
        note = (f"{len(labels)} configs, too many to name here: colours follow their order in groups.csv, "
                "where each config's label is")
        title = inside.get("title")
        fig.legend([], [], loc="outside lower center", frameon=False, fontsize=LEGEND_FONTSIZE,
                   title=f"{title}\n{note}" if title else note, title_fontsize=LEGEND_FONTSIZE)
    elif crowded(labels):
        width = fig.get_figwidth()
        columns = legend_columns(labels, width)
        handles, texts = ax.get_legend_handles_labels()
        fig.legend(handles, [wrapped(t, width, columns) for t in texts], fontsize=LEGEND_FONTSIZE,
                   loc="outside lower center", ncol=columns, title=inside.get("title"),
                   title_fontsize=LEGEND_FONTSIZE)
    else:
        ax.legend(fontsize=LEGEND_FONTSIZE, title_fontsize=LEGEND_FONTSIZE, **inside)


def save_figure(fig: "Figure", path: str | Path) -> Path:
    """Save ``fig`` as PNG atomically (the temporary name ends in .tmp, so the format is explicit)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def colors(n: int) -> list[Any]:
    """``n`` distinguishable colours: tab10 up to 10, else evenly spaced viridis."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(k if n <= 10 else k / max(1, n - 1)) for k in range(n)]


def fit_lines(fig: Any, text: str, fontsize: float) -> str:
    """``text`` with each line wrapped at its words to the width of ``fig`` (a suptitle longer than the
    figure was cut at both ends). About 0.6 em a character: a conservative width for the sans-serif font."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def describe(config: Any, sep: str = " | ") -> str:
    """The task (as seed 0 drew it, as ``task.json`` records it), the model and the key training knobs of
    an ``ExperimentConfig``, joined by ``sep``."""
    from ..tasks import seed_task

    task, model, train = config.task, config.model, config.train
    what = seed_task(task, train.seed, 0).describe()
    parts = [] if model.name == "transformer" else [model.name]
    n_layers = getattr(model, "layers", None)
    if n_layers is not None:
        parts.append(f"{n_layers} layer" + ("s" if n_layers > 1 else ""))
    for field, label in (("heads", "heads"), ("head_dim", "head_dim"), ("width", "d_model")):
        if getattr(model, field, None) is not None:
            value = getattr(model, field)
            parts.append((f"{value} head" + ("s" if value != 1 else "")) if field == "heads" else f"{label} {value}")
    parts.append(f"MLP x{model.mlp_ratio:g}" if getattr(model, "mlp_ratio", 0) else "no MLP")
    if getattr(model, "positions", "learned") == "none":
        parts.append("no positional encoding")
    arch = ", ".join(parts)
    # no-break spaces: a wrapped title never parts a knob from its value
    knobs = f"lr\u00a0{train.lr:g}, batch\u00a0{train.batch_size}, master\u00a0seed\u00a0{train.seed}"
    return sep.join([what, arch, knobs] + [part for part in (_intervention(train),) if part])


def _intervention(train: Any) -> str:
    """The attention bias and pre-training a run trained with ("" for neither): figures of a biased run
    and of its control must not read the same."""
    parts = []
    if getattr(train, "bias_beta", 0):
        where = [f"layers\u00a0{list(v)}" if k == "layers" else f"heads\u00a0{list(v)}"
                 for k, v in (("layers", train.bias_layers), ("heads", train.bias_heads)) if v != "all"]
        until = (f", {'fading to 0 by' if train.bias_schedule == 'linear' else 'until'} step\u00a0{train.bias_steps}"
                 if train.bias_steps else "")
        parts.append(f"attention bias \u03b2\u00a0{train.bias_beta:g} ({', '.join(where) or 'all heads'}{until})")
    if getattr(train, "pretrain", "none") != "none":
        parts.append(f"pre-trained on {train.pretrain} for {train.pretrain_steps} steps")
    return ", ".join(parts)
