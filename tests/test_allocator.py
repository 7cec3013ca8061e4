"""train/allocator.py: glibc keeps freed activation memory mapped (the speed effect: benchmarks/README.md)."""

from __future__ import annotations

import platform

import pytest

from emergelab.train import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_set_on_glibc_and_setting_them_twice_is_harmless():
    assert allocator.keep_freed_memory()
    assert allocator.keep_freed_memory()


def test_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert not allocator.keep_freed_memory()
