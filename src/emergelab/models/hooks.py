"""Hook points named by their path in the module tree (TransformerLens style), and scoped hooks.

A :class:`HookPoint` is an identity module; its name is its path, e.g. ``blocks.0.attn.hook_pattern``.
Hooks are only ever added inside :meth:`HookedModule.hooks`, whose ``finally`` removes them, so a model
is never left modified.

A hook function is called as ``fn(tensor, hook)`` with ``hook.name`` the hook point's name; returning a
tensor replaces the activation (patching), returning None leaves it (observing).
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

    def setup_hooks(self) -> None:
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator[None]:
        """Add forward hooks for the duration of the ``with`` block. Unknown names raise KeyError."""
        handles = []
        try:
            for names, fn in fwd_hooks:
                match = _matcher(names)
                points = [hp for name, hp in self.hook_dict.items() if match(name)]
                if isinstance(names, str) and not points:
                    raise KeyError(f"no hook point named {names!r}; see model.hook_dict for the names")
                for hp in points:
                    handles.append(hp.register_forward_hook(_wrap(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args: Any, fwd_hooks: Sequence[tuple[Any, HookFn]] = (), **kwargs: Any) -> Any:
        """Run ``forward(*args, **kwargs)`` with ``fwd_hooks`` active; they are removed afterwards."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args: Any, names_filter: NameFilter = None, detach: bool = True,
                       **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run forward and return ``(output, cache)`` where ``cache[name]`` is each matched activation."""
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = tensor.detach() if detach else tensor

        match = _matcher(names_filter)
        if isinstance(names_filter, str) and names_filter not in self.hook_dict:
            raise KeyError(f"no hook point named {names_filter!r}; see model.hook_dict for the names")
        with self.hooks([(match, save)]):
            output = self(*args, **kwargs)
        return output, cache


def _wrap(fn: HookFn) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]:
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output, module)  # type: ignore[arg-type]

    return hook
