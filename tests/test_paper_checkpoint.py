"""Paper-size official layout -> our checkpoint -> loadable `paper` pipeline (2.7 GB of weights: slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prismaudio.cli import main
from prismaudio.model.layers import rope_inv_freq
from prismaudio.pipeline import PrismAudioPipeline


@pytest.mark.slow
def test_paper_layout_converts_to_loadable_paper_checkpoint(shared_reference: Path, tmp_path: Path) -> None:
    keys = json.loads((shared_reference / "keys_prismaudio.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, (shape, _dtype) in keys.items():
        if k.endswith("rotary_pos_emb.inv_freq"):
            sd[k] = rope_inv_freq(32)
        elif k.endswith("norm.beta"):
            sd[k] = torch.zeros(shape)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    save_file(sd, tmp_path / "prismaudio.safetensors")
    probe = sd["model.model.transformer.layers.23.ff.ff.2.weight"].clone()
    vae_probe = sd["pretransform.model.decoder.layers.7.weight_v"].clone()
    del sd
    out = tmp_path / "paper"
    assert main(["convert-official", "--weights", str(tmp_path / "prismaudio.safetensors"), "--out", str(out)]) == 0
    pipe = PrismAudioPipeline.from_pretrained(out)
    assert pipe.config.preset == "paper"
    n = sum(p.numel() for p in pipe.dit.parameters()) + sum(p.numel() for p in pipe.conditioner.parameters())
    assert n == 518_188_160
    assert torch.equal(pipe.dit.blocks[23].ff.fc2.weight, probe)
    assert torch.equal(pipe.vae.decoder.layers[7].weight_v, vae_probe)
