"""Patching, ablation, greedy head search and the attention bias against an independent forward pass: an
attention-only transformer written in numpy from the model's weights (float64), with a head's pattern or
scores overridden by hand. The tables' own tests check the patterns they write and planted circuits; this
checks the numbers they report (``prob_gain``, ``loss_drop``, ``prob_drop``, ``loss_increase`` overall and
per output, ``recovered``). Written by a science audit on 2026-11-28 (every value within 2e-6)."""

from __future__ import annotations

import math

import numpy as np
import torch

from emergelab.interventions import ablation_table, greedy_heads, ground_truth_bias, patching_table
from emergelab.models import Transformer, TransformerConfig
from emergelab.tasks import make_generator
from emergelab.tasks.linear_map import LinearMapConfig

def numpy_params(model):
    """Member 0's weights as float64 arrays."""
    g = lambda t: t.detach().double().numpy()[0]  # noqa: E731
    return {"W_E": g(model.W_E), "W_pos": g(model.W_pos), "W_U": g(model.W_U), "b_U": g(model.b_U),
            "lnf": (g(model.ln_final.w), g(model.ln_final.b)),
            "blocks": [dict(ln=(g(b.ln1.w), g(b.ln1.b)), W_QKV=g(b.attn.W_QKV), b_QKV=g(b.attn.b_QKV),
                            W_O=g(b.attn.W_O), b_O=g(b.attn.b_O)) for b in model.blocks], "H": model.blocks[0].attn.heads,
            "D": model.blocks[0].attn.head_dim}


def ln(x, w, b):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b


def forward(p, tokens, override=None, bias=None, scores_override=None):
    """tokens [n, T] (inputs); override: {(l, h): fn(pattern [n,T,T]) -> new pattern}; bias [L, H, T, T].
    Returns logits [n, T, V] and patterns {l: [n, H, T, T]}."""
    n, T = tokens.shape
    H, D = p["H"], p["D"]
    x = p["W_E"][tokens] + p["W_pos"][:T]
    pats = {}
    for l, b in enumerate(p["blocks"]):
        h = ln(x, *b["ln"])
        qkv = (h @ b["W_QKV"] + b["b_QKV"]).reshape(n, T, 3, H, D)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = np.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(D)
        if bias is not None: s = s + bias[l]
        causal = np.tril(np.ones((T, T), bool))
        s = np.where(causal, s, -np.inf)
        if scores_override:
            for (ll, hh), fn in scores_override.items():
                if ll == l: s[:, hh] = fn(s[:, hh])
        a = np.exp(s - s.max(-1, keepdims=True)); a = a / a.sum(-1, keepdims=True)
        if override:
            for (ll, hh), fn in override.items():
                if ll == l: a[:, hh] = fn(a[:, hh])
        pats[l] = a.copy()
        z = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, T, H * D)
        x = x + z @ b["W_O"] + b["b_O"]
    return ln(x, *p["lnf"]) @ p["W_U"] + p["b_U"], pats


