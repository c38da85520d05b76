"""`generate --device/--dtype/--offload` and `PrismAudioPipeline.to(device, dtype)`.

The tiny preset's official init zeroes every attention / feed-forward output, which would make any
precision look exact, so the model here has every DiT / conditioner weight re-drawn (the official
fixtures' recipe, as in benchmarks/bench_inference.py --dtype-compare).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cli import main
from prismaudio.pipeline import PrismAudioPipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"
# measured on the re-drawn tiny model below (AVX2 CPU, torch 2.13, 4 steps, CFG 5): the bf16 WAV is
# 3.1 % relative L2 from the fp32 one (max |diff| 0.033 at peak 0.48); the bound leaves room for
# other CPUs / torch builds while still catching a broken cast (which gives O(1) errors or NaN)
BF16_REL_L2_BOUND = 0.10


def _redraw(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            elif name.endswith("bias"):
                p.copy_(0.02 * z)
            elif p.dim() >= 2 and name.endswith("weight"):
                p.copy_(z / (p.numel() / p.shape[0]) ** 0.5)
            else:
                p.copy_(0.5 * z)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pipe = PrismAudioPipeline.from_preset("tiny", seed=0)
    _redraw(pipe.dit, 1)
    _redraw(pipe.conditioner, 2)
    root = tmp_path_factory.mktemp("dtype") / "tiny"
    pipe.save_pretrained(root)
    return root


def _generate(model_dir: Path, out: Path, *extra: str) -> np.ndarray:
    args = ["generate", str(EXAMPLE), "--model", str(model_dir), "--steps", "4", "--duration", "1.0",
            "--cot", "a ball bounces", "--device", "cpu", "--seed", "3", "--out", str(out), "--quiet", *extra]
    assert main(args) == 0
    audio, _ = sf.read(out / "example.wav", dtype="float32")
    return audio


def test_bf16_is_close_to_fp32_and_deterministic(model_dir: Path, tmp_path: Path) -> None:
    ref = _generate(model_dir, tmp_path / "fp32", "--dtype", "fp32")
    a = _generate(model_dir, tmp_path / "bf16a", "--dtype", "bf16")
    b = _generate(model_dir, tmp_path / "bf16b", "--dtype", "bf16")
    assert np.isfinite(a).all() and a.shape == ref.shape and np.abs(ref).max() > 0
    rel = float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
    assert 0 < rel <= BF16_REL_L2_BOUND, rel  # > 0: the DiT really ran in bf16
    assert np.array_equal(a, b)
    assert (tmp_path / "bf16a" / "example.wav").read_bytes() == (tmp_path / "bf16b" / "example.wav").read_bytes()


def test_fp16_on_cpu_is_refused_in_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["generate", str(EXAMPLE), "--model", str(model_dir), "--device", "cpu", "--dtype", "fp16",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "fp16" in err and "CPU" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_gpu_is_one_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["generate", str(EXAMPLE), "--model", str(model_dir), "--device", "cuda",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--device cpu" in err


def test_to_casts_the_network_only(model_dir: Path) -> None:
    pipe = PrismAudioPipeline.from_pretrained(model_dir).to("cpu", torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert {p.dtype for p in pipe.dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.conditioner.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}  # decode stays fp32
    assert pipe.to(torch.float32).dtype == torch.float32


def test_offload_releases_frozen_encoders_and_changes_nothing(model_dir: Path) -> None:
    from prismaudio.encoders.base import FrozenEncoder

    pipe = PrismAudioPipeline.from_pretrained(model_dir)
    kw = {"cot": "a ball bounces", "duration": 1.0, "seed": 3, "steps": 2}
    ref = pipe.generate(EXAMPLE, **kw).audio
    frozen = [e for e in (pipe.video_encoder, pipe.sync_encoder, pipe.text_encoder) if isinstance(e, FrozenEncoder)]
    assert frozen and all(e.loaded for e in frozen)  # the tiny preset's MiniLM text encoder
    out = pipe.generate(EXAMPLE, offload=True, **kw).audio
    assert not any(e.loaded for e in frozen)
    assert torch.equal(out, ref)
    assert torch.equal(pipe.generate(EXAMPLE, **kw).audio, ref)  # reloads lazily on the next clip
