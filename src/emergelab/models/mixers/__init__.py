"""Alternative sequence mixers behind the model contract: the transformer's residual stack with another
mixer in place of attention (derivations and what plays attention's role: README.md in this folder)."""

from .common import MixerConfig, MixerModel
from .gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from .lru import LRU, LRUConfig
from .mamba import Mamba, MambaConfig
from .mlstm import MLSTM, MLSTMConfig
from .mlp_mixer import MLPMixer, MLPMixerConfig
from .rwkv7 import RWKV7, RWKV7Config

MIXER_CONFIGS = [MLPMixerConfig, LRUConfig, MambaConfig, GatedDeltaNetConfig, MLSTMConfig, RWKV7Config]

__all__ = ["GatedDeltaNet", "GatedDeltaNetConfig", "LRU", "LRUConfig", "MIXER_CONFIGS", "MLSTM", "MLSTMConfig", "Mamba", "MambaConfig", "MLPMixer", "MLPMixerConfig", "MixerConfig", "MixerModel", "RWKV7", "RWKV7Config"]
