"""The gradio page: video in, the four CoT modules as editable boxes, generate / compare, results.

Every handler turns a `PrismAudioError` into one line in the page's status box (`#status`), never
a traceback. The page needs nothing from the internet: system fonts, no analytics (see command.py
for the environment it must be imported under).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..cot import MODULES, CoT
from ..errors import PrismAudioError
from .jobs import MB, VIDEO_SUFFIXES, Generator, JobResult, check_video, cot_from_boxes, cot_from_text, plan_cot

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
HINTS = {
    "semantic": "what sounds: sources, materials, their character",
    "temporal": "when: events tied to visual cues, with times",
    "aesthetic": "fidelity: clean / noisy, room, reverb",
    "spatial": "where: left / right, near / far, movement",
}
COMPARE_MODES = ("two seeds", "two CoTs")


@dataclass
class PageConfig:
    planners: list[str]
    default_planner: str = "offline"
    max_upload_bytes: int = 200_000_000
    example: Path | None = None
    steps: int = 24
    cfg: float = 5.0
    title: str = "PrismAudio demo"


def theme() -> gr.themes.Base:
    """The default look on system fonts only (no web fonts to fetch)."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def _ok(text: str, notes: tuple[str, ...] = ()) -> str:
    return "\n\n".join([text, *(f"**Note:** {n}" for n in dict.fromkeys(notes))])


def _refused(e: Exception) -> str:
    return f"**Refused:** {e}"


