"""FD / KL embedders from their release file layouts, with random weights built here (no upstream fixture
exists for PANNs, PaSST or VGGish: equality to upstream is by construction, not measured)."""

from __future__ import annotations

import math

import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.backends import backend_role, build_backend

TINY_PANNS = {"widths": (4, 4, 8, 8, 8, 16), "classes": 527}


def _audio(b=2, c=2, sr=16_000, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(b, c, int(sr * seconds), generator=g)


def _panns_release(tmp_path, seed=5):
    """A Cnn14 checkpoint as the release ships it: torch.save({'model': state_dict}) with the front end inside."""
    from prismaudio.metrics.adapters.panns import Cnn14Net, frontend_state

    torch.manual_seed(seed)
    net = Cnn14Net(**TINY_PANNS)
    sd = net.state_dict()  # conv / linear: torch's random init; BatchNorm: random statistics of a sane scale
    for k, v in sd.items():
        if k.startswith("bn0.running_mean"):
            v.fill_(-7.0)  # log-mel of the test noise, in dB
        elif k.startswith("bn0.running_var"):
            v.fill_(9.0)
        elif "running_var" in k:
            v.copy_((torch.rand_like(v) + 0.5) * 0.25)  # keeps random activations O(1) through six blocks
        elif "running_mean" in k or (k.split(".")[-2].startswith("bn") and k.endswith("bias")):
            v.copy_(torch.randn_like(v) * 0.1)
    sd.update(frontend_state())
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": sd}, str(path))
    return path, sd


def test_panns_release_layout_shapes_and_determinism(tmp_path):
    path, sd = _panns_release(tmp_path)
    assert {"spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
            "logmel_extractor.melW", "bn0.running_var", "conv_block1.conv1.weight", "conv_block6.bn2.bias",
            "fc1.weight", "fc_audioset.bias"} <= set(sd)
    assert sd["logmel_extractor.melW"].shape == (257, 64) and sd["spectrogram_extractor.stft.conv_real.weight"].shape == (257, 1, 512)
    assert backend_role("panns") == "embedder" and backend_role("panns_classifier") == "classifier"
    emb = build_backend("panns", path=str(path), **TINY_PANNS)
    audio = _audio(sr=32_000, seconds=1.2)  # resampled to 16 kHz and mixed down by the backend
    audio[1] = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(audio.shape[-1]) / 32_000)  # a tone, unlike clip 0
    e, lo = emb.embed(audio, 32_000), emb.logits(audio, 32_000)
    assert e.shape == (2, 16) and lo.shape == (2, 527) and torch.isfinite(lo).all()
    assert (e >= 0).all() and not torch.equal(e[0], e[1])  # fc1 + ReLU, per-clip
    cls = build_backend("panns_classifier", path=str(path), **TINY_PANNS)  # a fresh load: same numbers
    assert torch.allclose(cls.logits(audio, 32_000), lo, atol=1e-5)
    p = cls.posteriors(audio, 32_000)
    assert torch.allclose(p, torch.sigmoid(lo), atol=1e-6) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(emb.embed(audio[1], 32_000), e[1:], atol=1e-5)  # [C, S] input, batch-independent
    assert emb.embed(_audio(b=1, c=1, seconds=0.1), 16_000).shape == (1, 16)  # shorter than 5 poolings


def test_panns_frontend_is_the_files_and_puts_a_tone_in_its_band(tmp_path):
    from prismaudio.metrics.adapters.panns import Cnn14Net, frontend_state

    fe = frontend_state()
    mel = fe["logmel_extractor.melW"]
    freqs = torch.linspace(0, 8000, 257)
    assert float(mel[freqs < 50].abs().sum()) == 0.0 and (mel.sum(0) > 0).all()
    net = Cnn14Net(**TINY_PANNS)
    net.load_state_dict({**net.state_dict(), **fe})
    t = torch.arange(16_000) / 16_000
    for hz in (300.0, 1000.0, 4000.0):
        lm = net.logmel(torch.sin(2 * math.pi * hz * t)[None])[0, 0]  # [T, 64]
        band = int(lm.mean(0).argmax())
        centre = freqs[mel[:, band].argmax()]
        assert abs(float(centre) - hz) < 0.15 * hz + 40
    # the forward uses the FILE's front end: another melW changes the output
    path, sd = _panns_release(tmp_path)
    a = _audio(b=1)
    base = build_backend("panns", path=str(path), **TINY_PANNS).embed(a, 16_000)
    sd["logmel_extractor.melW"] = sd["logmel_extractor.melW"].flip(1).contiguous()
    torch.save({"model": sd}, str(path))
    assert not torch.allclose(build_backend("panns", path=str(path), **TINY_PANNS).embed(a, 16_000), base)


