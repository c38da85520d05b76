"""`passt` (embedder) / `passt_classifier` (classifier): PaSST-S, AudioSet, hear21passt layout, LOCAL weights.

Structure (kkoutini/passt_hear21 `models/passt.py`, `models/preprocess.py`; read, not copied):

* front end `AugmentMelSTFT` in eval mode: mono 32 kHz; pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]``; STFT
  n_fft 1024, win 800 (symmetric Hann), hop 320, centred (reflect pad); power; 128 Kaldi-style mel banks
  from 0 Hz to 15500 Hz (``sr/2 - fmax_aug_range/2``, eval has no jitter) with a zero Nyquist column;
  ``(log(mel + 1e-5) + 4.5) / 5``.
* ViT "PaSST-S" (`passt_s_swa_p16_128_ap476`): conv patch embed 16x16 stride 10 on the [1, 128, T] mel image
  (img_size 128 x 998 -> 12 x 99 patches), separate frequency/time positional embeddings
  (``freq_new_pos_embed`` [1, D, F', 1], ``time_new_pos_embed`` [1, D, 1, T'], cropped to shorter inputs),
  cls + dist tokens with ``new_pos_embed`` [1, 2, D], 12 pre-norm blocks (timm names: ``blocks.i.norm1``,
  ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; LayerNorm eps 1e-6), final ``norm``;
  ``features = (cls + dist) / 2`` (768-d) and ``logits = head(features)`` with ``head = [LayerNorm, Linear]``
  (527 AudioSet classes, pre-sigmoid). ``head_dist`` exists in the checkpoint but is unused at inference.

``embed`` returns the 768-d features, ``logits`` the 527 logits. Clips longer than one window (10 s) are cut
into 10 s windows (the last one shorter, no padding) and window outputs are averaged (a remainder under 1 s is dropped; a clip shorter than one patch is
zero-padded), as hear21passt's
`get_scene_embeddings` does for embeddings (assumed equally for logits). Verified: parameter names, shapes and
forward order against the source text. Assumed: numerical equality with the released weights (not available
offline); which of these outputs av-benchmark feeds to FD-PaSST / KL-PaSST.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import load_state_dict, load_strict, mono_at, require_path

SAMPLE_RATE = 32_000
_EXPECTED = "the PaSST-S AudioSet weights (hear21passt passt-s-f128-p16-s10-ap.476-swa.pt or a .safetensors)"


def kaldi_mel_banks(n_mels: int, n_fft: int, sr: int, fmin: float, fmax: float) -> Tensor:
    """[n_mels, n_fft//2 + 1] Kaldi triangular mel banks (no VTLN warp) with a zero Nyquist column."""
    def mel(f: Tensor) -> Tensor:
        return 1127.0 * torch.log1p(f / 700.0)

    lo, hi = mel(torch.tensor(float(fmin), dtype=torch.float64)), mel(torch.tensor(float(fmax), dtype=torch.float64))
    delta = (hi - lo) / (n_mels + 1)
    left = lo + torch.arange(n_mels, dtype=torch.float64)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    m = mel(sr / n_fft * torch.arange(n_fft // 2, dtype=torch.float64))[None]
    banks = torch.clamp(torch.minimum((m - left) / (center - left), (right - m) / (right - center)), min=0.0)
    return nn.functional.pad(banks, (0, 1)).float()


def passt_mel(wav: Tensor, banks: Tensor) -> Tensor:
    """Mono 32 kHz [B, S] -> normalised log-mel [B, n_mels, T] (hear21passt eval front end)."""
    x = wav[:, 1:] - 0.97 * wav[:, :-1]
    window = torch.hann_window(800, periodic=False, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, 1024, hop_length=320, win_length=800, window=window, center=True, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    return (torch.log(banks.to(power) @ power + 1e-5) + 4.5) / 5.0


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, dim * 3)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, dim * 4)
        self.mlp.fc2 = nn.Linear(dim * 4, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class PaSSTNet(nn.Module):
    """PaSST-S with hear21passt parameter names; forward(mel [B, 1, F, T]) -> (logits [B, C], features [B, D])."""

    def __init__(self, img_size: tuple[int, int] = (128, 998), patch_size: int = 16, stride: int = 10,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, num_classes: int = 527):
        super().__init__()
        fp, tp = (img_size[0] - patch_size) // stride + 1, (img_size[1] - patch_size) // stride + 1
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, embed_dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, fp, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, tp))
        self.blocks = nn.Sequential(*[_Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        self.head_dist = nn.Linear(embed_dim, num_classes)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch_embed.proj(mel)  # [B, D, F', T']
        tpos = self.time_new_pos_embed
        if x.shape[-1] > tpos.shape[-1]:
            raise PrismAudioError(f"backend 'passt': {x.shape[-1]} time patches exceed the model's {tpos.shape[-1]}")
        x = x + tpos[..., : x.shape[-1]] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat([cls, dist, x], dim=1)))
        features = (x[:, 0] + x[:, 1]) / 2
        return self.head(features), features


class PaSST:
    """`embed(audio, sr) -> [B, 768]` and `logits(audio, sr) -> [B, 527]` (see module docstring).

    ``img_size``, ``patch_size``, ``stride``, ``embed_dim``, ``depth``, ``num_heads``, ``num_classes`` exist
    to build tiny test models; the release uses the defaults. ``img_size[0]`` is also the number of mel bins.
    """

    role = "embedder"

    def __init__(self, path: str | None = None, device: str = "cpu", img_size: tuple[int, int] = (128, 998),
                 patch_size: int = 16, stride: int = 10, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 num_classes: int = 527, window_s: float = 10.0):
        self.path = require_path(path, "passt", _EXPECTED)
        self.device = torch.device(device)
        self.arch: dict[str, Any] = {"img_size": tuple(int(v) for v in img_size), "patch_size": int(patch_size),
                                     "stride": int(stride), "embed_dim": int(embed_dim), "depth": int(depth),
                                     "num_heads": int(num_heads), "num_classes": int(num_classes)}
        if embed_dim % num_heads:
            raise PrismAudioError("backend 'passt': embed_dim must be divisible by num_heads")
        if not window_s > 0:
            raise PrismAudioError(f"backend 'passt': window_s must be > 0, got {window_s!r}")
        self.window = round(window_s * SAMPLE_RATE)
        self.dim = int(embed_dim)
        self._banks = kaldi_mel_banks(self.arch["img_size"][0], 1024, SAMPLE_RATE, 0.0, 15_500.0)
        self._net: PaSSTNet | None = None

    def _load(self) -> PaSSTNet:
        if self._net is None:
            net = PaSSTNet(**self.arch)
            sd = load_state_dict(self.path, "passt", _EXPECTED)
            sd = {k.removeprefix("net."): v for k, v in sd.items() if not k.startswith("mel.")}
            load_strict(net, sd, "passt", self.path)
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    @torch.no_grad()
    def _run(self, audio: Tensor, sr: int) -> tuple[Tensor, Tensor]:
        net = self._load()
        wav = mono_at(audio, sr, SAMPLE_RATE, "passt").to(self.device)
        starts = list(range(0, wav.shape[-1], self.window))
        if len(starts) > 1 and wav.shape[-1] - starts[-1] < SAMPLE_RATE:
            starts.pop()  # a remainder under 1 s is dropped rather than judged alone
        min_len = self.arch["patch_size"] * 320 + 1  # enough mel frames for one patch
        logits, feats = [], []
        for s0 in starts:
            seg = wav[:, s0:s0 + self.window]
            if seg.shape[-1] < min_len:  # very short clip: zero-pad (documented deviation)
                seg = nn.functional.pad(seg, (0, min_len - seg.shape[-1]))
            lo, fe = net(passt_mel(seg, self._banks).unsqueeze(1))
            logits.append(lo)
            feats.append(fe)
        return torch.stack(logits).mean(0).cpu(), torch.stack(feats).mean(0).cpu()

    def embed(self, audio: Tensor, sr: int) -> Tensor:
        return self._run(audio, sr)[1]

    def logits(self, audio: Tensor, sr: int) -> Tensor:
        return self._run(audio, sr)[0]


register_backend("passt", "embedder")(PaSST)


@register_backend("passt_classifier", "classifier")
class PaSSTClassifier(PaSST):
    """Same model, registered for the ``classifier`` role (KL-PaSST)."""

    role = "classifier"
