"""The Python API behaves as the CLI and as diffusers users expect (issue 19 item 5).

`generate()` without a CoT plans one (the CLI's behaviour), `pipe(video)` works, several samples
come per call, a negative CoT guides CFG, the WAV / MP4 writers are one call away, the CoT reaching
the text encoder is cut visibly, and the audio is exactly as long as the clip.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from prismaudio.cot import build_planner
from prismaudio.errors import PrismAudioError
from prismaudio.io.audio import load_audio
from prismaudio.pipeline import PrismAudioPipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"


@pytest.fixture(scope="module")
def tiny() -> PrismAudioPipeline:
    """Tiny pipeline with its zero-initialised output layers re-drawn, so every condition matters."""
    pipe = PrismAudioPipeline.from_preset("tiny", seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.dit.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return pipe


KW = {"duration": 0.5, "steps": 2, "seed": 4}


def test_call_is_generate(tiny: PrismAudioPipeline) -> None:
    assert torch.equal(tiny(EXAMPLE, cot="a ball bounces", **KW).audio,
                       tiny.generate(EXAMPLE, cot="a ball bounces", **KW).audio)


def test_without_a_cot_the_api_plans_one_like_the_cli(tiny: PrismAudioPipeline) -> None:
    lines: list[str] = []
    res = tiny.generate(EXAMPLE, status=lines.append, **KW)
    plan = build_planner("offline").plan(EXAMPLE)  # what `prismaudio cot` / the CLI plan
    assert res.plan == plan and res.cot == plan.render("multi")
    assert any("planning" in m for m in lines) and any("encoding" in m for m in lines)
    given = tiny.generate(EXAMPLE, cot=plan, **KW)  # the CLI's path: a parsed --cot / its own plan
    assert torch.equal(res.audio, given.audio)
    none = tiny.generate(EXAMPLE, planner=None, **KW)
    assert none.plan is None and none.cot == "" and not torch.equal(none.audio, res.audio)


def test_several_samples_per_call_are_the_seeds_in_a_row(tiny: PrismAudioPipeline) -> None:
    res = tiny.generate(EXAMPLE, cot="x", num_samples=3, **KW)
    assert res.samples.shape == (3, 2, round(0.5 * tiny.config.sample_rate)) and res.seeds == (4, 5, 6)
    assert torch.equal(res.audio, res.samples[0]) and res.latents.shape[0] == 3
    for k in range(3):
        single = tiny.generate(EXAMPLE, cot="x", **{**KW, "seed": 4 + k}).audio
        torch.testing.assert_close(res.samples[k], single, rtol=0, atol=1e-5)  # batched float rounding only
    assert not torch.equal(res.samples[0], res.samples[1])
    with pytest.raises(PrismAudioError, match="num_samples"):
        tiny.generate(EXAMPLE, cot="x", num_samples=0, **KW)


def test_negative_cot_steers_the_unconditional_branch(tiny: PrismAudioPipeline) -> None:
    plain = tiny.generate(EXAMPLE, cot="a ball bounces", **KW).audio
    neg = tiny.generate(EXAMPLE, cot="a ball bounces", negative_cot="wind and rain", **KW)
    assert neg.negative_cot == "wind and rain" and not torch.equal(neg.audio, plain)
    # without guidance the unconditional branch is never evaluated: a negative CoT cannot matter
    a = tiny.generate(EXAMPLE, cot="a ball bounces", cfg_scale=1.0, **KW).audio
    b = tiny.generate(EXAMPLE, cot="a ball bounces", negative_cot="wind and rain", cfg_scale=1.0, **KW).audio
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_long_cot_is_cut_at_the_encoder_limit_with_one_warning(tiny: PrismAudioPipeline) -> None:
    words = [f"w{i}" for i in range(400)]
    long = " ".join(words)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tiny.generate(EXAMPLE, cot=long, **KW)
    msgs = [str(w.message) for w in caught if "text-encoder tokens" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    cut = res.truncation
    tok, _ = tiny.text_encoder._load()
    total = len(tok(long)["input_ids"])
    assert (cut.kept, cut.total) == (256, total) and f"the first {cut.kept}" in msgs[0] and str(total) in msgs[0]
    first = cut.dropped.split()[0]
    assert first in msgs[0] and long.endswith(cut.dropped)
    kept = tok.decode(tok(long, truncation=True, max_length=256)["input_ids"], skip_special_tokens=True)
    assert (kept + cut.dropped).replace(" ", "") == long.replace(" ", "")  # the cut is where reading stops
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tiny.generate(EXAMPLE, cot="a short plan", **KW).truncation is None
    assert not [w for w in caught if "text-encoder tokens" in str(w.message)]


def test_result_writes_the_wav_and_the_muxed_mp4(tiny: PrismAudioPipeline, tmp_path: Path) -> None:
    res = tiny.generate(EXAMPLE, cot="x", num_samples=2, **KW)
    wav = res.save_wav(tmp_path / "a.wav", index=1)
    audio, sr = load_audio(wav)
    assert sr == res.sample_rate and audio.shape == res.samples[1].shape
    assert (audio - res.samples[1]).abs().max() < 2 / 32768  # 16-bit PCM
    mp4 = res.save_video(tmp_path / "a.mp4")
    with av.open(str(mp4)) as c:
        assert c.streams.video and c.streams.audio[0].codec_context.channels == 2
    with pytest.raises(PrismAudioError, match="sample 2 does not exist"):
        res.save_wav(tmp_path / "b.wav", index=2)


def test_device_and_dtype_arguments() -> None:
    pipe = PrismAudioPipeline.from_preset("tiny", device="cpu", dtype="bf16")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert next(pipe.vae.parameters()).dtype == torch.float32
    assert PrismAudioPipeline.from_preset("tiny", dtype=torch.float32).dtype == torch.float32
    with pytest.raises(PrismAudioError, match="fp16 is not supported on the CPU"):
        PrismAudioPipeline.from_preset("tiny", dtype="fp16")
    with pytest.raises(PrismAudioError, match="dtype 'int8'"):
        PrismAudioPipeline.from_preset("tiny", dtype="int8")
    with pytest.raises(PrismAudioError, match="not a device"):
        PrismAudioPipeline.from_preset("tiny", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PrismAudioError, match="no CUDA GPU"):
            PrismAudioPipeline.from_preset("tiny", device="cuda")


def _write_30fps(path: Path, frames: int) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for k in range(frames):
            img = np.full((64, 64, 3), 40 + 5 * k, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_audio_is_exactly_as_long_as_a_clip_off_the_latent_hop(tiny: PrismAudioPipeline, tmp_path: Path) -> None:
    """31 frames at 30 fps = 1.0333 s: 129.17 latent hops of the tiny VAE (128 samples at 16 kHz).
    Rounding the latent length to the nearest hop left the WAV 21 samples short; it is rounded up
    and trimmed now."""
    video = _write_30fps(tmp_path / "v.mp4", 31)
    res = tiny.generate(video, cot="x", steps=1)
    sr, hop = tiny.config.sample_rate, tiny.config.vae.downsampling_ratio
    exact = round(res.duration * sr)
    assert res.duration == pytest.approx(31 / 30) and exact % hop
    assert res.audio.shape[-1] == exact
    assert res.latents.shape[-1] == math.ceil(exact / hop) > tiny.config.latent_length(res.duration)
    # the mini model's 32 ms hop: 1 s is 31.25 hops (was 31 = 992 ms), 4 s exactly 125 (unchanged)
    mini = PrismAudioPipeline.from_preset("mini")
    assert [mini.latent_frames(d) for d in (1.0, 4.0, 4.04)] == [32, 125, 127]
