"""The audio-context training stage (issue 18 item 1): edit pairs that differ by exactly one
source, one task per item (none / inpaint / extend / add / remove) with a finite loss, the
context dropout rate, and a 3-step smoke run that resumes bit-identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from prismaudio.errors import PrismAudioError
from prismaudio.procedural.synth.pairs import clip_index, render_pairs
from prismaudio.procedural.synth.writer import make_clip
from prismaudio.train.config import ContextTrainConfig, config_from_dict
from prismaudio.train.flow_stage import TASKS, sample_context_tasks



def _rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ pairs
def test_full_mix_is_the_corpus_audio_and_each_pair_differs_only_where_its_source_sounds(corpus: Path) -> None:
    rows = _rows(corpus)
    multi = [r for r in rows if len(r["scene"]["sources"]) >= 2]
    assert multi, "the fixture corpus has a multi-source clip"
    for r in rows:
        full, pairs = render_pairs(r["scene"], 0, clip_index(r["id"]))
        _, _, audio, _ = make_clip(0, clip_index(r["id"]), {k: r[k] for k in ("duration", "fps", "sample_rate")}
                                   | {"size": 48})
        bandlimit = (r["scene"]["degradation"] or {}).get("kind") == "bandlimit"
        # the writer's own samples: bit-exact (the band-limit filter is local here: within 1 LSB)
        assert np.abs(full - audio).max() <= (1.01 / 32767 if bandlimit else 0.0)
        wav, _ = sf.read(corpus / r["audio"], dtype="float32")
        assert np.abs(full - wav.T).max() <= 1.01 / 32767  # the WAV, to 16-bit precision
        assert len(pairs) == len(r["scene"]["sources"])
        for p in pairs:
            diff = np.abs(p.audio - full).max(0)
            assert not diff[~p.support].any()  # bit-identical wherever source k cannot sound
            a, b = p.region
            assert b > a and p.support[a:b].all() and diff[a:b].max() > 1e-3
    with pytest.raises(PrismAudioError, match="no source 5"):
        render_pairs(rows[0]["scene"], 0, 0, exclude=[5])
    with pytest.raises(PrismAudioError, match="clip id"):
        clip_index("video_12")


# ------------------------------------------------------------------------------ tasks
def _batch(b: int = 6, c: int = 4, n: int = 40, k: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"latent": torch.randn(b, c, n, generator=g), "text": torch.randn(b, 5, 8, generator=g),
            "pair_latent": torch.randn(b, k, c, n, generator=g), "pair_text": torch.randn(b, k, 7, 8, generator=g),
            "pair_region": torch.tensor([[10, 20], [5, 30]]).expand(b, -1, -1).clone(),
            "pair_count": torch.tensor([2] * (b - 1) + [0])}


def _only(task: str, dropout: float = 0.0) -> ContextTrainConfig:
    return ContextTrainConfig(enabled=True, context_dropout=dropout,
                              weights={t: float(t == task) for t in ("inpaint", "extend", "add", "remove")})


@pytest.mark.parametrize("task", ["inpaint", "extend", "add", "remove"])
def test_each_task_builds_its_context(task: str) -> None:
    batch = _batch()
    out = sample_context_tasks(batch, _only(task), 1.0, torch.Generator().manual_seed(1))
    c = batch["latent"].shape[1]
    lat, vis, keep = out.ctx[:, :c], out.ctx[:, c] > 0, out.ctx[:, c + 1] > 0
    for i in range(6):
        kind = TASKS[int(out.task[i])]
        assert kind == (task if task in ("inpaint", "extend") or i < 5 else "inpaint")  # no pairs: inpaint
        assert not keep[i].all() and keep[i].any()
        if kind in ("inpaint", "extend"):
            assert torch.equal(vis[i], keep[i]) and torch.equal(out.target[i], batch["latent"][i])
            assert torch.equal(lat[i], batch["latent"][i] * vis[i])
            gen = torch.nonzero(~keep[i]).squeeze(1)
            assert int(gen[-1] - gen[0]) + 1 == len(gen)  # one contiguous generated region
            if kind == "extend":
                assert gen[-1] == 39  # the generated part runs to the end
            else:
                assert 10 <= len(gen) <= 60  # 0.25-1.5 s of a 40-frame second
        else:
            assert vis[i].all()
            j = next(j for j in range(2) if torch.equal(keep[i], ~_region(*batch["pair_region"][i, j].tolist())))
            pair = batch["pair_latent"][i, j]
            if kind == "add":
                assert torch.equal(lat[i], pair) and torch.equal(out.target[i], batch["latent"][i])
                assert torch.equal(out.text[i, :5], batch["text"][i])
            else:
                assert torch.equal(lat[i], batch["latent"][i]) and torch.equal(out.target[i], pair)
                assert torch.equal(out.text[i, :7], batch["pair_text"][i, j])


def _region(a: int, b: int, n: int = 40) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[a:b] = True
    return m


def test_context_dropout_rate_is_respected() -> None:
    batch = _batch(b=400, k=1)
    batch["pair_region"], batch["pair_count"] = batch["pair_region"][:, :1], torch.ones(400, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    for p in (0.0, 0.3):
        out = sample_context_tasks(batch, ContextTrainConfig(enabled=True, context_dropout=p), 1.0, g)
        none = out.task == 0
        assert abs(float(none.float().mean()) - p) < 0.07
        assert not out.ctx[none].any()  # dropped: the all-zero condition (= no context at inference)
        if p == 0:
            counts = torch.bincount(out.task, minlength=5)[1:]
            assert counts.min() > 60  # every task drawn with equal weights


def test_a_training_step_on_each_task_has_a_finite_loss() -> None:
    from prismaudio.pipeline import PrismAudioPipeline
    from prismaudio.train.flow_stage import FlowModel

    pipe = PrismAudioPipeline.from_preset("tiny")
    pipe.dit.enable_audio_context()
    c, n = pipe.config.dit.io_channels, pipe.config.latent_length()
    batch = _batch(b=2, c=c, n=n)
    batch["text"] = torch.randn(2, 5, pipe.config.conditioner.text_dim)
    batch["pair_text"] = torch.randn(2, 2, 7, pipe.config.conditioner.text_dim)
    spec_v, spec_s = pipe.video_encoder.frame_spec(), pipe.sync_encoder.frame_spec()
    batch["video"] = torch.rand(2, int(spec_v.fps), 3, spec_v.size, spec_v.size)
    batch["sync"] = torch.rand(2, int(spec_s.fps), 3, spec_s.size, spec_s.size)
    for task in ("inpaint", "extend", "add", "remove"):
        model = FlowModel(pipe, n, 0.1, _only(task), 1.0)
        loss, logs = model(batch, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and 0 < float(logs["ctx_generated"]) < 1
        assert pipe.dit.ctx_proj.weight.grad is not None and pipe.dit.ctx_proj.weight.grad.abs().sum() > 0
        pipe.dit.zero_grad()


def test_context_config_is_checked() -> None:
    base = {"stage": "cot", "model": "tiny", "data": {"manifest": "m.jsonl"}, "context": {"enabled": True}}
    assert config_from_dict(base).context.enabled
    for bad, match in [({"weights": {"paint": 1.0}}, "unknown task"), ({"context_dropout": 1.0}, "context_dropout"),
                       ({"region_s": [1.0, 0.5]}, "region_s"), ({"prefix": [0.5, 1.0]}, "prefix"),
                       ({"weights": dict.fromkeys(("inpaint", "extend", "add", "remove"), 0.0)}, "positive sum")]:
        with pytest.raises(PrismAudioError, match=match):
            config_from_dict({**base, "context": {"enabled": True, **bad}})
    with pytest.raises(PrismAudioError, match="foundation / cot"):
        config_from_dict({**base, "stage": "vae"})


# ------------------------------------------------------------------------------ smoke + resume
def _cfg(corpus: Path, out: Path) -> dict:
    return {"stage": "cot", "model": "tiny", "out_dir": str(out), "cot_variant": "multi",
            "data": {"manifest": str(corpus / "manifest.jsonl"), "split": None, "cache_dir": str(corpus / "cache")},
            "batch_size": 2, "max_steps": 3, "ema_decay": 0.9, "checkpoint_every": 2, "keep_last": 3, "log_every": 1,
            "demo_every": 3, "demo_steps": 2,
            "context": {"enabled": True, "context_dropout": 0.2}, "optim": {"lr": 1e-3, "warmup_steps": 1}}


@pytest.fixture(scope="module")
def context_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One uninterrupted 3-step context run on the fixture corpus (checkpoints at 2 and 3)."""
    from prismaudio.train.trainer import train

    full = tmp_path_factory.mktemp("context_run") / "full"
    lines: list[str] = []
    train(config_from_dict(_cfg(corpus, full)), full, log=lines.append)
    return full, lines


