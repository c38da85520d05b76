"""Feature encoders: one interface and registry (`base`), built-in light video/sync encoders, MiniLM text.

Importing the package registers every built-in encoder; adapters added later register the same way.
"""

from . import light, text  # noqa: F401  (import = registration)
from .base import Encoder, build_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "build_encoder", "list_encoders", "register_encoder"]
