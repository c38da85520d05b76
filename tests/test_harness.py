"""The run harness shared by the training stages and GRPO: every optimiser / schedule field is
honoured or rejected for both run kinds, one strict loader, and GRPO on two gloo processes (ranks
in sync, each rank's generator checkpointed, the prompts sharded so each clip is taken once per
epoch)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.cli import main as cli_main
from prismaudio.errors import PrismAudioError
from prismaudio.harness import EpochSampler, OptimConfig, build_optimizer, lr_lambda
from prismaudio.rl import grpo_config_from_dict
from prismaudio.train.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
GRPO_TINY = REPO / "configs" / "grpo" / "tiny_smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------ optimiser fields
def test_schedule_warmup_cosine_and_constant() -> None:
    o = OptimConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.25)
    f = lr_lambda(o, total_steps=10)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.25) and f(50) == pytest.approx(0.25)
    assert f(6) == pytest.approx(0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    const = lr_lambda(OptimConfig(warmup_steps=2, schedule="constant", min_lr_ratio=0.25), 10)
    assert [const(0), const(1), const(9)] == [0.5, 1.0, 1.0]


def test_optimizer_takes_every_adamw_field() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    o = OptimConfig(lr=0.3, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.05)
    opt, sched = build_optimizer([p], o, total_steps=5)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (pytest.approx(0.3 * lr_lambda(o, 5)(0)), (0.8, 0.95), 1e-6, 0.05)
    assert isinstance(opt, torch.optim.AdamW) and sched.get_last_lr()[0] == pytest.approx(0.3)


@pytest.mark.parametrize("load", ["train", "grpo"])
@pytest.mark.parametrize("override, message", [
    ("optim.schedule=linear", "optim.schedule must be one of"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.warmup_steps=-1", "warmup_steps"),
    ("optim.nope=1", "unknown key 'nope'"),
])
def test_both_run_kinds_reject_the_same_bad_optim_fields(load: str, override: str, message: str) -> None:
    base = {"data": {"manifest": "m.jsonl"}}
    fn = config_from_dict if load == "train" else grpo_config_from_dict
    with pytest.raises(PrismAudioError, match=message):
        fn(base, [override])


def test_grpo_cosine_schedule_is_honoured() -> None:
    """GRPO's schedule spans its optimizer steps (iterations x micro-steps / grad_accum)."""
    cfg = grpo_config_from_dict({"data": {"manifest": "m.jsonl"}, "iterations": 10, "group_size": 4,
                                 "micro_batch": 4, "sampler": {"window": 2},
                                 "optim": {"schedule": "cosine", "min_lr_ratio": 0.0}})
    assert cfg.optimizer_steps() == 20
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer([p], cfg.optim, cfg.optimizer_steps())
    lrs = []
    for _ in range(cfg.optimizer_steps()):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(cfg.optim.lr) and lrs == sorted(lrs, reverse=True)
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_grpo_refuses_features_and_a_config_that_names_an_unknown_key() -> None:
    with pytest.raises(PrismAudioError, match="data.features is for the flow training stages"):
        grpo_config_from_dict({"data": {"manifest": "m.jsonl", "features": "feats"}})
    with pytest.raises(PrismAudioError, match=r"unknown key\(s\) 'lrr'"):
        grpo_config_from_dict({"data": {"manifest": "m.jsonl"}, "optim": {"lrr": 1}})


def test_epoch_sampler_is_a_pure_function_of_seed_and_epoch() -> None:
    a, b = EpochSampler(10, 3), EpochSampler(10, 3)
    a.epoch = b.epoch = 4
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.epoch = 5
    assert list(a) != list(b)


# ------------------------------------------------------------------------------ GRPO on two processes
def test_grpo_on_two_gloo_processes(corpus: Path, tmp_path: Path) -> None:
    """Each rank rolls out its own prompts (so without the all-reduce the weights would drift);
    the gathered per-rank fingerprints must agree, both generators are checkpointed, and over one
    epoch (8 clips = 4 iterations x 2 ranks x 1 prompt) every clip was taken exactly once."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "prismaudio.cli", "grpo", str(GRPO_TINY), "--out", str(out), "--quiet",
           "--set", f"data.manifest={corpus / 'manifest.jsonl'}", "--set", f"data.cache_dir={corpus / 'cache'}",
           "--set", "iterations=4", "--set", "checkpoint_every=4", "--set", "log_every=1"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = json.loads((out / "grpo_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["iterations"] == 4
    hashes = summary["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and summary["ranks_in_sync"]
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert (state["epoch"], state["position"], state["world_size"]) == (1, 0, 2)
    rng = load_file(out / "checkpoints" / "step-00000004" / "rng.safetensors")
    assert {"train.rank0", "train.rank1"} <= set(rng)
    assert not bool((rng["train.rank0"] == rng["train.rank1"]).all())


def test_grpo_prompts_shard_the_epoch_across_ranks() -> None:
    """`_next_prompts` on W ranks: disjoint slices whose union is the epoch's permutation."""
    from types import SimpleNamespace

    from prismaudio.rl.trainer import GRPOTrainer

    taken: list[int] = []
    for rank in range(2):
        t = GRPOTrainer.__new__(GRPOTrainer)
        t.cfg = SimpleNamespace(prompts_per_iter=2)
        t.harness = SimpleNamespace(world=2, rank=rank)
        t.sampler, t.epoch, t.position = EpochSampler(8, 0), 0, 0
        for _ in range(2):
            taken += t._next_prompts()
        assert (t.epoch, t.position) == (1, 0)
    assert sorted(taken) == list(range(8))


