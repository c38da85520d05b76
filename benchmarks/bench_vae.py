"""Reconstruction quality of a (mini) VAE on the procedural test split (issue 6 targets).

Each test clip is encoded to its posterior mean and decoded; measured against the scene graph and
the original audio:

* onsets: for every event of a single-source clip (where the onset detector scores the ground truth
  itself at 0 ms), |detected onset in the reconstruction - true time|; share within 5 ms (target
  >= 98% together with the ITD sign) and median;
* ITD sign: GCC-PHAT on each lone static lateral source's first 100 ms (`groundtruth._static_windows`),
  original vs reconstruction, for sources whose original ITD is at least one sample; share preserved;
* multi-resolution STFT distance (the VAE stage's training loss, on whole clips) and SI-SDR (dB, both
  channels, scale-invariant).

    python benchmarks/bench_vae.py --model runs/vae_mini/final --corpus data/corpus [--n 240]

Writes runs/bench_vae.json (or --out); --write DIR keeps the reconstructions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def si_sdr(ref: torch.Tensor, est: torch.Tensor, eps: float = 1e-9) -> float:
    """Scale-invariant SDR in dB over all channels (projection of est on ref)."""
    r, e = ref.reshape(-1).double(), est.reshape(-1).double()
    alpha = (e @ r) / (r @ r + eps)
    target = alpha * r
    return float(10 * torch.log10((target @ target + eps) / ((e - target) @ (e - target) + eps)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="pipeline directory holding the VAE")
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=0, help="first n clips of the split (0: all)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_vae.json"), help="result JSON")
    ap.add_argument("--write", default=None, help="also write each reconstruction as DIR/<id>.wav "
                    "(to evaluate them like a system with `prismaudio evaluate`)")
    args = ap.parse_args()

    from prismaudio.io.audio import load_audio, save_wav
    from prismaudio.metrics.groundtruth import _static_windows, detect_onsets
    from prismaudio.metrics.spatial import gcc_phat_itd
    from prismaudio.pipeline import PrismAudioPipeline
    from prismaudio.train.vae_stage import multi_resolution_stft_loss

    pipe = PrismAudioPipeline.from_pretrained(args.model).eval()
    sr = pipe.config.sample_rate
    corpus = Path(args.corpus)
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == args.split]
    rows = rows[: args.n] if args.n else rows
    onset_err, itd_kept, stft, sdr = [], [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in rows:
            audio, _ = load_audio(corpus / r["audio"], sr, channels=2)
            lat = pipe.vae.encode(audio[None], sample=False)
            rec = pipe.vae.decode(lat)[0, :, : audio.shape[-1]]
            if args.write:
                Path(args.write).mkdir(parents=True, exist_ok=True)
                save_wav(Path(args.write) / f"{r['id']}.wav", rec.clamp(-1, 1), sr)
            stft.append(float(multi_resolution_stft_loss(rec[None], audio[None], [2048, 1024, 512, 256, 128])))
            sdr.append(si_sdr(audio, rec))
            scene = r["scene"]
            if len(scene["sources"]) == 1:
                det = detect_onsets(rec.numpy(), sr)
                for ev in scene["sources"][0]["events"]:
                    onset_err.append(float(np.abs(det - ev["time"]).min() * 1000) if len(det) else float("inf"))
            for _, a, b in _static_windows(scene, sr, margin=0.1):
                orig = gcc_phat_itd(audio[0, a:b], audio[1, a:b], sr)
                if abs(orig) * sr >= 1.0:
                    itd_kept.append(np.sign(gcc_phat_itd(rec[0, a:b], rec[1, a:b], sr)) == np.sign(orig))
    e = np.asarray(onset_err)
    out = {
        "model": args.model, "n_clips": len(rows), "seconds": round(time.perf_counter() - t0, 1),
        "onset_events": len(e), "onset_within_5ms": float(np.mean(e <= 5.0)) if len(e) else None,
        "onset_median_ms": float(np.median(e)) if len(e) else None,
        "itd_sources": len(itd_kept), "itd_sign_preserved": float(np.mean(itd_kept)) if itd_kept else None,
        "mrstft_distance": float(np.mean(stft)), "si_sdr_db": float(np.mean(sdr)),
    }
    print(json.dumps(out, indent=2))
    dst = Path(args.out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
