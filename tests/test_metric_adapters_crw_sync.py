"""StereoCRW (crw) and Synchformer DeSync adapters with tiny random networks: strict loading,
BEWO/av-benchmark output contracts and properties that a sign or channel mix-up would break."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.adapters.desync import (
    OFFSET_GRID,
    LogMel,
    SyncProtocol,
    SynchformerDesync,
    SynchformerNet,
    mel_filterbank,
)
from prismaudio.metrics.adapters.stereocrw import StereoCRW, StereoCRWNet
from prismaudio.metrics.backends import backend_role, build_backend

# tiny configs: the protocol (513 patches of 3840 samples, 14 segments, 21 classes) stays, the nets shrink
CRW_CFG = {"feat_dim": 8, "width": 4, "n_fft": 16, "win_length": 16, "hop_length": 480}
SYNC_CFG = {"dim": 32, "depth": 1, "heads": 2, "mlp_hidden": 64, "agg_hidden": 64, "size": 32, "ast_dim": 24,
            "ast_depth": 1, "ast_heads": 2, "ast_hidden": 48, "ast_agg_hidden": 40, "sync_dim": 16, "sync_depth": 1,
            "sync_heads": 2, "sync_hidden": 32}
SYNC_HEADS = {"heads": 2, "ast_heads": 2, "sync_heads": 2}
TINY = SyncProtocol("tiny", resize=32, crop=32, seconds=None)  # the av-benchmark protocol at the tiny net's 32 px
SR = 16000


@pytest.fixture(scope="module")
def crw_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    sd = StereoCRWNet(**CRW_CFG).state_dict()
    path = tmp_path_factory.mktemp("crw") / "crw.safetensors"
    save_file(sd, str(path))
    return path, sd


@pytest.fixture(scope="module")
def crw(crw_ckpt) -> StereoCRW:
    return StereoCRW(str(crw_ckpt[0]), **CRW_CFG)


@pytest.fixture(scope="module")
def sync_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(1)
    sd = SynchformerNet(**SYNC_CFG).state_dict()
    path = tmp_path_factory.mktemp("sync") / "sync.safetensors"
    save_file(sd, str(path))
    return path, sd


@pytest.fixture(scope="module")
def sync(sync_ckpt) -> SynchformerDesync:
    return SynchformerDesync(str(sync_ckpt[0]), protocol=TINY, **SYNC_HEADS)


def _delayed(d: int, n: int = 4352, seed: int = 0) -> torch.Tensor:
    """Stereo [2, n]: the right channel is the left one delayed by d samples (left leads)."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(n + d, generator=g)
    return torch.stack([sig[d:], sig[: n]])


# ------------------------------------------------------------------------------------------ CRW
def test_crw_registered_and_missing_path(tmp_path):
    assert backend_role("stereocrw") == "crw"
    with pytest.raises(PrismAudioError, match="path="):
        build_backend("stereocrw")
    with pytest.raises(PrismAudioError, match="nope.safetensors"):
        StereoCRW(str(tmp_path / "nope.safetensors"))


def test_crw_round_trip_torch_layout(crw, crw_ckpt, tmp_path):
    """The release layout (a .pth.tar {'epoch', 'state_dict'} with DataParallel "module." prefixes and
    torchaudio's `trans.window`) loads to the very same network as the safetensors file; an export without
    the (deterministic Hann) window buffer loads too, and the window in the file is the one used."""
    _, sd = crw_ckpt
    assert "trans.window" in sd
    wrapped = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    pt = tmp_path / "crw.pth.tar"
    torch.save(wrapped, pt)
    other = StereoCRW(str(pt), **CRW_CFG)
    x = torch.randn(2, 4352, generator=torch.Generator().manual_seed(3))
    assert torch.equal(crw.itd_track(x, SR), other.itd_track(x, SR))
    save_file({k: v for k, v in sd.items() if k != "trans.window"}, str(tmp_path / "nowin.safetensors"))
    assert torch.equal(StereoCRW(str(tmp_path / "nowin.safetensors"), **CRW_CFG).itd_track(x, SR),
                       crw.itd_track(x, SR))
    wrapped["state_dict"]["module.trans.window"] = torch.ones_like(sd["trans.window"])
    torch.save(wrapped, pt)
    assert not torch.equal(StereoCRW(str(pt), **CRW_CFG).itd_track(x, SR), crw.itd_track(x, SR))


