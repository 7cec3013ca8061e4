// The emergelab report's plots, drawn from the JSON block #page-data (prepared by report/html.py).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("page-data").textContent);
  const CONFIG = { responsive: true, displaylogo: false };
  const stepPlots = [];  // plots whose x axis is the training step (the "log step axis" box applies)
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"];
  const color = (k, n) => n <= COLORS.length ? COLORS[k % COLORS.length]
    : "hsl(" + Math.round(300 * k / Math.max(1, n - 1)) + ",65%,45%)";
  const $ = (id) => document.getElementById(id);

  function stepAxis() {
    return { title: { text: "step" }, type: $("log-steps").checked ? "log" : "linear" };
  }
  function baseLayout(ytitle, extra) {
    return Object.assign({ margin: { l: 60, r: 20, t: 30, b: 45 }, xaxis: stepAxis(), yaxis: { title: { text: ytitle } },
                           hovermode: "closest", legend: { font: { size: 11 } } }, extra || {});
  }
  // A panel's title, set below the band where plotly's toolbar appears on hover (it covered long titles)
  const TITLED_MARGIN = { l: 60, r: 20, t: 58, b: 45 };
  function panelTitle(text) {
    return { text: text, font: { size: 13 }, yref: "container", y: 1, yanchor: "top", pad: { t: 30 } };
  }
  function draw(id, traces, layout, onStepAxis) {
    Plotly.react($(id), traces, layout, CONFIG);
    if (onStepAxis && !stepPlots.includes(id)) stepPlots.push(id);
  }
  function fill(select, options, value) {
    select.innerHTML = "";
    for (const [v, text] of options) {
      const o = document.createElement("option"); o.value = v; o.textContent = text; select.appendChild(o);
    }
    if (value !== undefined) select.value = String(value);
  }
  $("log-steps").addEventListener("change", () => {
    for (const id of stepPlots) Plotly.relayout($(id), { "xaxis.type": $("log-steps").checked ? "log" : "linear" });
  });

  // Sortable tables: click a header; numbers sort as numbers, "-", "not yet" and "nothing to learn" last.
  for (const table of document.querySelectorAll("table.sortable")) {
    table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
      const body = table.tBodies[0], asc = th.dataset.sort !== "asc";
      table.querySelectorAll("th").forEach((h) => delete h.dataset.sort);
      th.dataset.sort = asc ? "asc" : "desc";
      const key = (tr) => { const t = tr.cells[col].textContent.trim(), x = Number(t);
                            return t !== "" && !Number.isNaN(x) ? [0, x, ""] : [t === "-" || t === "not yet" || t === "nothing to learn" ? 2 : 1, 0, t]; };
      const rows = Array.from(body.rows).sort((a, b) => {
        const ka = key(a), kb = key(b);
        const c = ka[0] - kb[0] || (ka[1] - kb[1]) || ka[2].localeCompare(kb[2]);
        return ka[0] === 2 || kb[0] === 2 ? c : (asc ? c : -c);
      });
      rows.forEach((r) => body.appendChild(r));
    }));
  }

  // ------------------------------------------------------------------------------------------- run page
  function runPage() {
    const seeds = DATA.seeds, outputs = DATA.outputs, n = seeds.length;
    const select = $("loss-output");
    const opts = [["-1", "aggregate loss, every seed"]].concat(outputs.map((o, i) => [String(i), o + ", every seed"]));
    if (outputs.length * n <= 200) opts.unshift(["all", "every output of every seed"]);
    fill(select, opts, opts[0][0]);

    function markerTrace(seed, i, curve, k) {
      const marks = DATA.markers.filter((m) => m.seed === seed && (i < 0 || m.position === i));
      if (!curve || !marks.length) return null;
      const at = (s) => { let j = curve.x.findIndex((x) => x >= s); if (j < 0) j = curve.x.length - 1; return curve.y[j]; };
      return { x: marks.map((m) => m.step), y: marks.map((m) => at(m.step)), mode: "markers", type: "scatter",
               marker: { symbol: "diamond", size: 8, color: color(k, n), line: { color: "#000", width: 0.5 } },
               legendgroup: "seed " + seed, showlegend: false, name: "seed " + seed + " emerged",
               text: marks.map((m) => outputs[m.position] + (m.is_copy ? ", a copy of an earlier output" : "")
                                       + (m.head ? " (head " + m.head + ")" : "")),
               hovertemplate: "seed " + seed + ": %{text}<br>emerged at step %{x}<extra></extra>" };
    }
    function drawLoss() {
      const traces = [], v = select.value;
      seeds.forEach((seed, k) => {
        const c = DATA.loss[seed];
        if (v === "all") {
          c.pos.forEach((curve, i) => { if (!curve) return;
            traces.push({ x: curve.x, y: curve.y, type: "scatter", mode: "lines", name: "seed " + seed,
                          legendgroup: "seed " + seed, showlegend: i === 0, line: { color: color(k, n), width: 1.2 },
                          hovertemplate: "seed " + seed + ", " + outputs[i] + "<br>step %{x}<br>loss %{y}<extra></extra>" });
            const m = markerTrace(seed, i, curve, k); if (m) traces.push(m); });
        } else {
          const i = Number(v), curve = i < 0 ? c.loss : c.pos[i];
          if (!curve) return;
          traces.push({ x: curve.x, y: curve.y, type: "scatter", mode: "lines", name: "seed " + seed,
                        legendgroup: "seed " + seed, line: { color: color(k, n), width: 1.4 },
                        hovertemplate: "seed " + seed + "<br>step %{x}<br>loss %{y}<extra></extra>" });
          if (i >= 0) { const m = markerTrace(seed, i, curve, k); if (m) traces.push(m); }
        }
      });
      const optimum = v === "-1" ? DATA.optimum : (v !== "all" && DATA.output_optima ? DATA.output_optima[Number(v)] : null);
      const shapes = optimum == null ? [] : [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: optimum, y1: optimum,
                                               line: { dash: "dot", color: "#888", width: 1 } }];
      draw("plot-loss", traces, baseLayout("held-out loss (nats)", { shapes: shapes }), true);
    }
    select.addEventListener("change", drawLoss);
    drawLoss();

    const att = DATA.attention;
    if (att) {
      const seedSel = $("attn-seed"), headSel = $("attn-head"), slider = $("attn-step");
      fill(seedSel, att.seeds.map((s) => [String(s), String(s)]), att.seeds[0]);
      const first = att.maps[att.seeds[0]][0];
      const heads = [];
      first.forEach((layer, l) => layer.forEach((_, h) => heads.push([l + "." + h, l + "." + h])));
      // start on the head that ends with the most ground-truth mass (the one that learned the pattern)
      const mass = (DATA.head_metrics.attn_gt_mass || {})[att.seeds[0]] || {};
      const last = (h) => mass[h] ? mass[h].y[mass[h].y.length - 1] : -1;
      const best = heads.map((h) => h[0]).reduce((a, b) => (last(b) > last(a) ? b : a), heads[0][0]);
      fill(headSel, heads, best);
      const xs = [], ys = [];
      for (let c = att.cols[0]; c < att.cols[1]; c++) xs.push(c);
      for (let r = att.rows[0]; r < att.rows[1]; r++) ys.push(r);
      const axes = { xaxis: { title: { text: att.col_label } }, yaxis: { title: { text: att.row_label }, autorange: "reversed" },
                     margin: TITLED_MARGIN };
      function setSeed() {
        const steps = att.steps[seedSel.value];
        slider.max = String(steps.length - 1);
        if (Number(slider.value) > steps.length - 1) slider.value = slider.max;
        drawTruth(); drawAttn();
      }
      function current() {
        const [l, h] = headSel.value.split(".").map(Number), seed = seedSel.value;
        const all = att.maps[seed].map((m) => m[l][h]);
        return { seed, l, h, all, k: Number(slider.value) };
      }
      function drawAttn() {
        const c = current(), z = c.all[c.k], step = att.steps[c.seed][c.k], truth = att.truth ? att.truth[c.seed] : null;
        const zmax = Math.max(1e-6, ...c.all.map((m) => Math.max(...m.map((row) => Math.max(...row)))));
        let mass = 0, rows = 0;
        if (truth) z.forEach((row, r) => { let t = 0, m = 0; row.forEach((w, j) => { if (truth[r][j] > 0) { t = 1; m += w; } });
                                           if (t) { mass += m; rows += 1; } });
        const text = "step " + step + " (snapshot " + (c.k + 1) + " of " + c.all.length + ")" +
                     (rows ? "; mass on ground truth " + (mass / rows).toFixed(2) : "");
        $("attn-step-label").textContent = text;
        draw("plot-attn", [{ z: z, x: xs, y: ys, type: "heatmap", colorscale: "Viridis", zmin: 0, zmax: zmax,
                             hovertemplate: "query %{y}, key %{x}<br>weight %{z}<extra></extra>" }],
             Object.assign({ title: panelTitle("seed " + c.seed + ", head " + headSel.value + ": " + text) }, axes));
      }
      function drawTruth() {
        if (!att.truth) { $("plot-truth").hidden = true; return; }  // a task without ground-truth attention
        draw("plot-truth", [{ z: att.truth[seedSel.value], x: xs, y: ys, type: "heatmap", colorscale: "Viridis", zmin: 0,
                              hovertemplate: "query %{y}, key %{x}<br>ideal weight %{z}<extra></extra>" }],
             Object.assign({ title: panelTitle("ground truth of seed " + seedSel.value + " (rows normalised)") }, axes));
      }
      seedSel.addEventListener("change", setSeed);
      headSel.addEventListener("change", drawAttn);
      slider.addEventListener("input", drawAttn);
      slider.max = String(att.steps[att.seeds[0]].length - 1);
      slider.value = slider.max;  // start on the last snapshot
      setSeed();
    }

    const gen = DATA.generalization;
    if (gen) {
      const sel = $("gen-seed");
      fill(sel, seeds.map((s) => [String(s), String(s)]), seeds[0]);
      function drawGeneralization() {
        const curves = gen.curves[sel.value] || {};
        const traces = gen.series.filter((s) => curves[s.key]).map((s) => ({
          x: curves[s.key].x, y: curves[s.key].y, type: "scatter", mode: "lines", name: s.label,
          line: { color: s.group === -1 ? "#000" : s.group === -2 ? "#888" : color(s.group, gen.groups), width: s.width,
                  dash: s.dash ? "dash" : "solid" },
          hovertemplate: s.label + "<br>step %{x}<br>%{y}<extra></extra>" }));
        const title = gen.axis;
        draw("plot-generalization", traces, baseLayout(title, { title: panelTitle(title + ", seed " + sel.value),
                                                                 margin: TITLED_MARGIN,
                                                                 yaxis: { title: { text: title }, range: [-0.03, 1.03] } }), true);
      }
      sel.addEventListener("change", drawGeneralization);
      drawGeneralization();
    }

    if (DATA.heads.length) {
      const sel = $("head-seed");
      fill(sel, seeds.map((s) => [String(s), String(s)]), seeds[0]);
      function drawHeads() {
        const seed = sel.value, marks = DATA.markers.filter((m) => String(m.seed) === seed);
        const shapes = marks.map((m) => ({ type: "line", x0: m.step, x1: m.step, yref: "paper", y0: 0, y1: 1,
                                           line: { dash: "dot", color: "#d62728", width: 1 } }));
        for (const [metric, id, title] of [["attn_entropy", "plot-entropy", "attention entropy (nats)"],
                                           ["attn_gt_mass", "plot-mass", "attention mass on ground truth"]]) {
          if (!$(id)) continue;  // no mass panel for a task without ground-truth attention
          const curves = DATA.head_metrics[metric][seed] || {};
          const traces = DATA.heads.filter((h) => curves[h]).map((h, k) => ({
            x: curves[h].x, y: curves[h].y, type: "scatter", mode: "lines", name: "head " + h,
            line: { color: color(k, DATA.heads.length) },
            hovertemplate: "head " + h + "<br>step %{x}<br>%{y}<extra></extra>" }));
          draw(id, traces, baseLayout(title, { title: panelTitle(title + ", seed " + seed + " (dotted: emergence steps)"),
                                               margin: TITLED_MARGIN, shapes: shapes }), true);
        }
      }
      sel.addEventListener("change", drawHeads);
      drawHeads();
    }
  }

  // ------------------------------------------------------------------------------------------- sweep page
  // The band of a step curve (each value holds until the next x, as the curve's "hv" line draws it): the
  // polygon along hi forward and lo backward, with a corner at every step.
  function stepBand(x, lo, hi) {
    const bx = [], by = [];
    for (let i = 0; i < x.length; i++) {
      if (i > 0) { bx.push(x[i]); by.push(hi[i - 1]); }
      bx.push(x[i]); by.push(hi[i]);
    }
    for (let i = x.length - 1; i >= 0; i--) {
      bx.push(x[i]); by.push(lo[i]);
      if (i > 0) { bx.push(x[i]); by.push(lo[i - 1]); }
    }
    return { x: bx, y: by };
  }

  function sweepPage() {
    const sel = $("group-field");
    function drawGroups() {
      const g = DATA.groupings[Number(sel.value)], n = g.groups.length;
      document.querySelectorAll("table.groups").forEach((t) => { t.hidden = t.dataset.grouping !== sel.value; });
      const traces = [];
      g.groups.forEach((grp, k) => {
        const c = grp.curve, col = color(k, n);
        const band = stepBand(c.x, c.lo, c.hi);
        traces.push({ x: band.x, y: band.y, type: "scatter",
                      fill: "toself", fillcolor: col, opacity: 0.18, line: { width: 0 }, hoverinfo: "skip",
                      legendgroup: grp.label, showlegend: false, name: grp.label + " band" });
        traces.push({ x: c.x, y: c.p, type: "scatter", mode: "lines", line: { color: col, width: 2, shape: "hv" },
                      name: grp.label, legendgroup: grp.label,
                      hovertemplate: grp.label + "<br>step %{x}<br>P(solved) %{y}<extra></extra>" });
      });
      draw("plot-solved", traces, baseLayout("P(solved by step)", { yaxis: { title: { text: "P(solved by step)" }, range: [-0.02, 1.02] } }), true);
      const boxes = g.groups.map((grp, k) => ({
        y: grp.emergence_steps, type: "box", name: grp.label + " (" + grp.n_solved + "/" + grp.n_seeds + " solved)",
        boxpoints: "all", jitter: 0.4, pointpos: 0, marker: { color: color(k, n), size: 5 },
        hovertemplate: "emergence step %{y}<extra>" + grp.label + "</extra>" }));
      const numeric = g.groups.length > 1 && g.groups.every((grp) => grp.x !== null && grp.x > 0);
      $("plot-plateau").hidden = !numeric;
      $("plateau-note").textContent = numeric
        ? "Median plateau (steps before the loss left its initial level) per group against " + g.name +
          ", log-log; hollow: censored (at least half the seeds never left the plateau: a lower bound)."
        : "Group the runs by a single numeric field to plot the plateau against it.";
      if (numeric) {
        const pts = g.groups.filter((grp) => grp.plateau_median !== null && grp.plateau_median > 0);
        const mk = (censored) => ({
          x: pts.filter((p) => p.plateau_censored === censored).map((p) => p.x),
          y: pts.filter((p) => p.plateau_censored === censored).map((p) => p.plateau_median),
          type: "scatter", mode: "markers", name: censored ? "censored median (lower bound)" : "median plateau",
          marker: { size: 10, color: "#1f77b4", symbol: censored ? "circle-open" : "circle" },
          hovertemplate: g.name + " %{x}<br>plateau %{y}<extra></extra>" });
        draw("plot-plateau", [mk(false), mk(true)],
             { margin: { l: 60, r: 20, t: 30, b: 45 }, xaxis: { title: { text: g.name }, type: "log" },
               yaxis: { title: { text: "median plateau, steps" }, type: "log" } }, false);
      }
      const solved = g.groups.some((grp) => grp.emergence_steps.length);
      $("plot-dist").hidden = !solved;
      $("dist-note").hidden = solved;
      if (solved) {
        draw("plot-dist", boxes, { margin: { l: 60, r: 20, t: 30, b: 80 }, showlegend: false,
                                   yaxis: { title: { text: "emergence step (solved seeds)" } } }, false);
      }
    }
    sel.addEventListener("change", drawGroups);
    drawGroups();
  }

  if (DATA.kind === "run") runPage(); else sweepPage();
  document.body.dataset.ready = "1";  // the browser tests wait for this
})();
