"""Figures of a run directory (``make_figures``); matplotlib is imported only when drawing."""

from .figures import make_figures

__all__ = ["make_figures"]
