"""Hook points named by their path in the module tree (TransformerLens style), and scoped hooks.

A :class:`HookPoint` is an identity module; its name is its path, e.g. ``blocks.0.attn.hook_pattern``.
Hooks are only ever added inside :meth:`HookedModule.hooks`, whose ``finally`` removes them, so a model
is never left modified.

A hook function is called as ``fn(tensor, hook)`` with ``hook.name`` the hook point's name; returning a
tensor replaces the activation (patching), returning None leaves it (observing).

**One hook layout.** Inside a model every activation carries a leading member dimension ``E`` (one
member per seed of an ensemble): ``[E, B, ...]``. A hook function sees

* for a single model (``E = 1``): the activation without the member dimension, exactly TransformerLens'
  shape (``[B, T, d]``, ``[B, H, Tq, Tk]``);
* for an ensemble (``E > 1``): the activation with it, ``[E, B, ...]``, for every hook point alike.

``hooks(..., member_dim=True)`` (and ``run_with_cache(..., member_dim=True)``) always shows the member
dimension, which code that handles ensembles and single models alike uses.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]


class HookPoint(nn.Module):
    """Identity module marking an activation that hooks can read or replace."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.single = True  # E == 1: hook functions see the activation without the member dimension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        return bool(self._forward_hooks)


def _matcher(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


class HookedModule(nn.Module):
    """Mixin: call :meth:`setup_hooks` at the end of ``__init__`` to name every hook point."""

    def setup_hooks(self, n_models: int = 1) -> None:
        """Name every hook point by its module path; ``n_models`` decides the layout hooks see."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                module.single = n_models == 1
                self.hook_dict[name] = module

    @contextmanager
    def observing(self) -> Iterator[None]:
        """Scope in which every activation a hook may ask for is computed (the reference path).

        The base class computes everything always; a model with a fast path that skips an activation
        (the transformer's fused attention skips the pattern) overrides this to switch to its reference
        path for the scope. ``run_with_hooks`` and ``run_with_cache`` always run inside it."""
        yield

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
              member_dim: bool = False) -> Iterator[None]:
        """Add forward hooks for the duration of the ``with`` block. Unknown names raise KeyError.

        ``member_dim``: show hook functions ``[E, B, ...]`` even for a single model (see module doc)."""
        handles = []
        try:
            for names, fn in fwd_hooks:
                self._check_names(names)
                match = _matcher(names)
                points = [hp for name, hp in self.hook_dict.items() if match(name)]
                for hp in points:
                    handles.append(hp.register_forward_hook(_wrap(fn, squeeze=hp.single and not member_dim)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _check_names(self, names: NameFilter) -> None:
        """KeyError for a name (or a name in a list of names) that is no hook point: a misspelt name would
        otherwise cache nothing or hook nothing, silently. A callable filter may match none."""
        if names is None or callable(names):
            return
        unknown = [n for n in ([names] if isinstance(names, str) else names) if n not in self.hook_dict]
        if unknown:
            shown = unknown[0] if isinstance(names, str) else unknown
            raise KeyError(f"no hook point named {shown!r}; see model.hook_dict for the names")

    def run_with_hooks(self, *args: Any, fwd_hooks: Sequence[tuple[Any, HookFn]] = (), member_dim: bool = False,
                       **kwargs: Any) -> Any:
        """Run ``forward(*args, **kwargs)`` on the reference path with ``fwd_hooks`` active; they are
        removed afterwards."""
        with self.observing(), self.hooks(fwd_hooks, member_dim=member_dim):
            return self(*args, **kwargs)

    def run_with_cache(self, *args: Any, names_filter: NameFilter = None, detach: bool = True,
                       member_dim: bool = False, **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run forward on the reference path and return ``(output, cache)`` where ``cache[name]`` is each
        matched activation (layout: see the module doc)."""
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = tensor.detach() if detach else tensor

        self._check_names(names_filter)
        match = _matcher(names_filter)
        with self.observing(), self.hooks([(match, save)], member_dim=member_dim):
            output = self(*args, **kwargs)
        return output, cache


def _wrap(fn: HookFn, squeeze: bool) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]:
    if not squeeze:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            return _checked(fn(output, module), output, module)  # type: ignore[arg-type]

        return hook

    def single_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        new = _checked(fn(output[0], module), output[0], module)  # type: ignore[arg-type]  # [1, B, ...] -> [B, ...]
        return None if new is None else new.unsqueeze(0)

    return single_hook


def _checked(new: Any, seen: torch.Tensor, hook: nn.Module) -> torch.Tensor | None:
    """A hook's return: None, or a tensor of the shape it was shown (else a TypeError / ValueError naming
    the hook point; the mistake would otherwise surface layers later as an unrelated error)."""
    if new is None:
        return None
    name = getattr(hook, "name", "?")
    if not isinstance(new, torch.Tensor):
        raise TypeError(f"the hook function on {name} returned a {type(new).__name__}; return a tensor to "
                        "replace the activation, or None to leave it")
    if new.shape != seen.shape:
        raise ValueError(f"the hook function on {name} returned shape {list(new.shape)}; the activation "
                        f"it replaces has shape {list(seen.shape)}")
    return new