@pytest.mark.parametrize("load", ["train", "grpo"])
@pytest.mark.parametrize("override", ["optim.lr=abc", "optim.lr=[1, 2]", "ema_decay=[0.9]", "optim.betas=[0.9, x]",
                                      "seed=1.5"])
def test_numeric_fields_reject_other_types_in_one_line(load: str, override: str) -> None:
    """A number field given a string, a list or a bool is a config error, never a TypeError later."""
    if load == "grpo" and override.startswith("ema_decay"):
        override = "ema_max_decay=[0.9]"
    fn = config_from_dict if load == "train" else grpo_config_from_dict
    with pytest.raises(PrismAudioError, match=r"config\.\S+: expected"):
        fn({"data": {"manifest": "m.jsonl"}}, [override])


def test_grpo_reward_weights_must_be_numbers() -> None:
    with pytest.raises(PrismAudioError, match=r"config\.rewards\.semantic: expected a number"):
        grpo_config_from_dict({"data": {"manifest": "m.jsonl"}, "rewards": {"semantic": "high"}})


def test_resume_falls_back_over_a_damaged_latest_checkpoint(corpus: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A latest checkpoint damaged after it was written (truncated weights) is skipped with a warning:
    the run resumes from the one before, ends bit-identical to an uninterrupted run, and its
    metrics.jsonl has each logged step once."""
    import shutil

    from prismaudio.train.config import load_train_config
    from prismaudio.train.trainer import train

    cfg = load_train_config(REPO / "configs" / "train" / "tiny_smoke.yaml",
                            [f"data.manifest={corpus / 'manifest.jsonl'}", f"data.cache_dir={corpus / 'cache'}"])
    full = tmp_path / "full"
    train(cfg, full, log=None)
    hurt = tmp_path / "hurt"
    shutil.copytree(full, hurt)
    shutil.rmtree(hurt / "final")
    (hurt / "train_summary.json").unlink()
    latest = hurt / "checkpoints" / (hurt / "checkpoints" / "latest").read_text().strip()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    train(cfg, hurt, resume=True, log=None)
    err = capsys.readouterr().err
    assert f"checkpoint {latest.name} is damaged" in err
    for f in ("model.safetensors", "vae.safetensors"):
        a, b = load_file(full / "final" / f), load_file(hurt / "final" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (hurt / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.max_steps


def test_resume_without_a_checkpoint_says_so_even_when_quiet(corpus: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", str(REPO / "configs" / "train" / "tiny_smoke.yaml"), "--resume", "--quiet",
                     "--out", str(tmp_path / "run"), "--set", f"data.manifest={corpus / 'manifest.jsonl'}",
                     "--set", f"data.cache_dir={corpus / 'cache'}", "--set", "max_steps=2"])
    assert code == 0 and "no complete checkpoint" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_config_field_existed_still_resumes(tmp_path) -> None:
    """Stored model configs are compared with their missing fields at the default, so adding a config
    field does not strand old runs; a real architecture change is still refused."""
    from prismaudio.config import preset
    from prismaudio.errors import PrismAudioError
    from prismaudio.harness import checkpoint as ckpt

    cfg = preset("tiny").to_dict()
    old = preset("tiny").to_dict()
    del old["vae"]["spec_gl_momentum"]  # written before the field existed
    meta = {"config": {"stage": "vae"}, "model_config": old}
    ckpt.check_compatible(meta, cfg, "vae", tmp_path)
    old["vae"]["latent_dim"] += 1
    old["dit"]["io_channels"] += 1
    with pytest.raises(PrismAudioError, match="io_channels: 9 vs 8"):
        ckpt.check_compatible(meta, cfg, "vae", tmp_path)
