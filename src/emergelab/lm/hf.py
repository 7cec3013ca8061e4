"""Any Hugging Face causal LM whose attention goes through transformers' attention interface, with our
attention hook points.

In transformers 5.x (and 4.5x) every attention module of Llama, Qwen2, Mistral, GPT-2, GPT-NeoX and most
other decoders computes ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)(self,
query, key, value, mask, scaling=..., dropout=..., **kwargs)``. We register one more implementation,
:data:`NAME` (:func:`hooked_eager_attention`: HF's eager attention, with the scores and the pattern passed
through hook points), and a mask function for it (:func:`hooked_eager_mask`: HF's eager mask with ``-inf``
where HF puts the dtype's minimum). :class:`HookedHFCausalLM` switches a model to it and owns the hook
points; the attention function finds them on the module it is called with (attribute :data:`HOOKS_ATTR`),
so nothing is kept in a module-global registry. The residual stream's hook points sit on the decoder
layers (the ``nn.ModuleList`` whose ``l``-th entry holds layer ``l``'s attention) as forward hooks. The
HF model's weights and the rest of its forward are used as they are.

Hook points (single model, TransformerLens shapes, as ``neox.py``; see ``models.hooks``)::

    blocks.{l}.hook_resid_pre          [B, T, d]       the decoder layer's input hidden states
    blocks.{l}.attn.hook_attn_scores   [B, H, Tq, Tk]  pre-softmax, scaled, -inf where masked (above the diagonal)
    blocks.{l}.attn.hook_pattern       [B, H, Tq, Tk]  softmax of the scores (float32 softmax, cast back)
    blocks.{l}.attn.hook_z             [B, T, H, D]    pattern @ values, per head, before the output projection
    blocks.{l}.hook_resid_post         [B, T, d]       the decoder layer's output hidden states

``H`` is ``num_attention_heads``: with grouped-query attention each key/value head is repeated for its
query heads before the scores, as HF's eager does, so every query head has its own pattern. So
``interventions.patching`` (patching_table, greedy_heads, ablation_table, cache_attention) and
``lm.capabilities`` / ``lm.scan`` / ``lm.patch`` run on it unchanged.

Refused (a clear error naming the model type and the feature): attention-function arguments that change
the math and are not implemented here (:data:`CHANGES_MATH`, e.g. Gemma-2's ``softcap``, gpt-oss's
``s_aux`` sinks) or that are unknown; GPT-2's ``reorder_and_upcast_attn`` (a path that bypasses the
interface); cross-attention; models whose layers do not all call the interface (checked by one probe
forward when wrapping).

Example::

    model = load_hf_causal_lm("path/to/checkpoint-dir")   # config.json + *.safetensors
    logits = model(tokens)                                 # [B, T] -> [B, T, V], float32
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.hooks import HookedModule, HookPoint

NAME = "emergelab_eager"  # our attention implementation's name in transformers' interfaces
HOOKS_ATTR = "_emergelab_hooks"  # on each HF attention module: (hook_attn_scores, hook_pattern, hook_z) of its layer

# Arguments transformers passes to an attention function that leave eager attention's math unchanged
# (sliding_window: the mask already encodes the window; the rest only matter to other implementations).
HARMLESS = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions", "sliding_window",
                      "is_causal", "past_key_values", "cache", "layer_idx"})
# Arguments that change it, which this eager does not implement.
CHANGES_MATH = {"softcap": "attention logit soft-capping (Gemma 2/3)",
                "s_aux": "attention sinks (gpt-oss)",
                "sinks": "attention sinks",
                "position_bias": "an additive relative position bias (T5-style)"}


def _hook(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass ``x`` through a hook point in the stored layout (a leading member dimension of 1)."""
    return point(x.unsqueeze(0)).squeeze(0)


def _model_type(module: nn.Module) -> str:
    return str(getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__)


