"""Distribution metrics: Fréchet distance (FD) between embedding sets and paired KL divergence.

The embedding and classification networks are pluggable (`Embedder`, `Classifier`): FD-PANNs /
FD-VGGish / FD-PaSST and KL-PANNs / KL-PaSST (av-benchmark) differ only in the network used, and
the offline judges provide stand-ins with the same interface.

FD (Heusel et al., as av-benchmark / FAD compute it)::

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})

with unbiased covariances (ddof = 1). The last term equals tr((S_a S_b)^{1/2}) (the two matrices
have the same eigenvalues), but it is computed here from symmetric PSD matrices only, in float64,
with `eigh`: S_a^{1/2} from S_a's eigen-decomposition (tiny negative eigenvalues from round-off
clipped to 0), then the eigenvalues of the symmetric S_a^{1/2} S_b S_a^{1/2}, clipped and
square-rooted. No matrix is inverted, so rank-deficient covariances (N <= D, constant
dimensions) need no epsilon offset and give no complex parts, unlike `scipy.linalg.sqrtm(S_a S_b)`
on a non-symmetric product.

KL (av-benchmark / audioldm_eval convention): softmax posteriors of a classifier on each generated
clip and on its paired reference clip, ``KL(p_ref || p_gen) = sum_k p_ref log(p_ref / p_gen)`` per
clip, then the mean over clips. This is ``F.kl_div(log p_gen, p_ref)``: the reference posterior is
the "true" distribution, so the metric penalises generated audio that misses classes present in the
reference (mode dropping), which is what a paired V2A benchmark asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ..errors import PrismAudioError


@runtime_checkable
class Embedder(Protocol):
    """Audio ``[B, 2, S]`` at `sample_rate` -> embeddings ``[B, D]`` (resampling/mixing is its job)."""

    def __call__(self, audio: Tensor, sample_rate: int) -> Tensor: ...


@runtime_checkable
class Classifier(Protocol):
    """Audio ``[B, 2, S]`` at `sample_rate` -> class logits ``[B, K]``."""

    def __call__(self, audio: Tensor, sample_rate: int) -> Tensor: ...


def _as_2d(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise PrismAudioError(f"{what} must be 2-D [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise PrismAudioError(f"{what} contains NaN or inf")
    return a


def gaussian_stats(emb: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of an embedding set [N, D], N >= 2."""
    a = _as_2d(emb, "embeddings")
    if a.shape[0] < 2:
        raise PrismAudioError(f"FD needs at least 2 embeddings per set, got {a.shape[0]}")
    return a.mean(0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """FD between two Gaussians given by their statistics (float64, eigh-based, see module doc)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mu_a.shape * 2:
        raise PrismAudioError(
            f"FD statistics do not match: mu {mu_a.shape} vs {mu_b.shape}, cov {cov_a.shape} vs {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    m = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(fd, 0.0)  # round-off can leave a tiny negative for identical sets


def frechet_distance(emb_a: Tensor | np.ndarray, emb_b: Tensor | np.ndarray) -> float:
    """FD between embedding sets ``[N, D]`` and ``[M, D]`` (N, M >= 2; N < D is fine)."""
    mu_a, cov_a = gaussian_stats(emb_a)
    mu_b, cov_b = gaussian_stats(emb_b)
    if mu_a.shape != mu_b.shape:
        raise PrismAudioError(f"embedding widths differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


def _log_probs(x: Tensor | np.ndarray, inputs: str, eps: float, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu().double()
    if t.dim() != 2:
        raise PrismAudioError(f"{what} must be 2-D [N, K], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise PrismAudioError(f"{what} contains NaN or inf")
    if inputs == "logits":
        return torch.log_softmax(t, dim=1)
    if inputs == "probs":
        if (t < 0).any() or not torch.allclose(t.sum(1), torch.ones(t.shape[0], dtype=t.dtype), atol=1e-4):
            raise PrismAudioError(f"{what}: probabilities must be non-negative and sum to 1 per row")
        return torch.log(t.clamp_min(eps))
    raise PrismAudioError(f"kl inputs must be 'logits' or 'probs', got {inputs!r}")


def kl_per_clip(
    p_gen: Tensor | np.ndarray, p_ref: Tensor | np.ndarray, inputs: str = "logits", eps: float = 1e-6
) -> Tensor:
    """``KL(p_ref || p_gen)`` for each clip pair, [N] float64 (rows paired by clip).

    `inputs` says whether the rows are logits (softmax is applied) or probabilities; with
    probabilities, generated probabilities are floored at `eps` (av-benchmark adds 1e-6) so a
    class the reference uses but the generation gives 0 costs a large finite amount, not inf.
    """
    lg = _log_probs(p_gen, inputs, eps, "p_gen")
    lr = _log_probs(p_ref, inputs, eps, "p_ref")
    if lg.shape != lr.shape:
        raise PrismAudioError(f"KL needs paired [N, K] posteriors, got {tuple(lg.shape)} vs {tuple(lr.shape)}")
    pr = lr.exp()
    if inputs == "probs":  # exact zeros in the reference contribute 0 (0 log 0 = 0)
        pr = torch.as_tensor(np.asarray(p_ref) if not isinstance(p_ref, Tensor) else p_ref).detach().cpu().double()
    return (torch.xlogy(pr, pr) - pr * lg).sum(1).clamp_min(0.0)


def kl_paired(p_gen: Tensor | np.ndarray, p_ref: Tensor | np.ndarray, inputs: str = "logits", eps: float = 1e-6) -> float:
    """Mean over clips of ``KL(p_ref || p_gen)`` (see `kl_per_clip` and the module doc)."""
    return float(kl_per_clip(p_gen, p_ref, inputs, eps).mean())


def embed_all(model: Embedder | Classifier, batches: Iterable[Tensor], sample_rate: int) -> Tensor:
    """Run `model` over audio batches ``[B, 2, S]`` under no_grad and stack the outputs [N, D]."""
    outs = []
    with torch.no_grad():
        for audio in batches:
            out = model(audio, sample_rate)
            if out.dim() != 2 or out.shape[0] != audio.shape[0]:
                raise PrismAudioError(f"model returned {tuple(out.shape)} for a batch of {audio.shape[0]}")
            outs.append(out.detach().cpu().float())
    if not outs:
        raise PrismAudioError("no audio to embed")
    return torch.cat(outs)
