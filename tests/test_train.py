"""Training layer: strict configs, CoT variants, checkpoint files (atomicity, full disk, foreign
presets), bad manifest rows, the VAE objective, and short in-process runs of the cot and vae stages
whose exports `prismaudio generate` can use."""

from __future__ import annotations

import errno
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.cli import main as cli_main
from prismaudio.config import preset
from prismaudio.data.manifest import ManifestRow, read_manifest
from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline
from prismaudio.harness import checkpoint as ckpt
from prismaudio.train.config import DataConfig, config_from_dict, load_train_config
from prismaudio.train.data import build_audio_clips, load_rows, render_text
from prismaudio.train.trainer import train
from prismaudio.train.vae_stage import (
    VAETrainModel,
    interchannel_phase_loss,
    multi_resolution_stft_loss,
    sum_and_difference,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "train" / "tiny_smoke.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_corpus")
    assert cli_main(["synth", "--out", str(out), "--n", "6", "--duration", "2", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    return out


# ------------------------------------------------------------------------------ config
def test_shipped_configs_load() -> None:
    for name in ("vae_mini", "foundation_mini", "cot_mini", "tiny_smoke", "foundation_features"):
        cfg = load_train_config(REPO / "configs" / "train" / f"{name}.yaml")
        assert cfg.stage in ("vae", "foundation", "cot")


def test_typo_in_yaml_names_the_key_and_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: foundation\ndata: {manifest: m.jsonl}\noptim:\n  lrr: 0.1\n")
    with pytest.raises(PrismAudioError, match=r"bad\.yaml: config\.optim: unknown key\(s\) 'lrr'"):
        load_train_config(bad)


def test_cli_typo_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: foundation\nbatchsize: 4\ndata: {manifest: m.jsonl}\n")
    assert cli_main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prismaudio: error:") and "'batchsize'" in err[0]
    assert not (tmp_path / "run").exists()


def test_set_overrides_are_dotted_and_type_checked() -> None:
    base = {"data": {"manifest": "m.jsonl"}}
    cfg = config_from_dict(base, ["optim.lr=3e-4", "data.split=null", "batch_size=4", "cot_variant=random"])
    assert cfg.optim.lr == 3e-4 and cfg.data.split is None and cfg.batch_size == 4 and cfg.cot_variant == "random"
    with pytest.raises(PrismAudioError, match=r"config\.batch_size: expected int"):
        config_from_dict(base, ["batch_size=four"])
    with pytest.raises(PrismAudioError, match="unknown key 'nope'"):
        config_from_dict(base, ["optim.nope=1"])
    with pytest.raises(PrismAudioError, match="cot_variant must be one of"):
        config_from_dict(base, ["cot_variant=shuffled"])


# ------------------------------------------------------------------------------ CoT variants
def _row() -> ManifestRow:
    cot = {"semantic": "A dog barks. It is a small dog.", "temporal": "Barks at 1.0 s. Then at 2.5 s.",
           "aesthetic": "Clean and dry.", "spatial": "From the left. Close by."}
    return ManifestRow(id="c1", video=Path("v.mp4"), caption="a dog barks", cot=cot, cot_monolithic="One paragraph.")


def test_cot_variants() -> None:
    row = _row()
    multi = render_text(row, "cot", "multi", 0)
    labels = [line.split(":", 1)[0] for line in multi.splitlines()]
    assert labels == ["Semantic", "Temporal", "Aesthetic", "Spatial"]  # the paper's order
    assert render_text(row, "cot", "monolithic", 0) == "One paragraph."
    assert render_text(row, "cot", "none", 0) == ""
    assert render_text(row, "foundation", "multi", 0) == "a dog barks"
    rnd = render_text(row, "cot", "random", 0)
    assert rnd == render_text(row, "cot", "random", 0)  # deterministic per clip
    sentences = ["A dog barks.", "It is a small dog.", "Barks at 1.0 s.", "Then at 2.5 s.", "Clean and dry.",
                 "From the left.", "Close by."]
    assert sorted(s for s in sentences if s in rnd) == sorted(sentences)  # same concepts ...
    assert rnd != " ".join(sentences) and "Semantic:" not in rnd  # ... jumbled, no structure
    other = ManifestRow(**{**row.__dict__, "id": "c2"})
    assert render_text(other, "cot", "random", 0) != rnd  # the shuffle depends on the clip


# ------------------------------------------------------------------------------ checkpoints
def _state(step: int) -> ckpt.TrainingState:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    py, npy, tch = ckpt.capture_host_rng()
    return ckpt.TrainingState(step, 0, step, model.state_dict(), {k: v.clone() for k, v in model.state_dict().items()},
                              opt.state_dict(), sched.state_dict(), {"torch": tch}, py, npy, {"stage": "foundation"},
                              preset("tiny").to_dict())


def test_checkpoint_round_trip_restores_optimizer_exactly(tmp_path: Path) -> None:
    st = _state(3)
    path = ckpt.save_state(tmp_path, st, keep_last=2)
    assert (tmp_path / "latest").read_text().strip() == path.name == "step-00000003"
    back = ckpt.load_state(path)
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(back.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    opt.load_state_dict(back.optimizer)
    assert opt.state_dict()["param_groups"] == st.optimizer["param_groups"]
    for pid, slots in st.optimizer["state"].items():
        for name, value in slots.items():
            assert torch.equal(opt.state_dict()["state"][pid][name], value)
    assert back.scheduler == st.scheduler and back.python_rng == st.python_rng
    assert not any(p.suffix == ".pt" or p.suffix == ".pkl" for p in path.iterdir())  # no pickle


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        ckpt.save_state(tmp_path, _state(step), keep_last=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


def test_full_disk_leaves_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = ckpt.save_state(tmp_path, _state(1), keep_last=3)
    real = ckpt.save_file
    calls = []

    def failing(tensors, path, *a, **k):  # the first file succeeds, the second hits a full disk
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(PrismAudioError, match=f"no space left on device; the last complete checkpoint is .*{good.name}"):
        ckpt.save_state(tmp_path, _state(2), keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]  # no partial dir
    assert ckpt.find_latest(tmp_path) == good
    assert ckpt.load_state(good).step == 1


def test_checkpoint_of_another_preset_is_refused(tmp_path: Path) -> None:
    path = ckpt.save_state(tmp_path, _state(1), keep_last=1)
    with pytest.raises(PrismAudioError, match="written for model preset 'tiny' but this run builds 'mini'"):
        ckpt.check_compatible(ckpt.read_meta(path), preset("mini").to_dict(), "foundation", path)
    with pytest.raises(PrismAudioError, match="from stage 'foundation', this run is stage 'vae'"):
        ckpt.check_compatible(ckpt.read_meta(path), preset("tiny").to_dict(), "vae", path)


# ------------------------------------------------------------------------------ data
def test_broken_manifest_rows_are_skipped_and_reported(corpus: Path, tmp_path: Path) -> None:
    lines = (corpus / "manifest.jsonl").read_text().splitlines()[:3]
    first = json.loads(lines[0])
    missing = {**first, "id": "gone", "audio": str(tmp_path / "missing.wav"), "video": str(tmp_path / "missing.mp4")}
    lines = [ln.replace('"audio/', f'"{corpus}/audio/').replace('"video/', f'"{corpus}/video/') for ln in lines]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines + ["{not json", json.dumps(missing)]) + "\n")
    messages: list[str] = []
    rows = load_rows(DataConfig(manifest=str(manifest), split=None), messages.append)
    assert len(rows) == 4 and any("bad JSON" in m or "line 4" in m for m in messages)
    clips = build_audio_clips(rows, 16000, 1.0, messages.append)
    assert len(clips) == 3 and "gone" not in clips.ids
    assert any("gone" in m for m in messages)
    assert read_manifest(manifest)[1]  # the reader itself reports the broken line


# ------------------------------------------------------------------------------ VAE objective
def _delayed_pair(src: torch.Tensor, lead: int, shift: int = 0) -> torch.Tensor:
    """[B, 2, 8000]: the right channel lags the left by `lead` samples; both start `shift` later."""
    a = 20 + shift
    return torch.stack([src[:, a : a + 8000], src[:, a - lead : a - lead + 8000]], dim=1)


def test_interchannel_phase_loss_sees_which_side_leads_and_only_that() -> None:
    src = torch.randn(3, 8100, generator=torch.Generator().manual_seed(0))
    x, sizes = _delayed_pair(src, 4), [512, 256, 128]
    flipped = _delayed_pair(src, -4)  # the same sound, mirrored to the other side
    # magnitudes cannot tell the two sides apart: |L - R| and |L + R| are even in the delay ...
    sd = multi_resolution_stft_loss(sum_and_difference(flipped), sum_and_difference(_delayed_pair(src, 4, shift=4)), sizes)
    assert float(sd) < 1e-3
    # ... the inter-channel phase can, and it ignores a delay common to both channels
    assert float(interchannel_phase_loss(x, x, sizes)) < 1e-6
    assert float(interchannel_phase_loss(_delayed_pair(src, 4, shift=3), x, sizes)) < 0.05
    assert float(interchannel_phase_loss(flipped, x, sizes)) > 1.0
    assert float(interchannel_phase_loss(_delayed_pair(src, 2), x, sizes)) < float(interchannel_phase_loss(flipped, x, sizes))


def test_vae_losses_and_gan_gradients_stay_separate() -> None:
    x = torch.randn(2, 2, 4096, generator=torch.Generator().manual_seed(0)) * 0.1
    sizes = [512, 256, 128]
    assert multi_resolution_stft_loss(x, x, sizes).item() < 1e-5
    assert multi_resolution_stft_loss(x * 0.5, x, sizes).item() > 0.1
    cfg = config_from_dict({"stage": "vae", "data": {"manifest": "m"},
                            "vae": {"adversarial": True, "stft_sizes": sizes, "disc_sizes": [256, 128]}})
    vae = PrismAudioPipeline.from_preset("tiny").vae
    model = VAETrainModel(vae, cfg.vae, crop=2048)
    loss, logs = model({"audio": x}, torch.Generator().manual_seed(1))
    assert set(logs) >= {"stft", "l1", "kl", "disc", "adv", "feat"} and torch.isfinite(loss)
    # the discriminator's gradient comes from its own hinge loss only: the generator terms,
    # evaluated through detached discriminator parameters, contribute nothing to it
    g = torch.autograd.grad(_generator_terms(model, x), list(model.disc.parameters()), allow_unused=True)
    assert all(t is None for t in g)


def _generator_terms(model: VAETrainModel, x: torch.Tensor) -> torch.Tensor:
    fake = model.vae(x[..., :2048], generator=torch.Generator().manual_seed(2))
    _, g_loss, fm = model._adversarial(x[..., :2048], fake)
    return g_loss + fm


# ------------------------------------------------------------------------------ short runs
def _cfg(corpus: Path, *sets: str):
    return load_train_config(SMOKE, [f"data.manifest={corpus / 'manifest.jsonl'}", f"data.cache_dir={corpus / 'cache'}",
                                     "max_steps=2", "checkpoint_every=2", "grad_accum=1", *sets])


def test_cot_stage_run_exports_a_generate_ready_model(corpus: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cot"
    summary = train(_cfg(corpus, "stage=cot", "cot_variant=random", "demo_every=2", "demo_steps=2"), out, log=None)
    assert summary["step"] == 2 and summary["ranks_in_sync"]
    assert sorted(p.suffix for p in (out / "demos").iterdir()) == [".png", ".png", ".wav", ".wav"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 2 and logged[-1]["train/loss"] > 0
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard through accelerate's tracker
        assert list((out / "logs").rglob("events.out.tfevents.*"))
    # the export holds the EMA weights of the last checkpoint
    ema = load_file(out / "checkpoints" / "step-00000002" / "ema.safetensors")
    exported = load_file(out / "final" / "model.safetensors")
    shared = [k for k in exported if k in ema]
    assert len(shared) == len(exported) > 10
    assert all(torch.equal(exported[k], ema[k]) for k in exported if k in ema)
    # `prismaudio generate --model DIR` uses it
    video = min((corpus / "video").glob("*.mp4"))
    assert cli_main(["generate", str(video), "--model", str(out / "final"), "--steps", "2", "--duration", "1", "--planner", "none",
                     "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    assert (tmp_path / "gen" / f"{video.stem}.wav").is_file()
    # a second run into the same directory must not silently overwrite it ...
    with pytest.raises(PrismAudioError, match="already holds checkpoints"):
        train(_cfg(corpus, "stage=cot"), out, log=None)
    # ... and resuming with another preset is refused before any work
    with pytest.raises(PrismAudioError, match="preset 'tiny' but this run builds 'mini'"):
        train(_cfg(corpus, "stage=cot", "model=mini"), out, resume=True, log=None)


def test_vae_stage_run_trains_and_exports(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "vae"
    cfg = _cfg(corpus, "stage=vae", "vae.crop_seconds=0.25", "vae.adversarial=true",
               "vae.stft_sizes=[512, 256, 128]", "vae.disc_sizes=[256]", "batch_size=2")
    train(cfg, out, log=None)
    init = PrismAudioPipeline.from_preset("tiny", seed=cfg.seed).vae.state_dict()
    trained = PrismAudioPipeline.from_pretrained(out / "final").vae.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init)
    model_sd = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    assert any(k.startswith("disc.") for k in model_sd)  # the discriminator is checkpointed too


def test_stft_loss_is_not_swamped_by_a_silent_crop() -> None:
    """A batch with one all-silent target crop (common in the sparse procedural corpus) keeps the
    multi-resolution STFT loss on the scale of the audible crops' error, and identical audio gives 0."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 2, 4096, generator=g) * 0.3
    pred = target + 0.05 * torch.randn(4, 2, 4096, generator=g)
    sizes = [512, 256, 128]
    audible = float(multi_resolution_stft_loss(pred, target, sizes))
    target_silent = target.clone()
    target_silent[0] = 0.0
    with_silent = float(multi_resolution_stft_loss(pred, target_silent, sizes))
    assert 0.0 < audible < 2.0 and with_silent < 10 * audible + 5.0
    assert float(multi_resolution_stft_loss(target, target, sizes)) == pytest.approx(0.0, abs=1e-6)


def test_ema_warmup_forgets_the_random_init_in_a_short_run() -> None:
    from prismaudio.harness import EMA

    lin = torch.nn.Linear(4, 4)
    ema = EMA(lin, 0.999, warmup=True)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(100_000) == 0.999
    init = lin.weight.detach().clone()
    target = torch.ones_like(init)
    with torch.no_grad():
        lin.weight.copy_(target)
    for step in range(1, 1201):
        ema.update(step)
    # with a plain 0.999 decay 0.999**1200 = 30% of the shadow would still be the initial weights
    left = float(((ema.shadow["weight"] - target) / (init - target)).mean())
    assert 0 <= left < 1e-3
    plain = EMA(torch.nn.Linear(4, 4), 0.999, warmup=False)
    assert plain.decay_at(1) == 0.999