def _check_arguments(module: nn.Module, kwargs: dict[str, Any]) -> None:
    """Refuse an argument (not None) that would change the attention this function computes."""
    for key, value in kwargs.items():
        if value is None or value is False or key in HARMLESS:
            continue
        what = CHANGES_MATH.get(key)
        if what is not None:
            raise NotImplementedError(f"model type {_model_type(module)!r} uses {what} ({key}={value!r}), which "
                                      "emergelab's hooked eager attention does not implement")
        raise NotImplementedError(f"model type {_model_type(module)!r} passes {key}={value!r} to its attention "
                                  "function; emergelab's hooked eager attention does not know what it does to the "
                                  "math and refuses rather than compute different attention")


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H_kv, T, D] -> [B, H_kv * groups, T, D]``, each head repeated ``groups`` times in place
    (HF's ``repeat_kv``, i.e. ``repeat_interleave`` on dim 1)."""
    if groups == 1:
        return x
    B, H_kv, T, D = x.shape
    return x[:, :, None].expand(B, H_kv, groups, T, D).reshape(B, H_kv * groups, T, D)


def hooked_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None,
                           dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's eager attention (Llama's ``eager_attention_forward``) with hook points on scores and pattern.

    ``query [B, H, Tq, D]``, ``key``/``value`` ``[B, H_kv, Tk, D]`` (``H`` a multiple of ``H_kv``),
    ``attention_mask`` additive, broadcastable to ``[B, H, Tq, Tk]``, or None. ``scaling`` defaults to
    ``D ** -0.5``. Returns ``(output [B, Tq, H, D], pattern [B, H, Tq, Tk])``. The hook points are
    ``module``'s :data:`HOOKS_ATTR`, set by :class:`HookedHFCausalLM`.
    """
    _check_arguments(module, kwargs)
    points = getattr(module, HOOKS_ATTR, None)
    if points is None:
        raise RuntimeError(f"{type(module).__name__} runs attention {NAME!r} but has no emergelab hook points: "
                           "wrap the model with emergelab.lm.hf.HookedHFCausalLM")
    scores_point, pattern_point, z_point = points
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    groups = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)  # [B, H, Tk, D]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # [B, H, Tq, Tk]
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = _hook(scores_point, scores)
    pattern = _hook(pattern_point, F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype))
    pattern = F.dropout(pattern, p=dropout, training=module.training)
    output = _hook(z_point, torch.matmul(pattern, value).transpose(1, 2)).contiguous()  # [B, Tq, H, D]
    return output, pattern


def hooked_eager_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """HF's ``eager_mask`` (``[B, 1, Tq, Tk]``, 0 where visible) with ``-inf`` instead of the dtype's minimum
    where masked, so ``hook_attn_scores`` reads as in ``neox.py``. The softmax is the same: both give
    exact zeros there (no row is fully masked: every query sees itself)."""
    from transformers.masking_utils import eager_mask

    mask = eager_mask(*args, **kwargs)
    if mask is None:
        return None
    return mask.masked_fill(mask == torch.finfo(mask.dtype).min, float("-inf"))


def register_attention() -> str:
    """Register :data:`NAME` with transformers' attention and mask interfaces (once; idempotent). Without
    the mask registration transformers builds no mask for an implementation it does not know."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS.get(NAME) is not hooked_eager_attention:
        AttentionInterface.register(NAME, hooked_eager_attention)
    if ALL_MASK_ATTENTION_FUNCTIONS.get(NAME) is not hooked_eager_mask:
        AttentionMaskInterface.register(NAME, hooked_eager_mask)
    return NAME


def check_config(config: Any) -> None:
    """Refuse configs whose attention would not (all) go through the interface as plain eager attention."""
    kind = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        raise NotImplementedError(f"model type {kind!r}: cross-attention (encoder-decoder) is not supported; "
                                  "only decoder-only causal LMs")
    if getattr(config, "reorder_and_upcast_attn", False):
        raise NotImplementedError(f"model type {kind!r}: reorder_and_upcast_attn=True takes GPT-2's own "
                                  "upcast attention path, which bypasses transformers' attention interface")


