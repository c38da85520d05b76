"""Equivalence with the official network (official_fixtures/tiny) and the checkpoint converter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.config import preset
from prismaudio.errors import PrismAudioError
from prismaudio.model.conditioning import Conditioner
from prismaudio.model.dit import DiffusionTransformer
from prismaudio.sampling import guided_velocity, inference_timesteps, sample_ode
from prismaudio.model.official import (
    check_state_dict,
    config_from_official,
    load_official,
    load_official_state_dict,
    split_official_state_dict,
    to_official_state_dict,
)


@pytest.fixture(scope="module")
def tiny(shared_reference):
    root = shared_reference / "official_fixtures" / "tiny"
    cfg = config_from_official(json.loads((root / "model_config.json").read_text()))
    official = load_official_state_dict(root / "weights.safetensors")
    dit, cond_net = DiffusionTransformer(cfg.dit).eval(), Conditioner(cfg.conditioner).eval()
    load_official(dit, cond_net, official)
    ref = load_file(root / "reference.safetensors")
    debug = load_file(root / "debug_intermediates.safetensors")
    return cfg, official, dit, cond_net, ref, debug


def _condition(cond_net, ref):
    n = ref["in.x"].shape[-1]
    return cond_net(ref["in.video_features"], ref["in.text_features_padded"], ref["in.sync_features"], n)


def _velocity(dit, x, t, cond, cfg_scale):
    """The library's CFG (batch [cond ; zeros]) — the same path `generate` uses."""
    return guided_velocity(dit, cond, cfg_scale)(x, t)


def _assert_close(ours, ref, rel):
    atol = rel * ref.abs().max().item() + (1e-5 if rel == 1e-4 else 0.0)
    err = (ours - ref).abs().max().item()
    assert err <= atol, f"max |diff| {err:.3g} > tolerance {atol:.3g}"


def test_config_from_official(tiny):
    cfg = tiny[0]
    assert (cfg.dit.io_channels, cfg.dit.embed_dim, cfg.dit.depth, cfg.dit.num_heads) == (16, 128, 2, 2)
    assert (cfg.conditioner.video_dim, cfg.conditioner.sync_dim, cfg.conditioner.output_dim) == (128, 96, 128)
    assert cfg.conditioner.sync_tokens_per_segment == 8
    assert (cfg.vae.channels, cfg.vae.c_mults, cfg.vae.strides, cfg.vae.latent_dim) == (4, [1, 2], [2, 2], 16)
    assert cfg.vae.final_tanh is False and cfg.sample_rate == 44100 and cfg.preset == "official"


@torch.no_grad()
def test_intermediates(tiny):
    _, _, dit, cond_net, ref, debug = tiny
    cond = _condition(cond_net, ref)
    for name, ours in [("video", cond.add), ("text", cond.cross[:, cond.add.shape[1]:]), ("sync", cond.sync)]:
        _assert_close(ours, debug[f"cond.{name}_features"], 1e-4)
    _assert_close(dit.time_embed(ref["in.t"]), debug["inter.dit.timestep_embed"], 1e-4)
    _assert_close(dit.cross_mlp(cond.cross), debug["inter.dit.cross_attn_context"], 1e-4)
    _assert_close(dit.add_mlp(cond.add), debug["inter.dit.add_embed_before_interp"], 1e-4)
    _assert_close(dit.sync_mlp(cond.sync), debug["inter.dit.sync_embed"], 1e-4)

    seen = {}
    hooks = [dit.project_in.register_forward_hook(lambda m, a, o: seen.__setitem__("in", o)),
             dit.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("block_input", a[0])),
             dit.project_out.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))]
    hooks += [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o)) for i, b in enumerate(dit.blocks)]
    dit(ref["in.x"], ref["in.t"], cond)
    for h in hooks:
        h.remove()
    _assert_close(seen["in"], debug["inter.transformer.project_in_out"], 1e-4)
    _assert_close(seen["block_input"], debug["inter.transformer.block_input"], 1e-4)
    for i in range(len(dit.blocks)):
        _assert_close(seen[i], debug[f"inter.transformer.layers.{i}.out"], 1e-4)
    _assert_close(seen["out"], debug["inter.transformer.project_out_out"][:, 1:], 1e-4)  # token 0 dropped first


@torch.no_grad()
@pytest.mark.parametrize("cfg_scale", [1, 5])
def test_velocity_matches_official(tiny, cfg_scale):
    _, _, dit, cond_net, ref, _ = tiny
    v = _velocity(dit, ref["in.x"], ref["in.t"], _condition(cond_net, ref), cfg_scale)
    _assert_close(v, ref[f"out.v_cfg{cfg_scale}"], 1e-4)


@torch.no_grad()
def test_24_step_euler_cfg5_sample_matches_official(tiny):
    _, _, dit, cond_net, ref, _ = tiny
    cond = _condition(cond_net, ref)
    x = sample_ode(guided_velocity(dit, cond, 5.0), ref["sample.noise"].clone(), inference_timesteps(24))
    _assert_close(x, ref["sample.out_24steps_cfg5"], 2e-4)


def test_round_trip_is_bit_exact(tiny):
    _, official, dit, cond_net, _, _ = tiny
    exported = to_official_state_dict(dit.state_dict(), cond_net.state_dict())
    assert set(exported) == set(official)
    for k, v in official.items():
        assert torch.equal(exported[k], v), k
    parts = split_official_state_dict(exported)
    for part, module in (("dit", dit), ("conditioner", cond_net)):
        ours = module.state_dict()
        assert set(parts[part]) == set(ours)
        assert all(torch.equal(parts[part][k], ours[k]) for k in ours)


