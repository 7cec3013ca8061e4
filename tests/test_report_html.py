"""The interactive HTML report (``emergelab report RUN_OR_SWEEP --html``, ``report/html.py``).

Data preparation (downsampling, plotly embedded once, nothing fetched, a 64-seed page under 20 MB), the CLI,
and the page in a real headless chromium (no console errors, plots and the attention slider render, a
non-blank screenshot). The browser tests skip only when no chromium binary is found
(``scripts/ensure_chromium.sh``, run by ``make test``, installs Debian's) or Playwright is missing.
"""

from __future__ import annotations

import io
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from emergelab.cli import main
from emergelab.models import TransformerConfig
from emergelab.report.html import MAX_POINTS, downsample, render_page, run_page, write_html
from emergelab.store import RunDir, sort_rows, write_parquet
from emergelab.sweep import expand, run_sweep
from emergelab.tasks import LinearMapConfig, seed_task, task_info
from emergelab.train import ExperimentConfig, InProcess, train
from emergelab.train.config import ExecutionConfig, TrainConfig

PLOTLY_BANNER = "* plotly.js v"


def _config(seeds: int = 2, steps: int = 60, sparsity: int = 2) -> ExperimentConfig:
    return ExperimentConfig(
        task=LinearMapConfig(4, sparsity),
        model=TransformerConfig(layers=1, heads=2, head_dim=4, mlp_ratio=0),
        train=TrainConfig(steps=steps, seeds=seeds, lr=1e-2, batch_size=16, eval_batch_size=32, eval_every=10,
                          checkpoints=1, attention_snapshots=4),
        execution=ExecutionConfig(resume_every=0),
    ).resolved()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return train(_config(), tmp_path_factory.mktemp("html") / "run", executor=InProcess(), progress=False).path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    base = {"task": {"name": "linear-map", "state_size": 4},
            "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
            "train": {"steps": 40, "batch_size": 16, "eval_every": 10, "eval_batch_size": 32, "seeds": 2,
                      "lr": 0.01, "checkpoints": 1, "attention_snapshots": 2}}
    out = tmp_path_factory.mktemp("html") / "sweep"
    result = run_sweep(expand({"base": base, "grid": {"task.sparsity": [1, 2]}}, out), executor=InProcess(),
                       progress=False)
    assert not result.failed
    return out


def _synthetic_run(path, seeds: int, steps: int, eval_every: int = 10, snapshots: int = 12,
                   attention: bool = True) -> RunDir:
    """A finished run with ``seeds`` seeds and ``steps // eval_every + 1`` probes of plausible curves (each
    output's loss falls from ln 2 at a random step) and (``attention``) per-head metrics and attention
    snapshots, written without training."""
    config = ExperimentConfig(
        task=LinearMapConfig(8, 2), model=TransformerConfig(layers=1, heads=4, head_dim=8, mlp_ratio=0),
        train=TrainConfig(steps=steps, seeds=seeds, eval_every=eval_every, attention_snapshots=snapshots),
    ).resolved()
    run = RunDir(path)
    run.write_config(config.to_dict())
    task = seed_task(config.task, config.train.seed, 0)
    run.write_task_info(task_info(task))
    rng = np.random.default_rng(0)
    probe = np.arange(0, steps + 1, eval_every)
    P = task.seq_len
    cols: dict[str, list] = {"step": [], "seed": [], "metric": [], "index": [], "value": []}

    def add(seed, metric, index, values):
        cols["step"].append(probe)
        cols["seed"].append(np.full(probe.size, seed, np.int32))
        cols["metric"] += [metric] * probe.size
        cols["index"] += [index] * probe.size
        cols["value"].append(values)

    for seed in range(seeds):
        pos = []
        for i in range(8):
            t = rng.uniform(0.2, 0.9) * steps
            v = np.log(2) / (1 + np.exp((probe - t) / (steps / 100))) + rng.normal(0, 0.01, probe.size) ** 2
            pos.append(v)
            add(seed, "loss_pos", str(i), v)
        add(seed, "loss", "", np.mean(pos, axis=0))
        if not attention:
            continue
        for h in range(4):
            add(seed, "attn_entropy", f"0.{h}", np.linspace(np.log(P), 0.5, probe.size))
            add(seed, "attn_gt_mass", f"0.{h}", np.linspace(0.1, 0.9, probe.size))
        for s in np.unique(np.geomspace(1, steps, snapshots).astype(int)):
            run.save_attention(seed, int(s), torch.softmax(torch.randn(1, 4, P, P), -1))
    table = pa.table({"step": pa.array(np.concatenate(cols["step"]), pa.int64()),
                      "seed": pa.array(np.concatenate(cols["seed"]), pa.int32()),
                      "metric": cols["metric"], "index": cols["index"],
                      "value": pa.array(np.concatenate(cols["value"]), pa.float64())})
    write_parquet(run.metrics_path, sort_rows(table), run.manifest)
    return run


