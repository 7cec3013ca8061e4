"""The contract every sequence model meets, so any model trains, is measured and is patched alike.

A model is two things, registered by name in ``models.MODELS``:

* a **config**: a frozen dataclass with a ``name`` class variable, ``vocab_size`` and ``context_length``
  fields (``None`` until the task fills them in), and

  - ``resolved(vocab_size, context_length)`` -> the config with the task's sizes filled in;
  - ``n_params()`` -> parameters of one member; ``flops_per_token()`` -> forward FLOPs per token at
    full context (2 per multiply-add);
  - ``build(n_models, seeds)`` -> the :class:`SequenceModel`.

* a **module**, a subclass of :class:`SequenceModel`: ``E = n_models`` independent members (one per
  seed) in one forward pass. Every parameter has a leading member dimension ``E``; tokens ``[E, B, T]``
  give logits ``[E, B, T, V]`` (a single model also takes ``[B, T]`` -> ``[B, T, V]``). A subclass
  writes ``forward_members(tokens [E, B, T], **inputs) -> logits [E, B, T, V]``, declares hook points
  (``HookPoint`` attributes, named by their module path; layout in ``models.hooks``), and gives every
  parameter an explicit initialiser: each module that owns parameters has ``init_specs()`` returning
  ``{parameter name: Init}`` (an unlisted parameter is an error, never a silent zero).

Capabilities a model declares (class variables): ``accepts_attn_bias`` (``forward(..., attn_bias=...)``
adds a per-head bias to attention scores; the ground-truth bias intervention needs it), ``capturable``
(its training step never reads the GPU back, so on CUDA it can be captured into a CUDA graph:
``train/graphed.py``; a model whose forward reads a value back, e.g. for a numerical bound, sets it False),
``selects_positions`` (``forward_members(..., positions=)`` computes only the positions asked for; without
it ``forward`` computes every position and returns the selected ones)
and the hook names it offers (``model.hook_dict``). Measurements decide from the hook names whether they apply.

Example: a model with no attention at all, in a few lines (``tests/test_architecture.py`` trains one)::

    @dataclass(frozen=True)
    class BagConfig:
        name: ClassVar[str] = "bag"
        width: int = 16
        vocab_size: int | None = None
        context_length: int | None = None
        def resolved(self, vocab_size, context_length): return replace(self, vocab_size=vocab_size,
                                                                       context_length=context_length)
        def n_params(self): return 2 * self.vocab_size * self.width
        def flops_per_token(self): return 2 * self.vocab_size * self.width
        def build(self, n_models=1, seeds=None): return Bag(self, n_models, seeds)
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

import torch
from .hooks import HookedModule

Init = Callable[[tuple[int, ...], torch.Generator], torch.Tensor]  # (one member's shape, generator) -> values
Positions = slice | torch.Tensor  # a range of sequence positions, or a 1-D int64 tensor of them


def mask_positions(mask: torch.Tensor) -> Positions | None:
    """The positions where ``mask [P]`` (bool) is set, to compute logits at: None for all of them (or none),
    a slice for a contiguous run (a view, no copy), else an int64 index tensor on the mask's device."""
    where = mask.nonzero().flatten().tolist()
    if len(where) == len(mask) or not where:
        return None
    if where == list(range(where[0], where[-1] + 1)):
        return slice(where[0], where[-1] + 1)
    return torch.tensor(where, dtype=torch.int64, device=mask.device)