def scores(logits, targets, mask, index, O):
    lp = logits - logits.max(-1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    tl = np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    prob, loss = np.exp(tl), -tl
    m = np.broadcast_to(mask, prob.shape)
    out = {"mean_prob": prob[m].mean(), "mean_loss": loss[m].mean()}
    idx = np.broadcast_to(index, prob.shape)
    out["prob_per_output"] = np.array([prob[m & (idx == o)].mean() for o in range(O)])
    out["loss_per_output"] = np.array([loss[m & (idx == o)].mean() for o in range(O)])
    return out



def test_intervention_tables_against_a_numpy_forward_pass():
    task = LinearMapConfig(state_size=5, sparsity=2).build(make_generator(0))
    tokens = task.sample(64, make_generator(1)).tokens
    cfg = TransformerConfig(layers=2, heads=3, head_dim=4, mlp_ratio=0, init_std=0.6).resolved(task.vocab_size, task.seq_len - 1)
    early, late = Transformer(cfg, seeds=[0]), Transformer(cfg, seeds=[1])
    pe, pl = numpy_params(early), numpy_params(late)
    inp, tgt = tokens[:, :-1].numpy(), tokens[:, 1:].numpy()
    mask = task.loss_mask.numpy(); index = task.output_index.numpy(); O = task.n_outputs
    worst = {}
    def note(name, a, b):
        worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))))

    # the torch model vs my forward (sanity: the reference itself)
    with torch.no_grad():
        note("model logits vs numpy forward", early(tokens[:, :-1]).double().numpy(), forward(pe, inp)[0])

    _, late_pats = forward(pl, inp)
    base = scores(forward(pe, inp)[0], tgt, mask, index, O)
    table = patching_table(early, late, tokens, output_index=task.output_index, loss_mask=task.loss_mask)
    for l in range(2):
        for h in range(3):
            src = late_pats[l][:, h]
            sc = scores(forward(pe, inp, override={(l, h): lambda a, s=src: s})[0], tgt, mask, index, O)
            note("patching prob_gain", table.prob_gain[l, h], sc["mean_prob"] - base["mean_prob"])
            note("patching loss_drop", table.loss_drop[l, h], base["mean_loss"] - sc["mean_loss"])
            note("patching prob_gain_per_output", table.prob_gain_per_output[l, h], sc["prob_per_output"] - base["prob_per_output"])
            note("patching loss_drop_per_output", table.loss_drop_per_output[l, h], base["loss_per_output"] - sc["loss_per_output"])

    # early-to-late: the early model's pattern written into the late model, signed as late minus patched
    _, early_pats = forward(pe, inp)
    late_base = scores(forward(pl, inp)[0], tgt, mask, index, O)
    back = patching_table(early, late, tokens, output_index=task.output_index, loss_mask=task.loss_mask,
                          direction="early-to-late")
    assert back.direction == "early-to-late" and {r["direction"] for r in back.to_rows()} == {"early-to-late"}
    note("early-to-late baselines", back.early["mean_prob"], base["mean_prob"])
    for l in range(2):
        for h in range(3):
            src = early_pats[l][:, h]
            sc = scores(forward(pl, inp, override={(l, h): lambda a, s=src: s})[0], tgt, mask, index, O)
            note("early-to-late prob_gain", back.prob_gain[l, h], late_base["mean_prob"] - sc["mean_prob"])
            note("early-to-late loss_drop", back.loss_drop[l, h], sc["mean_loss"] - late_base["mean_loss"])
            note("early-to-late prob_gain_per_output", back.prob_gain_per_output[l, h],
                 late_base["prob_per_output"] - sc["prob_per_output"])
            note("early-to-late loss_drop_per_output", back.loss_drop_per_output[l, h],
                 sc["loss_per_output"] - late_base["loss_per_output"])

    # scores patching: the late model's scores written into the early model
    table_s = patching_table(early, late, tokens, what="scores", output_index=task.output_index, loss_mask=task.loss_mask)
    note("patching what=scores == what=pattern", table_s.prob_gain, table.prob_gain)

    # ablations
    T = inp.shape[1]
    causal = np.tril(np.ones((T, T)))
    uni = causal / causal.sum(-1, keepdims=True)
    _, clean_pats = forward(pl, inp)
    clean = scores(forward(pl, inp)[0], tgt, mask, index, O)
    for kind, what, fn in [("zero", "pattern", lambda l, h: (lambda a: np.zeros_like(a))),
                           ("uniform", "pattern", lambda l, h: (lambda a: np.broadcast_to(uni, a.shape))),
                           ("mean", "pattern", lambda l, h: (lambda a, m=clean_pats[l][:, h].mean(0): np.broadcast_to(m, a.shape))),
                           ("zero", "scores", lambda l, h: (lambda a: np.broadcast_to(uni, a.shape)))]:
        res = ablation_table(late, tokens, kind=kind, what=what, output_index=task.output_index, loss_mask=task.loss_mask)
        for l in range(2):
            for h in range(3):
                sc = scores(forward(pl, inp, override={(l, h): fn(l, h)})[0], tgt, mask, index, O)
                note(f"ablation {kind}/{what} prob_drop", res.prob_drop[l, h], clean["mean_prob"] - sc["mean_prob"])
                note(f"ablation {kind}/{what} loss_increase_per_output", res.loss_increase_per_output[l, h], sc["loss_per_output"] - clean["loss_per_output"])

    # mean ablation of scores: mean of the scores over the batch (masked entries -inf)
    res = ablation_table(late, tokens, kind="mean", what="scores", loss_mask=task.loss_mask)
    # clean scores of late
    def clean_scores(p, l):
        n = inp.shape[0]; H, D = p["H"], p["D"]
        x = p["W_E"][inp] + p["W_pos"][:T]
        for ll, b in enumerate(p["blocks"]):
            h = ln(x, *b["ln"]); qkv = (h @ b["W_QKV"] + b["b_QKV"]).reshape(n, T, 3, H, D)
            s = np.einsum("nqhd,nkhd->nhqk", qkv[:, :, 0], qkv[:, :, 1]) / math.sqrt(D)
            if ll == l: return np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            a = np.exp(np.where(np.tril(np.ones((T, T), bool)), s, -np.inf) - s.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
            x = x + np.einsum("nhqk,nkhd->nqhd", a, qkv[:, :, 2]).reshape(n, T, H * D) @ b["W_O"] + b["b_O"]
    for l in range(2):
        cs = clean_scores(pl, l)
        for h in range(3):
            m = cs[:, h].mean(0)
            sc = scores(forward(pl, inp, scores_override={(l, h): lambda s, m=m: np.broadcast_to(m, s.shape).copy()})[0], tgt, mask, index, O)
            note("ablation mean/scores prob_drop", res.prob_drop[l, h], clean["mean_prob"] - sc["mean_prob"])

    pe, pl = pl, pe; early, late = late, early
    _, late_pats = forward(pl, inp)
    base = scores(forward(pe, inp)[0], tgt, mask, index, O)
    _, early_pats = forward(pe, inp)
    late_s = scores(forward(pl, inp)[0], tgt, mask, index, O)
    assert late_s["mean_prob"] > base["mean_prob"], "the swapped pair must improve: pick other seeds"

    def check_greedy(g, target, donor_pats, sign, name):
        """Each step adds the head that moves the target's probability most in ``sign``'s direction (``sign *
        p`` largest), in the numpy forward; the fraction is of late - early moved."""
        start = base["mean_prob"] if sign > 0 else late_s["mean_prob"]
        chosen = []
        for i, head in enumerate(g.heads):
            cands = {}
            for l in range(2):
                for h in range(3):
                    if (l, h) in chosen: continue
                    ov = {hh: (lambda a, s=donor_pats[hh[0]][:, hh[1]]: s) for hh in chosen + [(l, h)]}
                    cands[(l, h)] = sign * scores(forward(target, inp, override=ov)[0], tgt, mask, index, O)["mean_prob"]
            ranked = sorted(cands.values())
            if max(cands, key=cands.get) != head and ranked[-1] - (ranked[-2] if len(ranked) > 1 else -2) > 1e-6:
                worst[f"greedy {name} choice mismatch"] = 1.0
            chosen.append(head)
            note(f"greedy {name} prob", g.prob[i], sign * cands[head])
            note(f"greedy {name} fraction", g.recovered[i],
                 sign * (sign * cands[head] - start) / (late_s["mean_prob"] - base["mean_prob"]))

    # greedy: first choice is the best single head, recovered fractions from the numpy forward
    check_greedy(greedy_heads(early, late, tokens, fraction=0.99, loss_mask=task.loss_mask), pe, late_pats, 1.0,
                 "late-to-early")
    # early-to-late: each step reverts the head that lowers the late model's probability most
    g = greedy_heads(early, late, tokens, fraction=0.99, loss_mask=task.loss_mask, direction="early-to-late")
    assert g.direction == "early-to-late" and g.participle == "removed" and g.heads
    check_greedy(g, pl, early_pats, -1.0, "early-to-late")

    # attention bias: model(tokens, attn_bias=ground_truth_bias(...)) vs scores + beta*M in numpy
    bias = ground_truth_bias(task.attention_mask, layers=2, heads=3, beta=2.5, which_layers=[1], which_heads=[0, 2])
    with torch.no_grad():
        got = early(tokens[None, :, :-1], attn_bias=bias)[0].double().numpy()
    M = task.attention_mask.numpy().astype(float)
    b_np = np.zeros((2, 3, T, T)); b_np[1, 0] = 2.5 * M; b_np[1, 2] = 2.5 * M
    note("attention bias logits", got, forward(pe, inp, bias=b_np)[0])

    bad = {k: v for k, v in worst.items() if not v < 1e-5}
    assert not bad, bad