# ---------------------------------------------------------------------------------------------- data
def test_downsample_keeps_first_last_and_each_run_min_max():
    rng = np.random.default_rng(1)
    steps = np.arange(5000) * 3
    values = np.cumsum(rng.normal(size=5000))
    values[1234] = 1e3  # a spike, and a dip
    values[4321] = -1e3
    keep = downsample(steps, values, 300)
    assert keep.size <= 300 and np.all(np.diff(keep) > 0)
    assert keep[0] == 0 and keep[-1] == 4999
    assert {1234, 4321} <= set(keep.tolist())
    edges = np.linspace(1, 4999, 150).round().astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):  # every run of probes keeps its extremes
        assert lo + np.argmin(values[lo:hi]) in keep and lo + np.argmax(values[lo:hi]) in keep
    assert downsample(steps[:300], values[:300], 300).tolist() == list(range(300))  # short: untouched


def test_downsample_ignores_nan_and_checks_arguments():
    values = np.linspace(1, 0, 1000)
    values[::7] = np.nan
    keep = downsample(np.arange(1000), values, 50)
    assert keep.size <= 50 and keep[0] == 0 and keep[-1] == 999
    assert not np.isnan(values[keep[1:-1]]).any()
    with pytest.raises(ValueError, match="max_points"):
        downsample(np.arange(10), np.arange(10.0), 3)
    with pytest.raises(ValueError, match="length"):
        downsample(np.arange(10), np.arange(9.0), 6)


def test_run_page_embeds_plotly_once_and_fetches_nothing(run_dir, tmp_path):
    out = write_html(run_dir, tmp_path / "page.html")
    html = out.read_text()
    assert html.count(PLOTLY_BANNER) == 1
    assert not re.search(r"<script[^>]*\ssrc=", html) and "<link" not in html
    for section in ("loss", "emergence", "attention", "heads", "summary", "config"):
        assert f'id="{section}"' in html
    assert 'id="attn-step"' in html and "emergence-table" in html


def test_run_page_data(run_dir):
    page = run_page(run_dir)
    data = page["data"]
    assert data["seeds"] == [0, 1] and len(data["outputs"]) == 4
    assert {r["seed"] for r in page["emergence"]} == {0, 1} and len(page["emergence"]) == 8
    attention = data["attention"]
    assert attention["seeds"] == [0, 1] and len(attention["steps"][0]) == len(attention["maps"][0]) >= 2
    rows = attention["rows"][1] - attention["rows"][0]
    cols = attention["cols"][1] - attention["cols"][0]
    assert np.asarray(attention["maps"][0][0]).shape == (1, 2, rows, cols)  # [layers, heads, R, C]
    assert np.asarray(attention["truth"][0]).shape == (rows, cols)
    assert data["heads"] == ["0.0", "0.1"] and set(data["head_metrics"]["attn_gt_mass"][0]) == {"0.0", "0.1"}


