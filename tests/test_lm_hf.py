"""emergelab.lm.hf offline: tiny random Llama (grouped-query), Qwen2, GPT-2 and Mistral (sliding window)
models built with transformers' config classes, saved with safetensors and loaded with ``load_lm``.

* logits equal the HF model's own eager forward; the cached ``hook_pattern`` equals HF's
  ``output_attentions`` (causal, rows sum to 1, ``[B, H, T, T]``); ``hook_attn_scores`` is -inf where masked;
  ``hook_resid_pre`` / ``hook_resid_post`` equal HF's ``output_hidden_states``; ``hook_z`` is editable;
* a pattern patch changes only that head's output, an identity patch changes nothing, gradients flow;
* ``interventions.patching`` (patching_table, greedy_heads, ablation_table) on two Llama seeds, and the
  ``emergelab lm patch`` / ``lm scan`` commands on a local Llama suite;
* ``load_lm`` dispatches gpt_neox to ``neox.py``; pickle-only folders, Gemma-2's soft-capping, unknown
  attention arguments, GPT-2's ``reorder_and_upcast_attn`` and unwrapped modules are refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from emergelab.cli import main  # noqa: E402
from emergelab.interventions import ablation_table, greedy_heads, patching_table  # noqa: E402
from emergelab.lm import HookedGPTNeoX, HookedHFCausalLM, load_lm, load_neox  # noqa: E402
from emergelab.lm.hf import attention_modules, hooked_eager_attention  # noqa: E402

SMALL = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, initializer_range=0.2, bos_token_id=1, eos_token_id=1, pad_token_id=0)
ARCHS = {  # name -> (model class, config, name of the attention's output projection)
    "llama": (LlamaForCausalLM, lambda: LlamaConfig(**SMALL, num_key_value_heads=2), "o_proj"),
    "qwen2": (Qwen2ForCausalLM, lambda: Qwen2Config(**SMALL, num_key_value_heads=2), "o_proj"),
    "gpt2": (GPT2LMHeadModel, lambda: GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                 initializer_range=0.2, bos_token_id=1, eos_token_id=1), "c_proj"),
    "mistral": (MistralForCausalLM, lambda: MistralConfig(**SMALL, num_key_value_heads=1, sliding_window=5), "o_proj"),
}
T = 13  # longer than Mistral's window of 5


def save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tmp_path_factory) -> tuple[str, torch.nn.Module, HookedHFCausalLM]:
    """(arch, HF's own model loaded with eager attention, ours loaded with load_lm) from one folder."""
    cls, config, _ = ARCHS[request.param]
    torch.manual_seed(0)
    folder = save(cls(config()).eval(), tmp_path_factory.mktemp(request.param))
    reference = cls.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, reference, load_lm(folder)


def tokens(b: int = 3, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, 50, (b, t), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------- equivalence

def test_logits_equal_hugging_face_eager(pair):
    arch, reference, model = pair
    assert isinstance(model, HookedHFCausalLM) and model.model_type == arch
    assert (model.n_layers, model.n_heads) == (2, 4)
    x = tokens()
    with torch.no_grad():
        ours, theirs = model(x), reference(x).logits
    assert ours.shape == (3, T, 50) and ours.dtype == torch.float32
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5


def test_pattern_equals_hugging_face_attentions(pair):
    arch, reference, model = pair
    x = tokens(2)
    with torch.no_grad():
        attentions = reference(x, output_attentions=True).attentions
    _, cache = model.run_with_cache(x)
    assert set(cache) == set(model.hook_dict) == {f"blocks.{l}.{h}" for l in range(2) for h in (
        "hook_resid_pre", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_resid_post")}
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        assert pattern.shape == scores.shape == (2, 4, T, T)
        torch.testing.assert_close(pattern, attentions[layer], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, T))
        assert (pattern[..., above] == 0).all() and (scores[..., above] == float("-inf")).all()
        assert torch.equal(scores == float("-inf"), pattern == 0)
    if arch == "mistral":  # the sliding window is in the mask: query 12 sees keys 8..12 only
        assert (cache["blocks.0.attn.hook_pattern"][:, :, 12, :8] == 0).all()


def test_residual_and_z_hooks_equal_hugging_face_hidden_states(pair):
    """hook_resid_pre / hook_resid_post are the decoder layers' input and output hidden states (HF's
    ``output_hidden_states``: [embeddings, after layer 0, ...]; its last entry comes after the final norm in
    some models, so layer 0's output is compared); hook_z (per-head ``pattern @ values``) and the residual
    hooks are editable: an identity edit changes nothing, a real one changes the logits."""
    arch, reference, model = pair
    x = tokens(2)
    with torch.no_grad():
        hidden = reference(x, output_hidden_states=True).hidden_states
    _, cache = model.run_with_cache(x)
    d = hidden[0].shape[-1]
    for layer in range(2):
        assert cache[f"blocks.{layer}.hook_resid_pre"].shape == cache[f"blocks.{layer}.hook_resid_post"].shape == (2, T, d)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (2, T, 4, d // 4)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], hidden[0])
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hidden[1])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], hidden[1])
    with torch.no_grad():  # zeroing one layer's z or replacing its residual output changes the logits
        plain = model(x)
        no_z = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_z", lambda t, hook: torch.zeros_like(t))])
        same = model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t.clone())])
        moved = model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t + 1.0)])
    assert torch.equal(same, plain)
    assert not torch.allclose(no_z, plain) and not torch.allclose(moved, plain)