def build_app(gen: Generator, cfg: PageConfig) -> gr.Blocks:
    """The whole page; `gen` runs the jobs (one loaded pipeline shared by every session)."""
    limit_mb = cfg.max_upload_bytes / MB

    def describe(info: Any, name: str) -> str:
        return f"{name}: {info.duration:.2f} s, {info.width}×{info.height}, {info.fps:g} fps"

    def accept_and_plan(video: str | None, planner: str, options: str, caption: str,
                        progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        """Check the upload (size, type, readable), then plan its CoT into the four boxes."""
        keep = tuple(gr.update() for _ in MODULES)
        if video is None:
            return (None, "", *keep)
        name = Path(video).name
        try:
            info = check_video(video, cfg.max_upload_bytes)
        except PrismAudioError as e:
            return (None, _refused(e), *keep)
        if planner == "none":
            return (video, _ok(f"{describe(info, name)}. Write the CoT in the four boxes, then Generate."), *keep)
        progress(0.1, desc=f"planning the CoT ({planner})")
        try:
            plan, notes = plan_cot(video, planner, options, caption)
        except PrismAudioError as e:
            return (video, _refused(f"planner {planner!r}: {e}"), *keep)
        parts = plan.to_dict()
        msg = f"{describe(info, name)}. CoT planned by {planner!r}: edit it, then Generate."
        return (video, _ok(msg, notes), *(parts[m] for m in MODULES))

    def use_example(planner: str, options: str, caption: str, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if cfg.example is None:
            return (None, _refused("no example clip is bundled with this installation"),
                    *(gr.update() for _ in MODULES))
        return accept_and_plan(str(cfg.example), planner, options, caption, progress)

    def replan(video: str | None, planner: str, options: str, caption: str,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        return accept_and_plan(video, planner, options, caption, progress)[1:]

    def job(video: str | None, cot: CoT | None, steps: float, cfg_scale: float, seed: float,
            progress: gr.Progress, label: str = "") -> JobResult:
        check_video(video, cfg.max_upload_bytes)

        def report(frac: float, desc: str) -> None:
            progress(frac, desc=f"{label}{desc}")

        return gen.run(video, cot, int(steps), float(cfg_scale), int(seed), progress=report)

    def generate(video: str | None, sem: str, tem: str, aes: str, spa: str, steps: float, cfg_scale: float,
                 seed: float, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        try:
            cot = cot_from_boxes(sem, tem, aes, spa)
            res = job(video, cot, steps, cfg_scale, seed, progress)
        except PrismAudioError as e:
            return (gr.update(), gr.update(), gr.update(), _refused(e))
        note = "" if cot is not None else " (all four CoT boxes were empty: unconditioned text)"
        msg = f"generated {res.duration:.2f} s of stereo sound in {res.seconds:.1f} s, seed {int(seed)}{note}"
        return (str(res.mp4), str(res.png), res.downloads, _ok(msg, res.notes))

    def compare(video: str | None, sem: str, tem: str, aes: str, spa: str, steps: float, cfg_scale: float,
                seed: float, mode: str, seed_b: float, cot_b_text: str,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        try:
            cot_a = cot_from_boxes(sem, tem, aes, spa)
            if mode == "two seeds":
                if int(seed_b) == int(seed):
                    raise PrismAudioError(f"seed B equals seed A ({int(seed)}): choose another to compare")
                cot_b, seeds = cot_a, (seed, seed_b)
            else:
                cot_b, seeds = cot_from_text(cot_b_text), (seed, seed)
                if cot_b == cot_a:
                    raise PrismAudioError("CoT B is the same as the four boxes above: edit it to compare")
            a = job(video, cot_a, steps, cfg_scale, seeds[0], progress, "A: ")
            b = job(video, cot_b, steps, cfg_scale, seeds[1], progress, "B: ")
        except PrismAudioError as e:
            return (*(gr.update() for _ in range(4)), _refused(e))
        return (str(a.mp4), str(a.png), str(b.mp4), str(b.png),
                _ok(f"A and B generated in {a.seconds + b.seconds:.1f} s ({mode})", a.notes + b.notes))

    def copy_cot(sem: str, tem: str, aes: str, spa: str) -> str:
        cot = cot_from_boxes(sem, tem, aes, spa)
        return cot.render("multi") if cot is not None else ""

    with gr.Blocks(title=cfg.title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {cfg.title}\nUpload a video (or use the example), read and edit the four-part "
                    "chain-of-thought, then generate its stereo soundtrack.")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                video_in = gr.Video(label=f"Video ({' '.join(VIDEO_SUFFIXES)}, up to {limit_mb:g} MB)",
                                    sources=["upload"], elem_id="video-in", height=260)
                example_btn = gr.Button("Use the example clip", elem_id="example-btn", size="sm",
                                        visible=cfg.example is not None)
                with gr.Row():
                    planner = gr.Dropdown(cfg.planners + ["none"], value=cfg.default_planner, label="Planner",
                                          elem_id="planner")
                    plan_btn = gr.Button("Plan the CoT", elem_id="plan-btn")
                with gr.Accordion("Planner options", open=False):
                    caption = gr.Textbox(label="Caption (optional hint for the planner)", elem_id="caption")
                    options = gr.Textbox(label="Options: key=value, space separated (openai: base_url=... "
                                         "model=...; local: path=...)", elem_id="planner-opts")
                boxes = [gr.Textbox(label=m.capitalize(), info=HINTS[m], lines=2, max_lines=8, elem_id=f"cot-{m}")
                         for m in MODULES]
                with gr.Row():
                    steps = gr.Slider(1, 100, value=cfg.steps, step=1, label="Steps", elem_id="steps")
                    cfg_scale = gr.Slider(0, 15, value=cfg.cfg, step=0.5, label="CFG scale", elem_id="cfg")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Result", elem_id="tab-result"):
                        video_out = gr.Video(label="Video with the new soundtrack", interactive=False, height=360,
                                             elem_id="video-out")
                        spec_out = gr.Image(label="Spectrogram (left / right)", type="filepath", interactive=False,
                                            elem_id="spec-out")
                        files_out = gr.File(label="Downloads (WAV, MP4, CoT JSON)", file_count="multiple",
                                            interactive=False, elem_id="downloads")
                    with gr.Tab("Compare", elem_id="tab-compare"):
                        mode = gr.Radio(list(COMPARE_MODES), value=COMPARE_MODES[0], label="A and B differ by",
                                        elem_id="compare-mode")
                        seed_b = gr.Number(1, precision=0, minimum=0, label="Seed B (two seeds)", elem_id="seed-b")
                        cot_b = gr.Textbox(label="CoT B (two CoTs): four labelled lines", lines=4,
                                           elem_id="cot-b")
                        with gr.Row():
                            copy_btn = gr.Button("Copy the CoT boxes into B", size="sm", elem_id="copy-btn")
                            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                        with gr.Row():
                            with gr.Column():
                                video_a = gr.Video(label="A", interactive=False, elem_id="video-a")
                                spec_a = gr.Image(label="A", type="filepath", interactive=False, elem_id="spec-a")
                            with gr.Column():
                                video_b = gr.Video(label="B", interactive=False, elem_id="video-b")
                                spec_b = gr.Image(label="B", type="filepath", interactive=False, elem_id="spec-b")

        plan_inputs = [planner, options, caption]
        video_in.upload(accept_and_plan, [video_in, *plan_inputs], [video_in, status, *boxes])
        example_btn.click(use_example, plan_inputs, [video_in, status, *boxes])
        video_in.clear(lambda: "", None, status)
        plan_btn.click(replan, [video_in, *plan_inputs], [status, *boxes])
        common = [video_in, *boxes, steps, cfg_scale, seed]
        gen_btn.click(generate, common, [video_out, spec_out, files_out, status])
        copy_btn.click(copy_cot, boxes, cot_b)
        compare_btn.click(compare, [*common, mode, seed_b, cot_b], [video_a, spec_a, video_b, spec_b, status])
    return demo
