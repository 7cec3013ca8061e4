"""Every ``>>>`` example in the package's docstrings runs and prints what it says (three in
``analysis/bimodality.py`` had drifted: a typo'd numpy call, and two below the mixture's 10-value minimum
or Sarle's 5/9 at n = 6, found by an audit on 2026-11-28)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import emergelab


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(emergelab.__path__, "emergelab."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (transformers, triton) not installed
            continue
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
