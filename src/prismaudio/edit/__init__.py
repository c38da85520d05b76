"""Editing an existing soundtrack (issue 18 item 2; ThinkSound §4.4 stages 2-3): `edit(pipe, video,
audio, op, ...)` for inpaint / extend / add / remove / object-focused refine, the instruction ->
operation + target-CoT parser, ROI boxes / clicks / masks, the SAM-family click segmenter and the
`prismaudio edit` command. See docs/editing.md."""

from .instruction import OPS, Instruction, ObjectClass, Vocabulary, default_vocabulary, parse_instruction, target_cot
from .ops import EditPlan, build_context, conform_audio, edit, plan_edit
from .roi import Box, Click, Region, crop_frames, mask_box, parse_object, parse_region

__all__ = [
    "OPS", "Box", "Click", "EditPlan", "Instruction", "ObjectClass", "Region", "Vocabulary", "build_context",
    "conform_audio", "crop_frames", "default_vocabulary", "edit", "mask_box", "parse_instruction", "parse_object",
    "parse_region", "plan_edit", "target_cot",
]