def test_outputs_equal_to_an_earlier_output_are_marked_as_copies(run_dir, tmp_path):
    """The emergence table's ``c`` (and the loss plot's hover) marks exactly the outputs whose row of the
    seed's matrix equals an earlier row (here seed 0's output 2 and seed 1's output 3, of 4 x 4 at s = 2)."""
    config = ExperimentConfig.from_run(RunDir(run_dir))
    expected = set()
    for seed in (0, 1):
        rows = seed_task(config.task, config.train.seed, seed).matrix.tolist()
        expected |= {(seed, i) for i in range(len(rows)) if rows[i] in rows[:i]}
    assert expected  # the fixture has copies to mark
    page = run_page(run_dir)
    assert {(r["seed"], r["position"]) for r in page["emergence"] if r["is_copy"]} == expected
    assert all(m["is_copy"] == ((m["seed"], m["position"]) in expected) for m in page["data"]["markers"])
    html = write_html(run_dir, tmp_path / "page.html").read_text()
    table = html[html.index('id="emergence-table"'):]
    rows = table[:table.index("</table>")].split("<tr")[2:]  # the header's row first
    marked = {i for i, row in enumerate(rows) if 'class="copy"' in row}
    assert marked == {4 * seed + i for seed, i in expected}
    assert "a shortcut" in html  # the note explains the mark


def test_attention_beyond_the_budget_is_left_out_and_said(run_dir, monkeypatch):
    import emergelab.report.html as report_html

    monkeypatch.setattr(report_html, "ATTENTION_BUDGET", 1)  # the first seed always comes in
    attention = report_html.run_page(run_dir)["data"]["attention"]
    assert attention["seeds"] == [0] and "seeds 0-0 of 2" in attention["note"]


def test_64_seed_page_stays_small_and_downsampled(tmp_path):
    run = _synthetic_run(tmp_path / "big", seeds=64, steps=5000)  # 501 probes per curve
    page = run_page(run.path)
    curve = page["data"]["loss"][0]["pos"][3]
    assert len(curve["x"]) <= MAX_POINTS and curve["x"][0] == 0 and curve["x"][-1] == 5000
    out = write_html(run.path)
    assert out == run.path / "report.html"
    size = out.stat().st_size
    assert size < 20e6, f"{size / 1e6:.1f} MB"


@pytest.fixture(scope="module")
def no_attention_run(tmp_path_factory):
    """A run of a model without attention: no per-head metrics, no snapshots."""
    return _synthetic_run(tmp_path_factory.mktemp("html") / "noattn", seeds=3, steps=200, attention=False)


def test_a_run_without_attention_gets_a_page(no_attention_run, tmp_path):
    page = run_page(no_attention_run.path)
    assert page["data"]["attention"] is None and page["data"]["heads"] == []
    assert all(r["head"] is None for r in page["emergence"]) and len(page["emergence"]) == 3 * 8
    html = write_html(no_attention_run.path, tmp_path / "p.html").read_text()
    assert "saved no attention snapshots" in html and 'id="attn-step"' not in html


def test_sweep_page_groups_by_each_differing_field(sweep_dir, tmp_path):
    html = write_html(sweep_dir, tmp_path / "sweep.html").read_text()
    assert html.count(PLOTLY_BANNER) == 1
    assert 'id="group-field"' in html and "sparsity=1" in html and "sparsity=2" in html
    from emergelab.report.html import sweep_page

    page = sweep_page(sweep_dir)
    assert page["fields"] == ["task.sparsity"]
    groups = page["groupings"][0]["groups"]
    assert [g["label"] for g in groups] == ["sparsity=1", "sparsity=2"] and all(g["n_seeds"] == 2 for g in groups)
    assert all(len(g["curve"]["x"]) == len(g["curve"]["lo"]) == len(g["curve"]["hi"]) for g in groups)
    assert len(page["emergence"]) == 2 * 2 * 4  # runs x seeds x outputs
    assert [g["x"] for g in groups] == [1, 2]  # a single numeric field: the plateau plot's x
    assert all(isinstance(g["plateau_censored"], bool) for g in groups)
    # the table marks a censored median as a lower bound, as `emergelab analyze` does
    import re
    table = html.split('id="groups"')[1].split("</table>")[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in table.split("<tr>")[2:]]
    header = re.findall(r"<th[^>]*>(.*?)</th>", table)[1:]  # the config's cell is a row header's
    plateau, first_own = header.index("plateau median"), header.index("first non-copy")
    assert [row[plateau + 1].startswith("&ge;") for row in rows] == [g["plateau_censored"] for g in groups]
    # and gives the first emergence of an output that is not a copy, with the seeds that have a copy
    # (S = 4, s = 2: seed 0's output 2 and seed 1's output 3; at s = 1 a repeated row is no shortcut)
    assert [g["n_copy_seeds"] for g in groups] == [0, 2]
    assert rows[1][first_own + 1].endswith('(2<span class="copy">c</span>)') and "span" not in rows[0][first_own + 1]
    # the share of outputs that emerged, as `emergelab analyze` counts it (a config none solved may have most)
    from emergelab.analysis import analyze_runs
    from emergelab.store import connect

    counted = [g["outputs_emerged"] for g in analyze_runs(connect(sweep_dir), n_boot=10).groups.to_pylist()]
    assert [g["outputs_emerged"] for g in groups] == pytest.approx(counted) and all(0 <= c <= 1 for c in counted)
    assert [row[header.index("outputs") + 1] for row in rows] == [f"{c:.4g}" for c in counted]