def attention_modules(model: nn.Module, n_layers: int) -> list[nn.Module]:
    """Layer ``l``'s attention module for ``l < n_layers``: the innermost module with ``layer_idx == l``
    (a decoder layer may carry the same ``layer_idx`` as the attention inside it)."""
    by_layer: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int) and not isinstance(index, bool):
            by_layer.setdefault(index, []).append((name, module))
    kind = getattr(model.config, "model_type", "?")
    if sorted(by_layer) != list(range(n_layers)):
        raise NotImplementedError(f"model type {kind!r}: modules with a layer_idx cover layers {sorted(by_layer)}, "
                                  f"not 0..{n_layers - 1} (num_hidden_layers={n_layers}); not a decoder whose "
                                  "every layer has one attention module")
    out = []
    for layer in range(n_layers):
        found = by_layer[layer]
        inner = [(n, m) for n, m in found if not any(other.startswith(n + ".") for other, _ in found)]
        if len(inner) != 1:
            raise NotImplementedError(f"model type {kind!r}: layer {layer} has several attention modules "
                                      f"({', '.join(n for n, _ in inner)}); only one per layer is supported")
        out.append(inner[0][1])
    return out


def decoder_layers(model: nn.Module, attention: list[nn.Module]) -> list[nn.Module]:
    """The decoder layers: the ``nn.ModuleList`` of ``len(attention)`` entries whose ``l``-th entry holds
    ``attention[l]`` (Llama's ``model.layers``, GPT-2's ``transformer.h``, ...)."""
    for _, candidate in model.named_modules():
        if isinstance(candidate, nn.ModuleList) and len(candidate) == len(attention) and all(
                any(inner is module for inner in layer.modules()) for layer, module in zip(candidate, attention)):
            return list(candidate)
    raise NotImplementedError(f"model type {getattr(model.config, 'model_type', '?')!r}: no list of decoder layers "
                              "holding one attention module each")


