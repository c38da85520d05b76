"""What editing knows of the procedural world, found by module name like the offline planner.

The core never imports `prismaudio.procedural` (tests/test_procedural_boundary.py): the world is a
plugin. Editing needs three things from it, each loaded here only when asked for: the sound-class
vocabulary (which objects an instruction may name), the renderer's sprite geometry (the exact mask
of the object under a click, `--segmenter scene`) and the clip builder (stems for training pairs).
Outside that world the vocabulary can be given explicitly (`instruction.Vocabulary`).
"""

from __future__ import annotations

from ..resources import world_module

__all__ = ["RENDER_MODULE", "VOCAB_MODULE", "WRITER_MODULE", "world_module"]

VOCAB_MODULE = "prismaudio.procedural.synth.vocab"
RENDER_MODULE = "prismaudio.procedural.synth.render"
WRITER_MODULE = "prismaudio.procedural.synth.writer"
