"""Language models: Pythia-style checkpoint suites (GPT-NeoX in plain torch, any other HF causal LM through
transformers' attention interface), capabilities as prompt sets, checkpoint scans for the
point of emergence per seed, and head patching between two revisions. See README.md in this folder.

Needs the optional extra ``lm`` (transformers, tokenizers, huggingface_hub: ``pip install -e '.[lm]'`` in
the checkout); everything heavy is imported inside the functions that use it.
"""

from __future__ import annotations


def require_transformers() -> None:
    """Raise ImportError with an install hint when the ``lm`` extra is missing."""
    from importlib.util import find_spec

    missing = [name for name in ("transformers", "tokenizers", "huggingface_hub") if find_spec(name) is None]
    if missing:
        raise ImportError(f"emergelab.lm needs {', '.join(missing)}: pip install 'transformers>=4.57' "
                          "'tokenizers>=0.20' 'huggingface_hub>=0.25' (or pip install -e '.[lm]' in emergelab's "
                          "checkout)")


from .capabilities import CAPABILITIES, PromptSet, Score, build_prompts, score_prompts  # noqa: E402
from .hf import HookedHFCausalLM, load_hf_causal_lm, load_lm  # noqa: E402
from .neox import HookedGPTNeoX, NeoXSpec, load_neox  # noqa: E402
from .patch import RevisionPatching, patch_revisions, write_patch  # noqa: E402
from .scan import ScanConfig, ScanResult, coarse_revisions, scan  # noqa: E402
from .sources import (HubSource, HubUnavailableError, LocalSource, pythia_repo, pythia_revisions,  # noqa: E402
                      revision_step)

__all__ = ["CAPABILITIES", "HookedGPTNeoX", "HookedHFCausalLM", "HubSource", "HubUnavailableError", "LocalSource",
           "NeoXSpec", "PromptSet", "RevisionPatching", "ScanConfig", "ScanResult", "Score", "build_prompts",
           "coarse_revisions", "load_hf_causal_lm", "load_lm", "load_neox", "patch_revisions", "pythia_repo",
           "pythia_revisions", "require_transformers", "revision_step", "scan", "score_prompts", "write_patch"]
