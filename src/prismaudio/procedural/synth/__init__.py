"""AudioCanvas-style procedural corpus: clips whose every event, position and degradation is known.

`run_synth(out_dir, n, seed)` writes MP4 + WAV per clip and a `manifest.jsonl`; see `writer.py`.
"""

from .render import shape_mask
from .scene import assign_split, sample_scene
from .writer import make_clip, run_synth

__all__ = ["assign_split", "make_clip", "run_synth", "sample_scene", "shape_mask"]