def test_paper_layout_maps_onto_paper_modules(shared_reference):
    keys = json.loads((shared_reference / "keys_prismaudio.json").read_text())
    sd = {k: torch.empty(shape, device="meta") for k, (shape, _) in keys.items()}
    parts = split_official_state_dict(sd)
    cfg = preset("paper")
    with torch.device("meta"):
        dit, cond_net = DiffusionTransformer(cfg.dit), Conditioner(cfg.conditioner)
    check_state_dict(dit, parts["dit"], "dit")
    check_state_dict(cond_net, parts["conditioner"], "conditioner")
    assert len(parts["vae"]) == 365 and "encoder.layers.0.weight_g" in parts["vae"]
    # and back: the export emits exactly the official key set (betas and inv_freq included)
    exported = to_official_state_dict(dit.state_dict(), cond_net.state_dict(), parts["vae"])
    assert {k: list(v.shape) for k, v in exported.items()} == {k: s for k, (s, _) in keys.items()}


def test_paper_vae_layout_maps_onto_our_vae(shared_reference):
    vae_mod = pytest.importorskip("prismaudio.model.vae")
    keys = json.loads((shared_reference / "keys_prismaudio.json").read_text())
    sd = {k: torch.empty(s, device="meta") for k, (s, _) in keys.items() if k.startswith("pretransform.")}
    with torch.device("meta"):
        vae = vae_mod.OobleckVAE(preset("paper").vae)
    check_state_dict(vae, split_official_state_dict(sd)["vae"], "vae")


def test_wrong_shape_raises_clear_error(tiny):
    _, official, _, _, _, _ = tiny
    bad = dict(official)
    key = "model.model.transformer.layers.0.self_attn.to_qkv.weight"
    bad[key] = torch.zeros(10, 128)
    cfg = tiny[0]
    dit, cond_net = DiffusionTransformer(cfg.dit), Conditioner(cfg.conditioner)
    with pytest.raises(PrismAudioError, match=r"blocks\.0\.self_attn\.qkv\.weight.*shape \[10, 128\]"):
        load_official(dit, cond_net, bad)
    mini = preset("mini")  # a checkpoint of another preset
    with pytest.raises(PrismAudioError, match="another"):
        load_official(DiffusionTransformer(mini.dit), Conditioner(mini.conditioner), official)


def test_unknown_and_nonzero_buffer_keys_raise(tiny):
    official = tiny[1]
    with pytest.raises(PrismAudioError, match="unexpected key 'model.model.bogus'"):
        split_official_state_dict({**official, "model.model.bogus": torch.zeros(1)})
    beta = "model.model.transformer.layers.0.ff_norm.beta"
    with pytest.raises(PrismAudioError, match="not zero"):
        split_official_state_dict({**official, beta: torch.ones(128)})
    inv = "model.model.transformer.rotary_pos_emb.inv_freq"
    with pytest.raises(PrismAudioError, match="inv_freq"):
        split_official_state_dict({**official, inv: official[inv] * 2})


def test_ckpt_files(tiny, tmp_path):
    official = tiny[1]
    path = tmp_path / "prismaudio.ckpt"
    torch.save({"state_dict": official}, path)
    loaded = load_official_state_dict(path)
    assert set(loaded) == set(official)
    # Lightning VAE checkpoint: only the autoencoder. keys are kept, the prefix is stripped
    vae_path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {"autoencoder.decoder.layers.0.weight_g": torch.ones(3, 1, 1),
                               "discriminator.conv.weight": torch.ones(2)}, "epoch": 3}, vae_path)
    parts = split_official_state_dict(load_official_state_dict(vae_path))
    assert list(parts["vae"]) == ["decoder.layers.0.weight_g"] and not parts["dit"]
    with pytest.raises(PrismAudioError, match="does not exist"):
        load_official_state_dict(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(PrismAudioError, match="cannot read"):
        load_official_state_dict(tmp_path / "junk.ckpt")


def test_convert_official_checkpoint(tiny, shared_reference, tmp_path):
    """The `convert-official` path: official weights (+ a Lightning vae.ckpt) -> our checkpoint directory."""
    vae_mod = pytest.importorskip("prismaudio.model.vae")
    from prismaudio.config import load_model_config
    from prismaudio.model.official import convert_official_checkpoint

    cfg, official, dit, cond_net, _, _ = tiny
    root = shared_reference / "official_fixtures" / "tiny"
    vae_sd = vae_mod.OobleckVAE(cfg.vae).state_dict()
    torch.save({"state_dict": {f"autoencoder.{k}": v for k, v in vae_sd.items()}}, tmp_path / "vae.ckpt")
    with pytest.raises(PrismAudioError, match="no VAE weights"):
        convert_official_checkpoint(root / "weights.safetensors", tmp_path / "x", config=root / "model_config.json")
    out = tmp_path / "converted"
    convert_official_checkpoint(root / "weights.safetensors", out, config=root / "model_config.json",
                                vae_weights=tmp_path / "vae.ckpt")
    assert load_model_config(out / "config.json") == cfg
    model = load_file(out / "model.safetensors")
    assert all(torch.equal(model[f"dit.{k}"], v) for k, v in dit.state_dict().items())
    assert all(torch.equal(model[f"conditioner.{k}"], v) for k, v in cond_net.state_dict().items())
    assert set(load_file(out / "vae.safetensors")) == set(vae_sd)