# ------------------------------------------------------------------------------------------ patching

def _uniform(n: int) -> torch.Tensor:
    visible = torch.ones(n, n).tril()
    return visible / visible.sum(-1, keepdim=True)


def test_a_pattern_patch_changes_only_that_head_and_gradients_flow(pair):
    arch, _, model = pair
    x = tokens(2)
    with torch.no_grad():
        clean = model(x)
        same = model.run_with_hooks(x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda p, hook: p)])
    assert torch.equal(same, clean)

    def uniform_head_2(pattern: torch.Tensor, hook) -> torch.Tensor:
        pattern = pattern.clone()
        pattern[:, 2] = _uniform(pattern.shape[-1])
        return pattern

    out_proj = getattr(attention_modules(model.hf, 2)[1], ARCHS[arch][2])
    seen: list[torch.Tensor] = []
    handle = out_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
            patched = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_head_2)])
    finally:
        handle.remove()
    assert float((patched - clean).abs().max()) > 1e-4
    before, after = (z.view(2, T, 4, 8) for z in seen)  # the last layer's heads' outputs [B, T, H, D]
    keep = [0, 1, 3]
    assert torch.equal(before[:, :, keep], after[:, :, keep])
    assert not torch.allclose(before[:, :, 2], after[:, :, 2])

    alpha = torch.tensor(0.5, requires_grad=True)

    def mix(pattern: torch.Tensor, hook) -> torch.Tensor:
        return alpha * pattern + (1 - alpha) * _uniform(pattern.shape[-1])

    try:
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", mix)]).logsumexp(-1).sum().backward()
        assert alpha.grad is not None and math.isfinite(float(alpha.grad)) and float(alpha.grad) != 0
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:
        model.zero_grad(set_to_none=True)


def test_patching_table_and_greedy_heads_on_two_llama_seeds(tmp_path):
    cls, config, _ = ARCHS["llama"]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(load_lm(save(cls(config()), tmp_path / f"seed{seed}")))
    early, late = models
    x = tokens(8, 10)
    table = patching_table(early, late, x, batch_size=4)
    assert table.prob_gain.shape == (2, 4) and torch.isfinite(table.prob_gain).all()
    assert float(table.prob_gain.abs().max()) > 0
    same = patching_table(late, late, x)
    assert torch.allclose(same.prob_gain, torch.zeros(2, 4), atol=1e-6)
    scores = patching_table(early, late, x, what="scores")
    assert scores.prob_gain.shape == (2, 4) and torch.isfinite(scores.prob_gain).all()
    greedy = greedy_heads(early, late, x, max_heads=2)
    assert len(greedy.heads) <= 2 and all(math.isfinite(p) for p in greedy.prob)
    ablation = ablation_table(late, x, kind="mean")
    assert ablation.prob_drop.shape == (2, 4) and torch.isfinite(ablation.prob_drop).all()


