"""Feature encoders: one interface and registry (`base`), built-in light encoders, MiniLM text, and the
local-checkpoint adapters `t5`, `t5gemma`, `clip`, `synchformer`, `videoprism`.

Importing the package registers every built-in encoder; adapters added later register the same way.
"""

from . import clip, light, synchformer, t5, text, videoprism  # noqa: F401  (import = registration; no weights loaded)
from .base import Encoder, build_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "build_encoder", "list_encoders", "register_encoder"]