def checked_positions(positions: Any, T: int, device: torch.device) -> Positions:
    """``positions`` as :func:`select_positions` takes them, for sequences of ``T`` tokens: a slice as it is,
    a list or tuple of ints or an integer tensor as a 1-D int64 tensor on ``device`` (negative entries count
    from the end, as in a slice). TypeError / ValueError naming ``positions`` otherwise; on a CPU the entries
    are checked to lie in ``[-T, T)`` (on a GPU that check would read the device back at every step)."""
    if isinstance(positions, slice):
        return positions
    if isinstance(positions, (list, tuple)):
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise TypeError(f"positions must be a slice or integers, got {positions!r}")
        positions = torch.tensor(positions, dtype=torch.int64)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1 or positions.dtype.is_floating_point \
            or positions.dtype == torch.bool or positions.is_complex():
        what = type(positions).__name__
        if isinstance(positions, torch.Tensor):
            what += f" of shape {tuple(positions.shape)}, dtype {positions.dtype}"
        raise TypeError(f"positions must be a slice or a 1-D integer tensor of positions, got {what}")
    on_cpu = positions.device.type == "cpu" and positions.numel()
    if on_cpu and not (-T <= int(positions.min()) and int(positions.max()) < T):
        raise ValueError(f"positions must lie in [-{T}, {T}) for sequences of {T} tokens, got "
                         f"{int(positions.min())}..{int(positions.max())}")
    return positions.to(device=device, dtype=torch.int64).remainder(T)  # -1 -> T - 1, as a slice counts


def select_positions(x: torch.Tensor, positions: Positions, dim: int) -> torch.Tensor:
    """The entries of ``x`` at ``positions`` along ``dim`` (a view for a slice, a copy for an index tensor)."""
    if isinstance(positions, slice):
        return x[(slice(None),) * (dim % x.dim()) + (positions,)]
    return x.index_select(dim, positions)


def normal(std: float) -> Init:
    """Draw ``N(0, std^2)`` (from the member's generator)."""
    return lambda shape, generator: torch.randn(shape, generator=generator) * std


def constant(value: float) -> Init:
    """Fill with ``value`` (draws nothing)."""
    return lambda shape, generator: torch.full(shape, float(value))


zeros, ones = constant(0.0), constant(1.0)


class ModelConfig(Protocol):
    """What ``ExperimentConfig.model`` holds (see the module doc)."""

    name: ClassVar[str]
    vocab_size: int | None
    context_length: int | None

    def resolved(self, vocab_size: int, context_length: int) -> "ModelConfig": ...

    def n_params(self) -> int: ...

    def flops_per_token(self) -> int: ...

    def build(self, n_models: int = 1, seeds: list[int] | None = None) -> "SequenceModel": ...