def test_crw_strict_keys(crw_ckpt, tmp_path):
    _, sd = crw_ckpt
    bad = dict(sd)
    bad.pop("net.fc.weight")
    bad["net.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(PrismAudioError) as err:
        _ = StereoCRW(str(path), **CRW_CFG).net
    assert "net.fc.weight" in str(err.value) and "net.extra.weight" in str(err.value)
    with pytest.raises(PrismAudioError, match="shape mismatch"):
        _ = StereoCRW(str(crw_ckpt[0]), **(CRW_CFG | {"feat_dim": 16})).net


def test_crw_track_contract(crw):
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(4))
    track = crw.itd_track(x, SR)
    assert track.shape == (100,) and track.dtype == torch.float64
    assert torch.isfinite(track).all() and (track.abs() <= 1.5e-3 + 1e-12).all()
    assert torch.equal(crw.itd_track(x[:1], SR), torch.zeros(100))  # mono: no ITD
    silent = crw.itd_track(torch.zeros(2, 5000), SR)
    assert torch.isnan(silent).all()


def test_crw_affinity_transposes_on_channel_swap(crw):
    x = _delayed(7)
    a = crw.affinity(x)
    assert a.shape == (513, 513)
    torch.testing.assert_close(crw.affinity(x.flip(0)), a.T)


def test_crw_argmax_recovers_exact_delay(crw_ckpt):
    """With select="argmax" the exact match (cosine 1) wins: a pure delay of d samples gives d/fs,
    swapped channels -d/fs, identical channels 0 -- whatever the random weights."""
    crw = StereoCRW(str(crw_ckpt[0]), select="argmax", **CRW_CFG)
    x = _delayed(10)
    assert torch.allclose(crw.itd_track(x, SR), torch.full((100,), 10 / SR, dtype=torch.float64))
    assert torch.allclose(crw.itd_track(x.flip(0), SR), torch.full((100,), -10 / SR, dtype=torch.float64))
    assert torch.equal(crw.itd_track(torch.stack([x[0], x[0]]), SR), torch.zeros(100, dtype=torch.float64))


def test_crw_soft_weight_sign(crw_ckpt):
    crw = StereoCRW(str(crw_ckpt[0]), tau=0.005, **CRW_CFG)
    x = _delayed(10)
    assert float(crw.itd_track(x, SR).mean()) > 0 > float(crw.itd_track(x.flip(0), SR).mean())


def test_crw_mse(crw):
    """Mirrors `gcc_mse_bewo`: per-file mean ITD, squared difference x1000, silent pairs skipped."""
    a, b, silent = _delayed(10), _delayed(10).flip(0), torch.zeros(2, 4352)
    det = crw.crw_mse([a, a, silent], [b, a, a], SR, return_details=True)
    assert det["skipped"] == [(2, "silent reference")]
    r, g = det["ref_mean_itd_s"], det["gen_mean_itd_s"]
    assert r[1] == g[1] and math.isnan(r[2])
    assert det["crw_mse"] == pytest.approx(((r[0] - g[0]) ** 2 + 0.0) / 2 * 1000) and det["crw_mse"] > 0
    assert math.isnan(crw.crw_mse([silent], [silent], SR))


