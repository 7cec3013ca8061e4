"""GPT-NeoX (Pythia) written out in plain torch over the Hugging Face weights, with our hook points.

No hidden weight processing: the checkpoint's tensors are loaded under new names (a rename table,
:data:`RENAME`) and used as they are; layer norms are not folded, nothing is centred or re-scaled. The
forward is Hugging Face's ``GPTNeoXForCausalLM`` step for step (rotary on the first ``rotary_dim``
channels of each head with ``rotate_half``, the parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``,
eager attention with a float32 softmax), so logits equal HF's own forward (``tests/test_lm.py``:
within 1e-5 on random tokens, also with an identity pattern patch). The linear maps are ``models.layers.Linear``:
``nn.Linear``'s parameters, with oneDNN's products for the large float32 ones on a CPU (twice MKL's rate on an
AVX-512 AMD core: Pythia-70m's unembedding of 2048 tokens 1.13 s -> 0.62 s a thread, benchmarks/onednn_products.py).

Hook points (single model, TransformerLens shapes; see ``models.hooks``)::

    hook_embed                         [B, T, d]
    blocks.{l}.hook_resid_pre          [B, T, d]
    blocks.{l}.attn.hook_q / hook_k / hook_v       [B, T, H, D]  before rotary
    blocks.{l}.attn.hook_rot_q / hook_rot_k        [B, T, H, D]  after rotary
    blocks.{l}.attn.hook_attn_scores   [B, H, Tq, Tk]  pre-softmax, scaled, -inf above the diagonal
    blocks.{l}.attn.hook_pattern       [B, H, Tq, Tk]  softmax of the scores
    blocks.{l}.attn.hook_z             [B, T, H, D]    pattern @ v
    blocks.{l}.hook_attn_out / hook_mlp_out / hook_resid_post   [B, T, d]
    hook_final                         [B, T, d]       after the final layer norm

So ``interventions.patching`` (patching_table, greedy_heads, ablation_table) runs on it unchanged.

Example::

    model = load_neox("path/to/checkpoint-dir")          # config.json + *.safetensors
    logits = model(tokens)                               # [B, T] -> [B, T, V]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.hooks import HookedModule, HookPoint
from ..models.layers import Linear

# Hugging Face parameter name -> ours. Nothing else happens to a tensor.
RENAME = [
    (r"gpt_neox\.embed_in\.weight", "embed.weight"),
    (r"gpt_neox\.layers\.(\d+)\.input_layernorm\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"gpt_neox\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.dense\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", r"blocks.\1.mlp.fc_in.\2"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", r"blocks.\1.mlp.fc_out.\2"),
    (r"gpt_neox\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    (r"embed_out\.weight", "unembed.weight"),
]
# Buffers older checkpoints carry (causal masks, rotary caches): recomputed here, never read.
IGNORED = re.compile(r".*\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$|.*rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class NeoXSpec:
    """The architecture fields of a GPT-NeoX ``config.json`` that the forward uses."""

    layers: int
    heads: int
    d_model: int
    d_mlp: int
    vocab_size: int
    rotary_dim: int
    rope_theta: float
    eps: float
    parallel_residual: bool
    act: str
    attention_bias: bool
    tie_embeddings: bool
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @classmethod
    def from_hf_config(cls, config: Any) -> "NeoXSpec":
        """From a ``transformers.GPTNeoXConfig`` (rotary fields in v5's ``rope_parameters`` or v4's names)."""
        if getattr(config, "model_type", None) != "gpt_neox":
            raise ValueError(f"model_type={getattr(config, 'model_type', None)!r}: only gpt_neox (Pythia) "
                             "checkpoints are supported")
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_type={rope['rope_type']!r}: only the default rotary embedding is supported")
        theta = rope.get("rope_theta", getattr(config, "rotary_emb_base", 10000))
        pct = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
        head_dim = config.hidden_size // config.num_attention_heads
        return cls(layers=config.num_hidden_layers, heads=config.num_attention_heads, d_model=config.hidden_size,
                   d_mlp=config.intermediate_size, vocab_size=config.vocab_size,
                   rotary_dim=int(head_dim * pct), rope_theta=float(theta), eps=float(config.layer_norm_eps),
                   parallel_residual=bool(config.use_parallel_residual), act=str(config.hidden_act),
                   attention_bias=bool(getattr(config, "attention_bias", True)),
                   tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   context_length=int(config.max_position_embeddings))


def _inv_freq(spec: NeoXSpec) -> torch.Tensor:
    """Rotary inverse frequencies ``[rotary_dim / 2]``, float32 (HF's default rope)."""
    return 1.0 / (spec.rope_theta ** (torch.arange(0, spec.rotary_dim, 2, dtype=torch.float) / spec.rotary_dim))


def _hook(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass ``x`` through a hook point in the stored layout (a leading member dimension of 1)."""
    return point(x.unsqueeze(0)).squeeze(0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class NeoXAttention(nn.Module):
    def __init__(self, spec: NeoXSpec):
        super().__init__()
        self.heads, self.head_dim, self.rotary_dim = spec.heads, spec.head_dim, spec.rotary_dim
        self.qkv = Linear(spec.d_model, 3 * spec.d_model, bias=spec.attention_bias)
        self.out = Linear(spec.d_model, spec.d_model, bias=spec.attention_bias)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [B, T, H, D]
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()  # [B, T, H, D]
        self.hook_attn_scores = HookPoint()  # [B, H, Tq, Tk]
        self.hook_pattern = HookPoint()  # [B, H, Tq, Tk]
        self.hook_z = HookPoint()  # [B, T, H, D]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, D, R = self.heads, self.head_dim, self.rotary_dim
        qkv = self.qkv(x).view(B, T, H, 3, D)  # HF's per-head [q | k | v] layout
        q, k, v = (_hook(h, qkv[:, :, :, i]) for i, h in enumerate((self.hook_q, self.hook_k, self.hook_v)))

        def rotary(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, D]; cos/sin [T, R]
            c, s = cos[None, :, None], sin[None, :, None]
            rot, keep = t[..., :R], t[..., R:]
            return torch.cat([rot * c + _rotate_half(rot) * s, keep], dim=-1)

        q, k = _hook(self.hook_rot_q, rotary(q)), _hook(self.hook_rot_k, rotary(k))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        scores = torch.matmul(q, k.transpose(2, 3)) * D ** -0.5  # [B, H, T, T]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = _hook(self.hook_attn_scores, scores.masked_fill(~causal, float("-inf")))
        pattern = _hook(self.hook_pattern, F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        z = _hook(self.hook_z, torch.matmul(pattern, v).transpose(1, 2))  # [B, T, H, D]
        return self.out(z.reshape(B, T, H * D))


class NeoXMLP(nn.Module):
    def __init__(self, spec: NeoXSpec):
        super().__init__()
        from transformers.activations import ACT2FN  # the activation by its config name (gelu for Pythia)

        self.fc_in = Linear(spec.d_model, spec.d_mlp)
        self.fc_out = Linear(spec.d_mlp, spec.d_model)
        self.act = ACT2FN[spec.act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class NeoXBlock(nn.Module):
    def __init__(self, spec: NeoXSpec):
        super().__init__()
        self.parallel = spec.parallel_residual
        self.ln1 = nn.LayerNorm(spec.d_model, eps=spec.eps)
        self.ln2 = nn.LayerNorm(spec.d_model, eps=spec.eps)
        self.attn = NeoXAttention(spec)
        self.mlp = NeoXMLP(spec)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()  # [B, T, d]
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()  # [B, T, d]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = _hook(self.hook_resid_pre, x)
        attn = _hook(self.hook_attn_out, self.attn(self.ln1(x), cos, sin))
        if self.parallel:  # x + attn(ln1(x)) + mlp(ln2(x)), summed in HF's order
            mlp = _hook(self.hook_mlp_out, self.mlp(self.ln2(x)))
            out = mlp + attn + x
        else:
            mid = attn + x
            mlp = _hook(self.hook_mlp_out, self.mlp(self.ln2(mid)))
            out = mlp + mid
        return _hook(self.hook_resid_post, out)


class HookedGPTNeoX(HookedModule):
    """A GPT-NeoX causal LM with our hook names; ``model(tokens [B, T]) -> logits [B, T, V]``.

    A single model (``n_models = 1``), always on its reference path: attention is always materialised, so
    ``observing()`` changes nothing. Build it with :func:`load_neox` (weights from a checkpoint folder).
    """

    n_models = 1

    def __init__(self, spec: NeoXSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.blocks = nn.ModuleList(NeoXBlock(spec) for _ in range(spec.layers))
        self.ln_final = nn.LayerNorm(spec.d_model, eps=spec.eps)
        self.unembed = Linear(spec.d_model, spec.vocab_size, bias=False)
        self.hook_embed, self.hook_final = HookPoint(), HookPoint()  # [B, T, d]
        self.register_buffer("inv_freq", _inv_freq(spec), persistent=False)
        self.setup_hooks(1)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def n_layers(self) -> int:
        """Layers (as ``HookedHFCausalLM.n_layers``, so code written for either model works on both)."""
        return self.spec.layers

    @property
    def n_heads(self) -> int:
        return self.spec.heads

    def rotary(self, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[T, rotary_dim]`` as HF computes them (float32, then cast)."""
        freqs = torch.arange(T, device=self.inv_freq.device).float()[:, None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, T]`` -> logits ``[B, T, V]``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        x = _hook(self.hook_embed, self.embed(tokens.to(self.device)))
        cos, sin = self.rotary(tokens.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.unembed(_hook(self.hook_final, self.ln_final(x)))


def rename_state(state: dict[str, torch.Tensor], spec: NeoXSpec) -> dict[str, torch.Tensor]:
    """HF GPT-NeoX tensor names -> ours (:data:`RENAME`); unknown names are an error."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        for pattern, target in RENAME:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, target, name)] = tensor
                break
        else:
            if not IGNORED.fullmatch(name):
                unknown.append(name)
    if unknown:
        raise ValueError(f"unexpected tensors in a GPT-NeoX checkpoint: {unknown[:5]}")
    if "unembed.weight" not in out and spec.tie_embeddings:
        out["unembed.weight"] = out["embed.weight"]
    return out


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder/*.safetensors`` (one file or HF shards). Pickle files are never read."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (it has {', '.join(bins)}: pickle weights are not loaded)" if bins else ""
        raise FileNotFoundError(f"{folder}: no *.safetensors weights{hint}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_neox(folder: str | Path, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> HookedGPTNeoX:
    """A :class:`HookedGPTNeoX` from a checkpoint folder (``config.json`` + safetensors weights).

    ``dtype``: the weights are cast to it (float32 by default, as HF's ``from_pretrained`` does).
    The config is read with ``transformers.AutoConfig`` (never with remote code).
    """
    from . import require_transformers

    require_transformers()
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a model checkpoint folder)")
    spec = NeoXSpec.from_hf_config(AutoConfig.from_pretrained(str(folder), trust_remote_code=False))
    state = rename_state(read_safetensors(folder), spec)
    with torch.device("meta"):
        model = HookedGPTNeoX(spec)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "inv_freq"]
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not fit the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model = model.to(dtype)
    model.inv_freq = _inv_freq(spec).to(device)  # float32 whatever the weights' dtype, as in HF
    return model.eval()