def test_the_hf_path_on_gpt_neox_gives_our_neox_patterns(tmp_path):
    """Two implementations of one model's hooks: HF's GPT-NeoX wrapped vs our plain-torch neox.py."""
    torch.manual_seed(2)
    hf = GPTNeoXForCausalLM(GPTNeoXConfig(**{**SMALL, "initializer_range": 0.02}, rotary_pct=0.5,
                                          attn_implementation="eager")).eval()
    ours = load_neox(save(hf, tmp_path))
    wrapped = HookedHFCausalLM(hf)
    x = tokens(2)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), ours(x), rtol=1e-5, atol=1e-5)
    _, a = wrapped.run_with_cache(x)
    _, b = ours.run_with_cache(x, names_filter=lambda n: n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ loading, refusals

def test_load_lm_dispatches_and_refuses_pickle_weights(tmp_path):
    torch.manual_seed(3)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, attn_implementation="eager"))
    ours = load_lm(save(neox, tmp_path / "neox"))
    assert isinstance(ours, HookedGPTNeoX)
    llama = LlamaForCausalLM(ARCHS["llama"][1]())
    theirs = load_lm(save(llama, tmp_path / "llama"))
    assert isinstance(theirs, HookedHFCausalLM)
    # both say their sizes the same way
    for model, hf in ((ours, neox), (theirs, llama)):
        assert (model.n_layers, model.n_heads) == (hf.config.num_hidden_layers, hf.config.num_attention_heads)
    pickled = tmp_path / "pickled"
    llama.config.save_pretrained(pickled)
    torch.save(llama.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*safetensors only"):
        load_lm(pickled)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_lm(tmp_path)


def test_features_that_change_the_math_are_refused(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma = Gemma2ForCausalLM(Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=8, attn_implementation="eager"))
    with pytest.raises(NotImplementedError, match=r"'gemma2'.*soft-capping.*softcap=50\.0"):
        load_lm(save(gemma, tmp_path / "gemma2"))
    with pytest.raises(NotImplementedError, match="soft-capping"):
        HookedHFCausalLM(gemma)
    assert gemma.config._attn_implementation == "eager"  # a refused model is handed back as it came
    assert not any(hasattr(m, "_emergelab_hooks") for m in gemma.modules())

    with pytest.raises(NotImplementedError, match="'gpt2'.*reorder_and_upcast_attn"):
        HookedHFCausalLM(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50,
                                                    reorder_and_upcast_attn=True)))

    model = load_lm(save(LlamaForCausalLM(ARCHS["llama"][1]()), tmp_path / "llama"))
    attention = attention_modules(model.hf, 2)[0]
    q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    out, pattern = hooked_eager_attention(attention, q, kv, kv, None, sliding_window=None, position_ids=None)
    assert out.shape == (1, 3, 4, 8) and pattern.shape == (1, 4, 3, 3)
    with pytest.raises(NotImplementedError, match=r"'llama'.*soft-capping \(Gemma 2/3\) \(softcap=30\.0\)"):
        hooked_eager_attention(attention, q, kv, kv, None, softcap=30.0)
    with pytest.raises(NotImplementedError, match=r"'llama'.*attention sinks \(gpt-oss\)"):
        hooked_eager_attention(attention, q, kv, kv, None, s_aux=torch.zeros(4))
    with pytest.raises(NotImplementedError, match="does not know"):
        hooked_eager_attention(attention, q, kv, kv, None, new_feature=2.0)
    with pytest.raises(RuntimeError, match="no emergelab hook points"):
        hooked_eager_attention(torch.nn.Module(), q, kv, kv, None)


# ---------------------------------------------------------------------------------------------- CLI

WORDS = [str(d) for d in range(10)]


def _save_tokenizer(folder: Path) -> None:
    from test_lm import save_tokenizer

    save_tokenizer(folder, WORDS)


def test_cli_patch_and_scan_on_a_local_llama_suite(tmp_path, capsys):
    cls, config, _ = ARCHS["llama"]
    for step in (0, 100, 200):
        torch.manual_seed(step)
        _save_tokenizer(save(cls(config()), tmp_path / "suite" / f"step{step}"))
    suite, knobs = str(tmp_path / "suite"), ["--param", "length=8", "--param", "repeat=4", "--n-prompts", "16"]
    assert main(["lm", "patch", "--local", suite, "--early", "step0", "--late", "step200", *knobs,
                 "--top-k", "2", "--max-heads", "1", "--out", str(tmp_path / "patch")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "patch" / "patch_table.parquet").num_rows == 8
    assert main(["lm", "scan", "--local", suite, *knobs, "--metric", "target_prob", "--threshold", "0.02",
                 "--out", str(tmp_path / "scan")]) == 0
    assert "seed 0 step200: target_prob" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "scan" / "metrics.parquet").num_rows > 0