# ------------------------------------------------------------------------------------------ DeSync
def test_logmel_contract():
    fb = mel_filterbank(513, SR, 128)
    assert fb.shape == (513, 128) and (fb >= 0).all()
    tone = torch.sin(2 * math.pi * 1000 * torch.arange(10240) / SR)[None]
    spec = LogMel()(tone)
    assert spec.shape == (1, 128, 66)  # upstream layout: mel x time
    freq = torch.linspace(0, SR // 2, 513)
    assert int(spec[0, :, 30].argmax()) == int(fb[(freq - 1000).abs().argmin()].argmax())
    assert torch.all(spec[0, :, 65] == (0 - (-4.2677393)) / (2 * 4.5689974))  # zero-padded AFTER the log


def test_desync_registered_and_missing_path(tmp_path):
    assert backend_role("synchformer_desync") == "desync"
    with pytest.raises(PrismAudioError, match="path="):
        build_backend("synchformer_desync")
    with pytest.raises(PrismAudioError, match="missing.pt"):
        SynchformerDesync(str(tmp_path / "missing.pt"))


def test_desync_sizes_from_tensors_and_strict_keys(sync_ckpt, tmp_path):
    """Every size comes from the tensors (the tiny widths differ per branch); a declared size that the file
    contradicts, a missing and an unexpected key are each one line naming the file and the key."""
    path, sd = sync_ckpt
    cfg = SynchformerDesync(str(path), protocol=TINY, **SYNC_HEADS).net.cfg
    assert {k: getattr(cfg, k) for k in SYNC_CFG} == SYNC_CFG and cfg.window_segments == 14
    with pytest.raises(PrismAudioError, match=r"dim=768 configured, 32 in the file"):
        _ = SynchformerDesync(str(path), protocol=TINY, dim=768, **SYNC_HEADS).net
    bad = {k: v for k, v in sd.items() if k != "transformer.off_head.bias"}
    bad["transformer.head.weight"] = torch.zeros(21, 16)
    bad_path = tmp_path / "bad.safetensors"
    save_file(bad, str(bad_path))
    with pytest.raises(PrismAudioError) as err:
        _ = SynchformerDesync(str(bad_path), protocol=TINY, **SYNC_HEADS).net
    msg = str(err.value)
    assert str(bad_path) in msg and "transformer.off_head.bias" in msg and "transformer.head.weight" in msg
    assert "\n" not in msg
    with pytest.raises(PrismAudioError, match="crops 224"):  # a 32 px model under the 224 px protocol
        _ = SynchformerDesync(str(path), **SYNC_HEADS).net
    with pytest.raises(PrismAudioError, match="unknown protocol"):
        SynchformerDesync(str(path), protocol="nope")


def test_desync_4s_clip_round_trip(sync, sync_ckpt, tmp_path):
    """4 s at 25 fps / 16 kHz (11 segments < 14): both windows coincide; a .pt under "model" gives
    identical logits; uint8 [B, T, H, W, 3] frames equal their float version."""
    g = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (2, 100, 40, 48, 3), dtype=torch.uint8, generator=g)
    audio = torch.randn(2, 2, 64000, generator=g)
    logits = sync.logits(frames, audio, SR)
    assert logits.shape == (2, 2, 21)
    torch.testing.assert_close(logits[:, 0], logits[:, 1])
    as_float = frames[1:].permute(0, 1, 4, 2, 3).float() / 255
    torch.testing.assert_close(sync.logits(as_float, audio[1:], SR), logits[1:])
    pt = tmp_path / "sync.pt"
    torch.save({"model": sync_ckpt[1], "epoch": 3}, pt)
    assert torch.equal(SynchformerDesync(str(pt), protocol=TINY, **SYNC_HEADS).logits(frames[:1], audio[:1], SR),
                       sync.logits(frames[:1], audio[:1], SR))
    torch.testing.assert_close(sync.logits(frames[:1], audio[:1], SR), logits[:1])  # batching changes nothing

    off = sync.offsets(frames, audio, SR)
    assert off.shape == (2, 2)
    assert torch.isclose(off[..., None], OFFSET_GRID).any(-1).all()
    ds = sync.desync(frames, audio, SR)
    assert ds.shape == (2,) and ((ds >= 0) & (ds <= 2)).all()
    torch.testing.assert_close(ds, off.abs().mean(-1))


def test_desync_long_clip_and_resampling(sync):
    """8 s clip: 24 segments, two distinct windows; 32 kHz audio is resampled to 16 kHz."""
    g = torch.Generator().manual_seed(6)
    frames = torch.rand(1, 200, 3, 32, 32, generator=g)
    audio = torch.randn(1, 256000, generator=g)[None]
    off = sync.offsets(frames, audio, 32000)
    assert off.shape == (1, 2) and torch.isclose(off[..., None], OFFSET_GRID).any(-1).all()
    with pytest.raises(PrismAudioError, match="videos vs"):
        sync.offsets(torch.rand(2, 20, 3, 32, 32), torch.randn(1, 1, 16000), SR)


def test_desync_streams_cut_to_the_common_duration(sync):
    """A video longer than its audio is scored on the audio's duration (segment k is the same 0.64 s in
    both streams), so the last window compares the same seconds of video and audio."""
    g = torch.Generator().manual_seed(7)
    frames = torch.randint(0, 256, (1, 150, 3, 32, 32), dtype=torch.uint8, generator=g)
    audio = torch.randn(1, 1, 80000, generator=g)  # 5 s of audio against 6 s of video
    torch.testing.assert_close(sync.logits(frames, audio, SR), sync.logits(frames[:, :125], audio, SR))
    assert not torch.allclose(sync.logits(frames, audio, SR), sync.logits(frames[:, 25:], audio, SR))


def test_desync_audio_reader_mixes_down_then_resamples_as_torchaudio(tmp_path):
    """av-benchmark reads audio with torchaudio: channel mean, then transforms.Resample to 16 kHz."""
    import soundfile as sf

    from prismaudio.metrics.adapters.desync import read_sync_audio
    from prismaudio.metrics.adapters.resample import resample_transform

    g = torch.Generator().manual_seed(8)
    stereo = (torch.rand(2, 4800, generator=g) - 0.5).float()
    path = tmp_path / "a.wav"
    sf.write(str(path), stereo.T.numpy(), 48000, subtype="FLOAT")
    wave = read_sync_audio(path)
    assert wave.shape == (1600,)
    assert torch.equal(wave, resample_transform(stereo.mean(0, keepdim=True), 48000, 16000)[0])
