"""Start a parametric-stereo `mini` model (issue 17, stage 0b): `--codec oobleck` from a trained stereo
one, as below; `--codec spectral` with a freshly initialised spectral codec (`model/spectral.py`), whose
config (width, latent) comes from --from's model.

The new autoencoder's learned part is the old one made mono: the encoder's first convolution sees
the mid signal where the stereo one saw L and R (for a centred source L = R = mid, so its mono
kernel is the sum of the two input kernels), and the decoder's last convolution writes the mid (the
mean of its L and R kernels). Everything else is copied unchanged, so training starts from what the
stereo codec already learned about timbre and onsets instead of from noise. The DiT, conditioner and
trainable encoders are freshly initialised for the new latent width (latent_dim + bands + 1): the
foundation stage trains them.

    python scripts/init_parametric_vae.py --from runs/vae_mini/final --out runs/vae_ps_init [--bands 7]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline


def _set_wn(module: torch.nn.Module, w: torch.Tensor) -> None:
    """Write an effective weight into a weight-normed conv (g = ||v|| per output channel, v = w)."""
    with torch.no_grad():
        module.weight_v.copy_(w)
        module.weight_g.copy_(w.norm(dim=(1, 2), keepdim=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="a model directory with a stereo mini VAE")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bands", type=int, default=7, help="ILD bands (latent gets bands + 1 spatial channels)")
    ap.add_argument("--codec", choices=("oobleck", "spectral"), default="oobleck",
                    help="oobleck: the mono core of --from's VAE; spectral: a fresh model/spectral.py codec")
    ap.add_argument("--width", type=int, default=192, help="spectral codec width (ConvNeXt channels)")
    ap.add_argument("--vae-weights", default=None, metavar="FILE",
                    help="spectral: start from these trained VAE weights (e.g. src/prismaudio/assets/prismaudio-mini/vae.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        src = PrismAudioPipeline.from_pretrained(args.src)
        if src.config.vae.stereo_bands and args.codec == "oobleck":
            raise PrismAudioError(f"{args.src} already has a parametric-stereo VAE")
        cfg = copy.deepcopy(src.config)
        cfg.vae.stereo_bands = args.bands
        ratio = cfg.vae.downsampling_ratio
        cfg.vae.stereo_hop = min(cfg.vae.stereo_hop, ratio // 2)  # two STFT frames per latent frame at least
        cfg.vae.stereo_n_fft = min(cfg.vae.stereo_n_fft, 4 * cfg.vae.stereo_hop)
        if args.codec == "spectral":
            cfg.vae.codec, cfg.vae.channels = "spectral", args.width
            cfg.vae.spec_gl_iters, cfg.vae.spec_gl_momentum = 64, 0.99  # measured best (docs/training_notes.md)
        cfg.dit.io_channels = cfg.vae.latent_channels
        new = PrismAudioPipeline.from_config(cfg, seed=args.seed)
        if args.codec == "spectral":
            if args.vae_weights:
                from prismaudio.io.weights import load_strict

                load_strict(new.vae, args.vae_weights, "the spectral mini VAE")
            new.save_pretrained(args.out)
            print(f"wrote {args.out}: spectral codec, latent {cfg.vae.latent_dim} + {args.bands + 1} spatial channels")
            return 0
        old_state = src.vae.state_dict()
        new_state = new.vae.state_dict()
        for k, v in old_state.items():
            if new_state[k].shape == v.shape:
                new_state[k] = v.clone()
        new.vae.load_state_dict(new_state)
        first = new.vae.encoder.layers[0]
        _set_wn(first, src.vae.encoder.layers[0].weight().sum(1, keepdim=True))
        convs = [m for m in src.vae.decoder.layers if hasattr(m, "weight_v")]
        new_convs = [m for m in new.vae.decoder.layers if hasattr(m, "weight_v")]
        _set_wn(new_convs[-1], convs[-1].weight().mean(0, keepdim=True))
        new.save_pretrained(args.out)
    except PrismAudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: latent {cfg.vae.latent_dim} + {args.bands + 1} spatial channels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