def test_sweep_page_names_zipped_fields_beside_the_grouping_field(tmp_path):
    """A sweep's zip changes two fields together: each grouping's labels name the other one too."""
    from emergelab.report.html import sweep_page

    base = {"task": {"name": "linear-map", "state_size": 4}, "model": {"layers": 1, "head_dim": 4, "mlp_ratio": 0},
            "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "eval_batch_size": 8, "seeds": 1,
                      "checkpoints": 0, "attention_snapshots": 0}}
    out = tmp_path / "zipped"
    spec = {"base": base, "zip": {"task.sparsity": [1, 2], "model.heads": [2, 1]}}
    assert not run_sweep(expand(spec, out), executor=InProcess(), progress=False).failed
    page = sweep_page(out)
    labels = {g["name"]: [x["label"] for x in g["groups"]] for g in page["groupings"]}
    assert labels == {"model.heads": ["heads=1, sparsity=2", "heads=2, sparsity=1"],
                      "task.sparsity": ["sparsity=1, heads=2", "sparsity=2, heads=1"],
                      # the width goes with heads too; grouped by it, its source fields are named
                      "model.d_model": ["d_model=4, heads=1, sparsity=2", "d_model=8, heads=2, sparsity=1"]}


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_report_html(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--html", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 1e6


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}", "--html"], "not a run directory"),
    (["report", "{tmp}/missing", "--html"], "no such file"),
    (["report", "{run}", "--out", "{tmp}/x.html"], "add --html"),
    (["report", "{run}", "--html", "--out", "{tmp}"], "is a directory"),
])
def test_cli_report_html_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_report_html_out_under_a_file_is_one_line_before_the_page(run_dir, tmp_path, capsys, monkeypatch):
    """Said "File exists" after building the page; now the file in the way is named, before any work."""
    import emergelab.report.html as html

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(html, "run_page", lambda path: pytest.fail("built the page"))
    assert main(["report", str(run_dir), "--html", "--out", str(tmp_path / "afile" / "x.html")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'afile'} is a file, so the folder cannot be created" in err and err.count("\n") == 1


def test_cli_report_html_of_a_sweep_without_finished_runs(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"spec": {}, "runs": []}')
    assert main(["report", str(tmp_path), "--html"]) == 2
    err = capsys.readouterr().err
    assert "no finished runs" in err and err.count("\n") == 1 and not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    env = os.environ.get("EMERGELAB_CHROMIUM")
    if env:
        return env
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        pytest.skip("no chromium binary found (scripts/ensure_chromium.sh installs Debian's chromium; "
                    "or set EMERGELAB_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, html_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html_path.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page, errors


def _not_blank(png: bytes) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) one colour"


def test_run_page_in_chromium(browser, run_dir, tmp_path):
    html = write_html(run_dir, tmp_path / "run.html")
    page, errors = _open(browser, html)
    for plot in ("plot-loss", "plot-attn", "plot-truth", "plot-entropy", "plot-mass"):
        assert page.locator(f"#{plot}.js-plotly-plot .main-svg").count() >= 1, plot
    assert page.locator("#emergence-table tbody tr").count() == 8
    slider = page.locator("#attn-step")
    assert slider.count() == 1 and int(slider.get_attribute("max")) >= 1

    def heatmap():
        return page.evaluate("() => JSON.stringify(document.getElementById('plot-attn').data[0].z)"), \
            page.locator("#plot-attn .hm image").get_attribute("href")

    before, label = heatmap(), page.locator("#attn-step-label").inner_text()
    assert slider.input_value() == slider.get_attribute("max")  # starts on the last snapshot
    page.evaluate("() => { const s = document.getElementById('attn-step'); s.value = 0;"
                  " s.dispatchEvent(new Event('input')); }")
    after = heatmap()
    assert before[0] != after[0] and before[1] != after[1]  # the data and the drawn image changed
    assert page.locator("#attn-step-label").inner_text() != label
    def hidden(group):
        return page.evaluate(f"() => document.getElementById('plot-loss').data.filter((t) => t.legendgroup === "
                             f"'{group}' && t.mode === 'lines').map((t) => t.visible === 'legendonly')")

    assert page.locator("#loss-output").input_value() == "all" and not any(hidden("seed 0"))
    page.locator("#plot-loss .legend .traces").first.click()  # a seed's legend entry hides all its curves
    page.wait_for_function("() => document.getElementById('plot-loss').data[0].visible === 'legendonly'")
    assert all(hidden("seed 0")) and len(hidden("seed 0")) == 4 and not any(hidden("seed 1"))
    page.select_option("#loss-output", "-1")  # the aggregate loss: one trace per seed
    assert page.evaluate("() => document.getElementById('plot-loss').data.length") >= 2
    page.check("#log-steps")
    assert page.evaluate("() => document.getElementById('plot-loss').layout.xaxis.type") == "log"
    _not_blank(page.screenshot(full_page=True))
    assert not errors, errors
    page.close()


def test_panel_titles_clear_the_toolbar_shown_on_hover(browser, run_dir, tmp_path):
    """plotly's toolbar, shown while the mouse is over a plot, covered the long titles of the attention and
    per-head panels."""
    page, errors = _open(browser, write_html(run_dir, tmp_path / "run.html"))
    for plot in ("plot-attn", "plot-truth", "plot-entropy", "plot-mass"):
        page.hover(f"#{plot} .main-svg")
        bar = page.locator(f"#{plot} .modebar").bounding_box()
        title = page.locator(f"#{plot} .gtitle").bounding_box()
        assert bar and title, plot
        assert title["y"] >= bar["y"] + bar["height"], (plot, bar, title)
    assert not errors, errors
    page.close()


def test_page_without_attention_in_chromium(browser, no_attention_run, tmp_path):
    page, errors = _open(browser, write_html(no_attention_run.path, tmp_path / "p.html"))
    assert page.locator("#plot-loss.js-plotly-plot .main-svg").count() >= 1
    assert not errors, errors
    page.close()


def test_sweep_page_in_chromium(browser, sweep_dir, tmp_path):
    html = write_html(sweep_dir, tmp_path / "sweep.html")
    page, errors = _open(browser, html)
    for plot in ("plot-solved", "plot-plateau"):
        assert page.locator(f"#{plot}.js-plotly-plot .main-svg").count() >= 1, plot
    # 40 steps solve no seed: no box plot of emergence steps, a note saying why
    assert not page.locator("#plot-dist").is_visible() and page.locator("#dist-note").is_visible()
    n_options = page.locator("#group-field option").count()
    assert n_options >= 1
    page.select_option("#group-field", str(n_options - 1))
    assert page.locator(f"table.groups[data-grouping='{n_options - 1}']").is_visible()
    _not_blank(page.screenshot(full_page=True))
    assert not errors, errors
    page.close()


def test_sweep_page_with_solved_seeds_draws_their_emergence_steps(browser, tmp_path):
    sweep = tmp_path / "sweep"
    for name, steps in (("a", 200), ("b", 300)):  # every output of every seed emerges
        _synthetic_run(sweep / "runs" / name, seeds=3, steps=steps, attention=False)
    (sweep / "sweep.json").write_text("{}")
    page, errors = _open(browser, write_html(sweep, tmp_path / "sweep.html"))
    assert page.locator("#plot-dist.js-plotly-plot .main-svg").count() >= 1
    assert not page.locator("#dist-note").is_visible()
    # the P(solved) band steps with its curve: the polygon along hi and back along lo, a corner at each step
    band, curve = page.evaluate("(() => { const d = document.getElementById('plot-solved').data;"
                                " return [d[0], d[1]]; })()")
    x, n = curve["x"], len(curve["x"])
    assert len(band["x"]) == 2 * (2 * n - 1) and band["x"][:3] == [x[0], x[1], x[1]]
    assert band["y"][1] == band["y"][0]  # the first value holds until the second step
    assert not errors, errors
    page.close()


def test_run_page_forecasts_the_outputs_still_on_their_plateau(run_dir, tmp_path):
    """The run page's forecast table is `emergelab forecast RUN` at the last probe, one row per (seed,
    output) not yet emerged, one cell per forecaster."""
    from emergelab.analysis.forecast import forecast_run
    from emergelab.report.html import run_page
    from emergelab.store import connect

    page = run_page(run_dir)
    con = connect(run_dir)
    try:
        expected = {(r["seed"], r["output"]) for r in forecast_run(con).to_pylist()}
    finally:
        con.close()
    rows = page["forecast"]["rows"]
    assert len(rows) == len(expected)
    assert all(set(r["cells"]) <= set(page["forecast"]["forecasters"]) for r in rows)
    html = write_html(run_dir, tmp_path / "r.html").read_text()
    assert 'id="forecast"' in html and ("Predicted emergence step" in html or "nothing to forecast" in html)


def test_run_page_of_one_seed_says_why_there_is_no_forecast(tmp_path):
    run = _synthetic_run(tmp_path / "one", seeds=1, steps=100, attention=False)
    from emergelab.report.html import run_page

    note = run_page(run.path)["forecast"]["note"]
    assert note and "at least 2 seeds" in note


@pytest.fixture(scope="module")
def generalization_runs(tmp_path_factory):
    """A counting run (length metrics), a question-formation run (rule metrics) and a cellular automaton on a
    pool of rules (fresh-rule metrics), trained for a few steps."""
    runs = {}
    for name, task in (("count", {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [3, 6]}),
                       ("question-formation", {"name": "question-formation"}),
                       ("automaton-pool", {"name": "cellular-automata", "state_size": 4, "trajectory_length": 3,
                                           "alphabet": 3, "rules": 2})):
        config = ExperimentConfig.from_dict({
            "task": task, "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
            "train": {"steps": 40, "seeds": 2, "batch_size": 16, "eval_batch_size": 16, "eval_every": 10,
                      "checkpoints": 0, "attention_snapshots": 2},
            "execution": {"strategy": "ensemble"}})
        runs[name] = train(config, tmp_path_factory.mktemp(name) / "run", progress=False).path
    return runs


@pytest.mark.parametrize("name", ["count", "question-formation", "automaton-pool"])
def test_length_and_rule_runs_get_a_generalization_panel(generalization_runs, run_dir, name):
    """Its curves are the run's metrics (to the page's 4 significant digits); a linear-map run has none."""
    from emergelab.store import connect

    general = run_page(generalization_runs[name])["data"]["generalization"]
    assert general["kind"] == {"count": "lengths", "question-formation": "rules", "automaton-pool": "pool"}[name]
    labels = [s["label"] for s in general["series"]]
    if name == "automaton-pool":
        assert labels == ["fresh rules (outside the pool)", "the training distribution (held out)"]
        assert general["axis"] == "per-token accuracy" and "fresh rules" in general["title"]
    elif name == "count":  # the mean first: drawn beneath the lengths, which it would hide at 0
        assert labels == ["held-out lengths (mean)", "length 3 (trained)", "length 6 (held out)"]
        assert [s["dash"] for s in general["series"]] == [False, False, True]
        assert [s["group"] for s in general["series"]] == [-1, 0, 1]
    else:
        assert labels == ["hierarchical: first word", "hierarchical: whole output", "linear: first word",
                          "linear: whole output", "training distribution (exact match)"]
        assert [s["group"] for s in general["series"]] == [0, 0, 1, 1, -2]  # a rule's two lines share a colour
    # question formation has no ground-truth attention: its maps are shown without an empty truth panel
    attention = run_page(generalization_runs[name])["data"]["attention"]
    assert (attention["truth"] is None) == (name == "question-formation")
    assert ("no ground-truth attention" in attention["note"]) == (name == "question-formation")
    con = connect(generalization_runs[name])
    try:
        for seed in (0, 1):
            for s in general["series"]:
                metric, index = s["key"].split(":", 1)
                rows = con.sql(f"""SELECT step, value FROM metrics WHERE seed = {seed} AND metric = '{metric}'
                                   AND "index" = '{index}' ORDER BY step""").fetchall()
                curve = general["curves"][seed][s["key"]]
                assert curve["x"] == [r[0] for r in rows]
                np.testing.assert_allclose(curve["y"], [r[1] for r in rows], rtol=1e-3, atol=1e-9)
    finally:
        con.close()
    assert run_page(run_dir)["data"]["generalization"] is None


def test_generalization_panel_in_chromium(browser, generalization_runs, tmp_path):
    page, errors = _open(browser, write_html(generalization_runs["count"], tmp_path / "count.html"))
    assert page.locator("#plot-generalization.js-plotly-plot .main-svg").count() >= 1
    title = "() => document.getElementById('plot-generalization').layout.title.text"
    assert page.evaluate("() => document.getElementById('plot-generalization').data.length") == 3
    assert page.evaluate(title) == "exact match, seed 0"
    page.select_option("#gen-seed", "1")  # (a 40-step run scores 0 at every length: the title tells the seeds apart)
    assert page.evaluate(title) == "exact match, seed 1"
    page.hover("#plot-generalization .main-svg")  # the title clears plotly's toolbar
    bar = page.locator("#plot-generalization .modebar").bounding_box()
    title = page.locator("#plot-generalization .gtitle").bounding_box()
    assert bar and title and title["y"] >= bar["y"] + bar["height"]
    assert page.locator("nav a[href='#generalization']").count() == 1
    assert page.locator("#summary th", has_text="fresh rules").count() == 0  # no pool, no column
    _not_blank(page.screenshot(full_page=True))
    assert not errors, errors
    page.close()
    page, errors = _open(browser, write_html(generalization_runs["question-formation"], tmp_path / "qf.html"))
    assert page.locator("#plot-attn.js-plotly-plot .main-svg").count() >= 1
    assert page.evaluate("() => document.getElementById('plot-truth').hidden")  # no ground truth to show
    # its entropy over every query of an output, and no empty mass panel
    assert page.locator("#plot-entropy.js-plotly-plot .main-svg").count() >= 1
    assert page.locator("#plot-mass").count() == 0 and "no mass is recorded" in page.locator("#heads").inner_text()
    assert page.locator("#heads h2").inner_text() == "Per-head attention entropy"
    assert not errors, errors
    page.close()
    page, errors = _open(browser, write_html(generalization_runs["automaton-pool"], tmp_path / "pool.html"))
    assert page.evaluate("() => document.getElementById('plot-generalization').data.length") == 2
    assert page.evaluate("() => document.getElementById('plot-generalization').layout.title.text") == \
        "per-token accuracy, seed 0"
    assert "fresh rules" in page.locator("#generalization h2").inner_text()
    assert page.locator("#summary th", has_text="fresh rules").count() == 1  # the last fresh_loss per seed
    assert "its floor 0.9" in page.locator("#summary").inner_text()
    assert not errors, errors
    page.close()


def test_summary_rows_say_how_many_outputs_were_not_measured():
    from emergelab.report.html import _summary_rows

    summary = {"optimal_loss": 0.0, "seeds": {
        "0": {"final_loss": 0.5, "learned_step": {"0": 10, "1": None, "2": None}, "n_learned": 1,
              "all_learned": False, "not_measured": ["2"]},
        "1": {"final_loss": 0.1, "learned_step": {"0": 10, "1": 20, "2": 30}, "n_learned": 3, "all_learned": True}}}
    rows = _summary_rows(summary)
    assert [(r["n_learned"], r["n_outputs"], r["not_measured"], r["all_learned"]) for r in rows] == \
        [(1, 3, 1, False), (3, 3, 0, True)]


@pytest.mark.parametrize("value, text", [(None, "-"), (10000.0, "10000"), (12345.5, "12346"), (1712.5, "1712"),
                                         (0.33539, "0.3354"), (7, "7"), (float("nan"), "nan")])
def test_table_cells_write_steps_without_an_exponent(value, text):
    from emergelab.report.html import _num_text

    assert _num_text(value) == text


def _with_patching(run_dir, tmp_path):
    """A copy of the run with the table `emergelab patch RUN --at-emergence` writes (two rows: a copy, and an
    output with its fractions)."""
    from emergelab.interventions.at_emergence import EmergencePatching, write_emergence_patching
    from emergelab.store import RunDir

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    base = {"emergence_step": 40.0, "early_step": 30, "late_step": 50, "early_prob": 0.5, "late_prob": 0.9,
            "gap": 0.4, "recovered_head": "0.0", "removed_head": "0.1", "removed_second": 0.2,
            "removed_elsewhere": None, "attributed_head": "0.1"}
    rows = [{**base, "seed": 0, "output": 1, "label": "bit 1", "copy": False, "recovered": 0.05, "removed": 0.8,
             "removed_by_attributed": 0.8},
            {**base, "seed": 1, "output": 2, "label": "bit 2", "copy": True, "recovered": -0.0001, "removed": 0.1,
             "removed_by_attributed": None}]
    write_emergence_patching(EmergencePatching(run=RunDir(copy), what="pattern", n_sequences=32, min_gap=0.1,
                                               rows=rows))
    return copy


def test_run_page_shows_the_patching_at_emergence_table_when_there_is_one(run_dir, tmp_path):
    assert run_page(run_dir)["patching"] == []
    assert 'id="patching-pattern"' not in write_html(run_dir, tmp_path / "plain.html").read_text()
    page = run_page(_with_patching(run_dir, tmp_path))
    (table,) = page["patching"]
    assert table["what"] == "pattern" and table["total"] == 2
    assert table["summary"]["counted"] == 1 and table["summary"]["removed"] == pytest.approx(0.8)
    html = render_page(page)
    assert '<a href="#patching-pattern">patching</a>' in html and 'id="patching-pattern-table"' in html
    assert "Medians over 1 of 2 outputs" in html and "recovered 5%, removed 80%" in html
    body = html[html.index('id="patching-pattern-table"'):]
    body = body[:body.index("</table>")]
    assert body.count("<tr") == 3 and body.count('class="copy"') == 1 and body.count('class="no"') == 1
    assert ">0%<" in body and "-0%" not in body  # a tiny negative fraction is 0%


def test_patching_table_sorts_in_chromium(browser, run_dir, tmp_path):
    html = write_html(_with_patching(run_dir, tmp_path), tmp_path / "run.html")
    page, errors = _open(browser, html)
    rows = page.locator("#patching-pattern-table tbody tr")
    assert rows.count() == 2 and rows.first.locator("td").nth(1).inner_text().startswith("bit 1")
    page.locator("#patching-pattern-table th", has_text="removed").first.click()  # ascending: bit 2 (10%) first
    assert rows.first.locator("td").nth(1).inner_text().startswith("bit 2")
    assert not errors, errors
    page.close()
