"""Encoder interface, registry, the light video/sync encoders and the frozen MiniLM text encoder."""

from __future__ import annotations

import pytest
import torch

from prismaudio.config import EncoderSpec, preset
from prismaudio.encoders import Encoder, build_encoder, list_encoders, register_encoder
from prismaudio.encoders import base as enc_base
from prismaudio.errors import PrismAudioError


def _frames(b: int, t: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ registry


def test_registry_lists_builtins_by_modality():
    assert {"light_video", "light_sync", "minilm"} <= set(list_encoders())
    assert "light_video" in list_encoders("video") and "light_video" not in list_encoders("sync")
    assert list_encoders("text") == [n for n in list_encoders() if n in list_encoders("text")]
    assert "minilm" in list_encoders("text")


def test_build_errors_are_clear():
    with pytest.raises(PrismAudioError, match="light_video") as e:
        build_encoder(EncoderSpec("videoprsm"))
    assert "unknown encoder 'videoprsm'" in str(e.value)
    with pytest.raises(PrismAudioError, match="accepted: dim, fps, size, width"):
        build_encoder(EncoderSpec("light_video", {"dims": 64}))
    for params in ({"dim": 0}, {"fps": "fast"}, {"size": 6.5}, {"width": True}):
        with pytest.raises(PrismAudioError, match="light_sync"):
            build_encoder(EncoderSpec("light_sync", params))
    with pytest.raises(PrismAudioError, match="text encoder"):
        build_encoder(EncoderSpec("minilm"), modality="video")
    with pytest.raises(PrismAudioError, match="unknown sync encoder"):
        build_encoder({"name": "nope"}, modality="sync")


def test_custom_encoder_plugs_in():
    @register_encoder("test_mean_video")
    class MeanVideo(Encoder):
        modality = "video"

        def __init__(self, fps: float = 4.0):
            super().__init__()
            self.output_dim, self.fps, self.size = 3, fps, 16

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return self.check_frames(frames).mean(dim=(3, 4))

    try:
        enc = build_encoder(EncoderSpec("test_mean_video", {"fps": 2.0}), modality="video")
        assert enc.frame_spec() == (2.0, 16, "ffmpeg") and "test_mean_video" in list_encoders("video")
        assert enc(_frames(1, 5, 32)).shape == (1, 5, 3)  # other frame sizes are resized
    finally:
        enc_base._REGISTRY.pop("test_mean_video")


# ------------------------------------------------------------------------------------ light encoders


@pytest.mark.parametrize("name", ["mini", "tiny"])
def test_light_encoders_shapes_and_rates(name):
    cfg = preset(name)
    video = build_encoder(cfg.encoders.video, modality="video").eval()
    sync = build_encoder(cfg.encoders.sync, modality="sync").eval()
    # the light encoders keep the frame rule the shipped mini model was trained with
    assert video.frame_spec() == (8.0, cfg.encoders.video.params["size"], "floor")
    assert sync.frame_spec() == (25.0, cfg.encoders.sync.params["size"], "floor")
    assert video.output_dim == cfg.conditioner.video_dim and sync.output_dim == cfg.conditioner.sync_dim
    assert video.trainable and sync.trainable and video.output_length(32) == 32
    with torch.no_grad():
        v = video(_frames(2, 32, video.size))  # 4 s at 8 fps
        s = sync(_frames(2, 100, sync.size))  # 4 s at 25 fps
    assert v.shape == (2, 32, video.output_dim) and s.shape == (2, 100, sync.output_dim)
    assert torch.isfinite(v).all() and torch.isfinite(s).all()
    for enc in (video, sync):
        assert enc_base.count_parameters(enc) < 1_000_000


def test_light_encoders_are_deterministic():
    spec = preset("mini").encoders.sync
    torch.manual_seed(0)
    a = build_encoder(spec).eval()
    torch.manual_seed(0)
    b = build_encoder(spec).eval()
    x = _frames(1, 20, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb) and torch.equal(ya, a(x).detach())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_sync_tokens_are_local_in_time():
    """Changing frame 50 only moves tokens near 50: an onset stays on its own frame."""
    sync = build_encoder(preset("tiny").encoders.sync).eval()
    x = _frames(1, 100, 32)
    y = x.clone()
    y[:, 50] = 1.0  # a white flash
    with torch.no_grad():
        diff = (sync(x) - sync(y)).abs().amax(-1)[0]
    changed = (diff > 1e-5).nonzero().flatten().tolist()
    assert 50 in changed and 51 in changed  # the flash frame and the frame after it (its difference)
    assert min(changed) >= 46 and max(changed) <= 55


def test_light_encoders_train_and_validate_input():
    video = build_encoder(preset("tiny").encoders.video)
    out = video(_frames(2, 4, 32))
    out.square().mean().backward()
    assert all(p.grad is not None for p in video.parameters())
    for bad in (torch.rand(4, 3, 32, 32), torch.rand(1, 4, 1, 32, 32), torch.rand(1, 0, 3, 32, 32)):
        with pytest.raises(PrismAudioError):
            video(bad)
    with pytest.raises(PrismAudioError):
        video.encode_text(["a"])


# ------------------------------------------------------------------------------------ MiniLM


@pytest.fixture(scope="module")
def minilm():
    enc = build_encoder(EncoderSpec("minilm"), modality="text")
    assert not enc.loaded  # building is cheap: the HF model loads on first use
    enc.encode_text(["warm up"])
    return enc


def test_minilm_embeddings(minilm):
    texts = ["a dog barks twice on the left", "a dog barks twice on the left", "rain falls on a tin roof"]
    hidden, lengths = minilm.encode_text(texts)
    assert hidden.shape[0] == 3 and hidden.shape[2] == 384 == minilm.output_dim
    assert hidden.dtype == torch.float32 and lengths.dtype == torch.long
    assert lengths[0] == lengths[1] and torch.equal(hidden[0], hidden[1])
    n = int(min(lengths[0], lengths[2]))
    assert not torch.allclose(hidden[0, :n], hidden[2, :n], atol=1e-3)
    for i, n in enumerate(lengths.tolist()):
        assert hidden[i, n:].abs().sum() == 0 and hidden[i, :n].abs().sum(-1).min() > 0
    alone, _ = minilm.encode_text([texts[2]])  # padding does not change a text's states
    assert torch.allclose(alone[0], hidden[2, : alone.shape[1]], atol=1e-5)


def test_minilm_limits(minilm):
    hidden, lengths = minilm.encode_text(["word " * 10_000, ""])  # 50,000 characters
    assert lengths.tolist() == [256, 2] and hidden.shape[1] == 256 == minilm.max_length
    empty, n = minilm.encode_text([])
    assert empty.shape == (0, 0, 384) and n.shape == (0,)
    with pytest.raises(PrismAudioError):
        minilm.encode_text(["ok", 3])


def test_minilm_is_frozen_and_not_in_state_dict(minilm):
    assert minilm.trainable is False and minilm.state_dict() == {} and list(minilm.parameters()) == []
    minilm.train()
    assert not minilm.training
    _, hf = minilm._loaded
    assert not hf.training and not any(p.requires_grad for p in hf.parameters())
    wrapper = torch.nn.ModuleDict({"text": minilm, "head": torch.nn.Linear(2, 2)})
    assert set(wrapper.state_dict()) == {"head.weight", "head.bias"}
    hidden, _ = minilm.encode_text(["gradients never reach the text encoder"])
    assert not hidden.requires_grad