def _residual_hooks(layer: nn.Module, pre: HookPoint, post: HookPoint) -> list[Any]:
    """Forward hooks on an HF decoder layer passing its input and output hidden states ``[B, T, d]``
    through ``pre`` / ``post``; returns the handles."""

    def before(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if args:
            return (_hook(pre, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": _hook(pre, kwargs["hidden_states"])}

    def after(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (_hook(post, output[0]), *output[1:])
        return _hook(post, output)

    return [layer.register_forward_pre_hook(before, with_kwargs=True), layer.register_forward_hook(after)]


class HookedHFAttention(nn.Module):
    """The hook points of one layer's attention (the math stays in the HF module)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_attn_scores = HookPoint()  # [B, H, Tq, Tk]
        self.hook_pattern = HookPoint()  # [B, H, Tq, Tk]
        self.hook_z = HookPoint()  # [B, T, H, D]


class HookedHFBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [B, T, d]
        self.attn = HookedHFAttention()
        self.hook_resid_post = HookPoint()  # [B, T, d]


class HookedHFCausalLM(HookedModule):
    """A Hugging Face causal LM with our attention hook names; ``model(tokens [B, T]) -> logits [B, T, V]``.

    Takes ownership of ``model`` (a ``PreTrainedModel`` for causal LM): switches its attention
    implementation to :data:`NAME` and marks each layer's attention module with that layer's hook points.
    A single model (``n_models = 1``) whose attention is always materialised. ``hf``: the HF model;
    ``n_layers``, ``n_heads`` (query heads), ``model_type``. Build it from a folder with
    :func:`load_hf_causal_lm`.
    """

    n_models = 1

    def __init__(self, model: nn.Module):
        super().__init__()
        config = model.config
        check_config(config)
        self.model_type = str(config.model_type)
        self.n_layers, self.n_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        modules = attention_modules(model, self.n_layers)
        layers = decoder_layers(model, modules)
        self.hf = model
        self.blocks = nn.ModuleList(HookedHFBlock() for _ in range(self.n_layers))
        self.setup_hooks(1)
        previous = config._attn_implementation
        handles: list[Any] = []
        try:
            model.set_attn_implementation(register_attention())
            if config._attn_implementation != NAME:
                raise NotImplementedError(f"model type {self.model_type!r}: its attention cannot be switched to "
                                          f"{NAME!r} (it does not go through transformers' attention interface)")
            for module, block in zip(modules, self.blocks):
                # a tuple, so the points stay submodules of self.blocks only, not of the HF module
                setattr(module, HOOKS_ATTR, (block.attn.hook_attn_scores, block.attn.hook_pattern,
                                             block.attn.hook_z))
            for layer, block in zip(layers, self.blocks):
                handles += _residual_hooks(layer, block.hook_resid_pre, block.hook_resid_post)
            self._check_every_layer_fires()
        except Exception:  # a refused model is handed back as it came
            for handle in handles:
                handle.remove()
            for module in modules:
                if hasattr(module, HOOKS_ATTR):
                    delattr(module, HOOKS_ATTR)
            model.set_attn_implementation(previous)
            raise

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, T]`` -> logits ``[B, T, V]`` (float32 whatever the weights' dtype)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        return self.hf(input_ids=tokens.to(self.device), use_cache=False).logits.float()

    @torch.no_grad()
    def _check_every_layer_fires(self) -> None:
        """One probe forward on two tokens: every hook point must fire exactly once."""
        calls: dict[str, int] = {}

        def count(x: torch.Tensor, hook: HookPoint) -> None:
            calls[hook.name] = calls.get(hook.name, 0) + 1

        with self.hooks([(lambda name: True, count)]):
            self(torch.zeros(1, 2, dtype=torch.long))
        wrong = sorted(name for name in self.hook_dict if calls.get(name) != 1)
        if wrong:
            raise NotImplementedError(f"model type {self.model_type!r}: hook points {', '.join(wrong)} did not fire "
                                      "exactly once per forward (the attention must run through transformers' "
                                      "attention interface, each decoder layer once)")


def _require_safetensors(folder: Path) -> None:
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a model checkpoint folder)")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        has = f" (it has {', '.join(pickles)})" if pickles else ""
        raise FileNotFoundError(f"{folder}: no *.safetensors weights{has}: safetensors only, pickle weights "
                                "are never loaded")


def load_hf_causal_lm(folder: str | Path, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> HookedHFCausalLM:
    """A :class:`HookedHFCausalLM` from a ``save_pretrained`` folder (``config.json`` + safetensors).

    ``AutoModelForCausalLM.from_pretrained`` with ``trust_remote_code=False`` and ``use_safetensors=True``;
    the weights in ``dtype`` on ``device``; in eval mode.
    """
    from . import require_transformers

    require_transformers()
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    _require_safetensors(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False, use_safetensors=True,
                                                 dtype=dtype, attn_implementation="eager")
    return HookedHFCausalLM(model.to(device)).eval()


def model_type(folder: str | Path) -> str | None:
    """``model_type`` of ``folder/config.json`` (read as JSON, no transformers import)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a model checkpoint folder)")
    return json.loads(path.read_text()).get("model_type")


def load_lm(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Any:
    """Any causal LM checkpoint folder with our hook names: ``gpt_neox`` (Pythia) through our plain-torch
    :func:`~emergelab.lm.neox.load_neox`, every other model type through :func:`load_hf_causal_lm`."""
    if model_type(folder) == "gpt_neox":
        from .neox import load_neox

        return load_neox(folder, dtype=dtype, device=device)
    return load_hf_causal_lm(folder, dtype=dtype, device=device)