def test_three_step_context_run_exports_a_context_model(corpus: Path, context_run) -> None:
    from prismaudio.pipeline import PrismAudioPipeline

    full, lines = context_run
    text = "\n".join(lines)
    assert "added, initialised to zero" in text and "edit pairs:" in text and "audio-context tasks" in text
    assert list((corpus / "cache").glob("pairs-s0-*.safetensors"))  # the pairs went into the data cache
    demos = sorted(p.name for p in (full / "demos").glob("*.wav"))
    assert len(demos) == 4 and sum(n.endswith("-inpaint.wav") for n in demos) == 2
    model = PrismAudioPipeline.from_pretrained(full / "final")  # strict load of a context model
    assert model.config.dit.audio_context and model.dit.ctx_proj.weight.any()


def test_the_context_run_resumes_bit_identically(corpus: Path, context_run, tmp_path: Path) -> None:
    """The step-2 checkpoint of the same run, continued to step 3, equals the uninterrupted step 3."""
    from prismaudio.train.trainer import train

    full, _ = context_run
    killed = tmp_path / "killed"
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "final")
    shutil.rmtree(killed / "checkpoints" / "step-00000003")
    (killed / "checkpoints" / "latest").write_text("step-00000002\n")
    lines: list[str] = []
    train(config_from_dict(_cfg(corpus, killed)), killed, resume=True, log=lines.append)
    assert any("resumed from" in m for m in lines) and any("loaded" in m and "edit pairs" in m for m in lines)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(full / "checkpoints" / "step-00000003" / name)
        b = load_file(killed / "checkpoints" / "step-00000003" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