class SequenceModel(HookedModule):
    """Base class of every model: members, input layouts, explicit init, member extraction and stacking.

    Subclasses call ``super().__init__(config, n_models)``, create their parameters and hook points, then
    ``self.finish_init(seeds)``.
    """

    accepts_attn_bias: ClassVar[bool] = False
    capturable: ClassVar[bool] = True
    selects_positions: ClassVar[bool] = False  # forward_members(..., positions=) computes only those

    def __init__(self, config: Any, n_models: int = 1):
        super().__init__()
        if config.vocab_size is None or config.context_length is None:
            from ..config import ConfigError

            raise ConfigError(f"model.vocab_size={config.vocab_size!r}: vocab_size and context_length must "
                              "be set (config.resolved(vocab_size, context_length))")
        if not isinstance(n_models, int) or n_models < 1:
            raise ValueError(f"n_models must be a positive integer, got {n_models!r}")
        self.config = config
        self.n_models = n_models

    def finish_init(self, seeds: list[int] | None) -> None:
        """Name the hook points and initialise every member (``seeds[e]``, default ``e``)."""
        self.setup_hooks(self.n_models)
        self.init_weights(seeds if seeds is not None else list(range(self.n_models)))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, seeds: list[int]) -> None:
        """Initialise member ``e`` from ``seeds[e]`` alone, drawing on the CPU (so every device agrees):
        member ``e`` of an ensemble equals a single model built with ``seeds=[seeds[e]]``.

        Parameters are visited in ``named_parameters()`` order; each takes its owner's ``init_specs()``."""
        if len(seeds) != self.n_models:
            raise ValueError(f"init_weights needs {self.n_models} seeds, got {len(seeds)}")
        specs = self.parameter_inits()
        for e, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(seed))
            for name, param in self.named_parameters():
                param[e] = specs[name](tuple(param.shape[1:]), generator).to(param.device, param.dtype)

    def parameter_inits(self) -> dict[str, Init]:
        """``{full parameter name: Init}``, gathered from every module's ``init_specs()``."""
        out: dict[str, Init] = {}
        for prefix, module in self.named_modules():
            own = [name for name, _ in module.named_parameters(recurse=False)]
            if not own:
                continue
            specs = module.init_specs() if hasattr(module, "init_specs") else {}
            for name in own:
                full = f"{prefix}.{name}" if prefix else name
                if name not in specs:
                    raise TypeError(f"{type(self).__name__}: parameter {full} has no initialiser; add it to "
                                    f"{type(module).__name__}.init_specs()")
                out[full] = specs[name]
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, positions: Positions | None = None, **inputs: Any) -> torch.Tensor:
        """tokens ``[B, T]`` (E = 1) or ``[E, B, T]`` -> logits ``[B, T, V]`` or ``[E, B, T, V]``.

        positions: only these positions' logits are wanted (a slice, or integer positions ``[T']``: a list
        or a 1-D tensor, negative ones counting from the end; :func:`checked_positions`) -> logits
        ``[B, T', V]`` / ``[E, B, T', V]`` (what a training step whose loss reads a few positions asks for).
        A model that ``selects_positions`` leaves the other positions out where they stop mattering (a
        residual stack: after its last mixer, so the last MLP, final norm and unembedding run on ``T'``
        rows, and the hooks there see those rows only); any other model computes every position and returns
        the selected ones."""
        bias = inputs.pop("attn_bias", None)
        if bias is not None:
            if not self.accepts_attn_bias:
                raise TypeError(f"{type(self).__name__} has no attention scores to bias (accepts_attn_bias=False)")
            inputs["attn_bias"] = bias
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be a tensor of integer token ids, got "
                            f"{tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        single = tokens.dim() == 2
        if single:
            if self.n_models != 1:
                raise ValueError(f"tokens [B, T] need a single model; this one has {self.n_models}: pass [E, B, T]")
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [B, T] or [E, B, T], got shape {tuple(tokens.shape)}")
        E, B, T = tokens.shape
        if E != self.n_models:
            raise ValueError(f"tokens have {E} members, the model has {self.n_models}")
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length {self.config.context_length}")
        if positions is not None:
            positions = checked_positions(positions, T, tokens.device)
        try:
            if positions is None:
                logits = self.forward_members(tokens, **inputs)
            elif self.selects_positions:
                logits = self.forward_members(tokens, positions=positions, **inputs)
            else:
                logits = select_positions(self.forward_members(tokens, **inputs), positions, dim=2)
        except IndexError:  # the ids are read only now, not on every step (a training step's are the task's)
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1} (the vocabulary); found "
                                 f"{lo}..{hi}") from None
            raise
        return logits[0] if single else logits

    def forward_members(self, tokens: torch.Tensor, **inputs: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ members
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def member(self, index: int) -> "SequenceModel":
        """A new single model holding a copy of member ``index`` (the ensemble is untouched)."""
        if not (isinstance(index, int) and 0 <= index < self.n_models):
            raise IndexError(f"member {index!r}: the ensemble has members 0..{self.n_models - 1}")
        return type(self).from_member_state_dicts(self.config, [self.member_state_dict(index)])

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s parameters without the member dimension (what a checkpoint stores)."""
        return {k: v[index].detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_member_state_dicts(cls, config: Any, states: list[dict[str, torch.Tensor]]) -> "SequenceModel":
        """Stack single-model state dicts (as saved by :meth:`member_state_dict`) into one ensemble."""
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        model = config.build(n_models=len(states), seeds=[0] * len(states))
        first = next(iter(stacked.values()))
        model = model.to(first.device, first.dtype)  # load keeps the params' dtype
        model.load_state_dict(stacked)
        return model