def _one_line_error(fn, *needles):
    with pytest.raises(PrismAudioError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


@pytest.mark.parametrize("backend, kw", [("panns", TINY_PANNS), ("panns_classifier", TINY_PANNS)])
def test_panns_bad_checkpoints(tmp_path, backend, kw):
    path, sd = _panns_release(tmp_path)
    a = _audio(b=1)
    missing = dict(sd)
    missing.pop("fc1.bias")
    torch.save({"model": missing}, str(path))
    _one_line_error(lambda: build_backend(backend, path=str(path), **kw).embed(a, 16_000), str(path), "fc1.bias")
    torch.save({"model": {**sd, "fc2.weight": torch.zeros(3)}}, str(path))
    _one_line_error(lambda: build_backend(backend, path=str(path), **kw).embed(a, 16_000), str(path), "fc2.weight")
    torch.save({"model": sd}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated download
    _one_line_error(lambda: build_backend(backend, path=str(path), **kw).embed(a, 16_000), str(path))
    # the wrong model's file (a VGGish state dict): names the first missing keys
    from prismaudio.metrics.adapters.vggish import VGGishNet

    torch.save(VGGishNet(False, (4, 4, 8, 8, 8, 8), 16).state_dict(), str(path))
    _one_line_error(lambda: build_backend(backend, path=str(path), **kw).embed(a, 16_000), str(path), "bn0.bias")
    _one_line_error(lambda: build_backend(backend, path=None), "needs path=")


def test_vggish_release_file_layout_and_bad_files(tmp_path):
    """`vggish-10086976.pth` as torchvggish ships it: a plain state dict, features.* / embeddings.*."""
    from prismaudio.metrics.adapters.vggish import VGGishNet

    kw = {"channels": (4, 4, 8, 8, 8, 8), "hidden": 16}
    torch.manual_seed(6)
    sd = VGGishNet(False, **kw).state_dict()
    assert [k for k in sd if k.endswith("weight")] == ["features.0.weight", "features.3.weight", "features.6.weight",
                                                         "features.8.weight", "features.11.weight", "features.13.weight",
                                                         "embeddings.0.weight", "embeddings.2.weight", "embeddings.4.weight"]
    path = tmp_path / "vggish-10086976.pth"
    torch.save(sd, str(path))
    a = _audio(b=2, seconds=2.0)
    e = build_backend("vggish", path=str(path), **kw).embed(a, 16_000)
    assert e.shape == (2, 128) and torch.equal(build_backend("vggish", path=str(path), **kw).embed(a, 16_000), e)
    torch.save({k: v for k, v in sd.items() if k != "embeddings.4.bias"}, str(path))
    _one_line_error(lambda: build_backend("vggish", path=str(path), **kw).embed(a, 16_000), str(path), "embeddings.4.bias")
    torch.save(sd, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    _one_line_error(lambda: build_backend("vggish", path=str(path), **kw).embed(a, 16_000), str(path))


def test_passt_release_file_layout_and_bad_files(tmp_path):
    """The hear21passt release `.pt` is the bare PaSST state dict (no ``net.`` prefix): loads as is."""
    from prismaudio.metrics.adapters.passt import PaSSTNet

    kw = {"img_size": (32, 150), "patch_size": 8, "stride": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
          "num_classes": 527}
    torch.manual_seed(7)
    net = PaSSTNet(**kw)
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    path = tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(net.state_dict(), str(path))
    a = _audio(b=2, seconds=1.0)
    m = build_backend("passt_classifier", path=str(path), window_s=1.0, **kw)
    lo = m.logits(a, 16_000)
    assert lo.shape == (2, 527) and torch.allclose(build_backend("passt", path=str(path), window_s=1.0, **kw).logits(a, 16_000), lo, atol=1e-5)
    sd = net.state_dict()
    sd.pop("head.1.bias")
    torch.save(sd, str(path))
    _one_line_error(lambda: build_backend("passt", path=str(path), **kw).embed(a, 16_000), str(path), "head.1.bias")
    path.write_bytes(b"")
    _one_line_error(lambda: build_backend("passt", path=str(path), **kw).embed(a, 16_000), str(path))
