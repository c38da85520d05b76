"""Training the flow stages from `prismaudio extract` output (`data.features`): the official recipe
for frozen encoders. A short run trains and exports with the encoders untouched; a set made with
another model or another text is refused in one line; two gloo processes cover each clip exactly
once per epoch and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prismaudio.cli import main as cli_main
from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline
from prismaudio.train.config import load_train_config
from prismaudio.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "train" / "tiny_smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 tiny clips, extracted twice with the `tiny` preset: caption texts and multi CoT texts."""
    root = tmp_path_factory.mktemp("features")
    corpus = root / "corpus"
    assert cli_main(["synth", "--out", str(corpus), "--n", "8", "--duration", "2", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    out = {"corpus": corpus}
    for field in ("caption", "multi"):
        out[field] = root / field
        assert cli_main(["extract", "--manifest", str(corpus / "manifest.jsonl"), "--out", str(out[field]),
                         "--model", "preset:tiny", "--cot-field", field, "--batch-size", "4", "--quiet"]) == 0
        assert len(list(out[field].glob("*.safetensors"))) == 8
    return out


def _cfg(features: Path, *extra: str):
    return load_train_config(SMOKE, ["data.manifest=''", f"data.features={features}", "max_steps=4",
                                     "checkpoint_every=4", *extra])


def test_foundation_trains_from_features_with_frozen_encoders(extracted: dict[str, Path], tmp_path: Path) -> None:
    start = PrismAudioPipeline.from_preset("tiny", seed=0)
    summary = train(_cfg(extracted["caption"]), tmp_path / "run", log=None)
    assert summary["step"] == 4
    done = PrismAudioPipeline.from_pretrained(tmp_path / "run" / "final")
    for name in ("video_encoder", "sync_encoder"):  # their outputs are fixed in the files: untouched
        a, b = getattr(start, name).state_dict(), getattr(done, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(v, done.dit.state_dict()[k]) for k, v in start.dit.state_dict().items())
    logs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in logs)


def test_a_set_for_another_text_or_model_is_refused(extracted: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PrismAudioError, match="cot_field 'multi', this run needs 'caption'.*--cot-field caption"):
        train(_cfg(extracted["multi"]), tmp_path / "a", log=None)
    with pytest.raises(PrismAudioError, match="model_hash"):  # seed 1: other encoder / VAE weights
        train(_cfg(extracted["caption"], "seed=1"), tmp_path / "b", log=None)
    cot = _cfg(extracted["multi"], "stage=cot", "cot_variant=multi")
    assert train(cot, tmp_path / "c", log=None)["step"] == 4  # the CoT stage takes the multi set


def test_features_config_rules() -> None:
    with pytest.raises(PrismAudioError, match="vae stage trains from data.manifest"):
        load_train_config(SMOKE, ["data.manifest=''", "data.features=x", "stage=vae"])
    with pytest.raises(PrismAudioError, match="cot_variant random"):
        load_train_config(SMOKE, ["data.manifest=''", "data.features=x", "stage=cot", "cot_variant=random"])
    with pytest.raises(PrismAudioError, match=r"data.manifest \(or data.features\) is required"):
        load_train_config(SMOKE, ["data.manifest=''"])
    with pytest.raises(PrismAudioError, match="not both"):
        load_train_config(SMOKE, ["data.features=x"])


def test_cli_error_for_a_missing_features_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "--quiet",
                     "--set", "data.manifest=''", "--set", f"data.features={tmp_path / 'nope'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "feature directory not found" in err[0]


_SHARD_SCRIPT = """
import json, sys
from accelerate.utils import gather_object
from prismaudio.train.config import load_train_config
from prismaudio.train.trainer import Trainer

cfg = load_train_config(sys.argv[1], sys.argv[3:])
t = Trainer(cfg, sys.argv[2], log=lambda m: None)
seen = {}
for epoch in (0, 1):
    t.sampler.epoch = epoch
    seen[epoch] = [int(i) for b in t.loader for i in b["index"]]
ids = gather_object([seen])
summary = t.run()
if t.main:
    json.dump({"seen": ids, "summary": summary, "ids": t.stage.dataset.ids}, open(sys.argv[2] + "/shards.json", "w"))
"""


def test_two_gloo_processes_cover_each_clip_once_per_epoch(extracted: dict[str, Path], tmp_path: Path) -> None:
    script = tmp_path / "shards.py"
    script.write_text(_SHARD_SCRIPT)
    out = tmp_path / "ddp"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(SMOKE), str(out), "data.manifest=''", f"data.features={extracted['caption']}", "max_steps=2",
           "checkpoint_every=2", "batch_size=2"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads((out / "shards.json").read_text())
    assert len(res["ids"]) == 8 and len(res["seen"]) == 2
    for epoch in ("0", "1"):
        rank0, rank1 = res["seen"][0][epoch], res["seen"][1][epoch]
        assert len(rank0) == len(rank1) == 4 and not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == list(range(8))  # each clip exactly once per epoch
    assert res["seen"][0]["0"] != res["seen"][0]["1"]  # a fresh permutation per epoch
    s = res["summary"]
    assert s["num_processes"] == 2 and s["ranks_in_sync"] and s["step"] == 2
