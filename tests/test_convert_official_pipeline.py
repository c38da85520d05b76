"""`prismaudio convert-official`: a tiny official-layout checkpoint whose conditioner has `proj_out`
keys of other widths (video 32 -> 128, text 24 -> 128, sync 64 -> 128), the three encoders of the real
kinds (tiny transformers VideoPrism, tiny T5-Gemma, the upstream-layout Synchformer fixture), and one
model directory that `prismaudio generate` runs with nothing else. Bad input is one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cli import main
from prismaudio.model.official import (
    config_from_official,
    convert_official_checkpoint,
    to_official_state_dict,
)
from prismaudio.pipeline import PrismAudioPipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"
WIDTHS = {"video": 32, "text": 24, "sync": 64, "out": 128}
COT = "Semantic: a ball bounces.\nTemporal: twice.\nAesthetic: clean.\nSpatial: centre."


def _official_config(shared_reference: Path) -> dict:
    """The tiny fixture's official model config with encoder widths that differ from the conditioner's."""
    cfg = json.loads((shared_reference / "official_fixtures" / "tiny" / "model_config.json").read_text())
    for c in cfg["model"]["conditioning"]["configs"]:
        c["config"]["dim"] = WIDTHS[c["id"].split("_")[0]]
        c["config"]["output_dim"] = WIDTHS["out"]
    dc = cfg["model"]["diffusion"]["config"]
    dc.update(io_channels=8, cond_token_dim=WIDTHS["out"], add_token_dim=WIDTHS["out"], sync_token_dim=WIDTHS["out"])
    pre = cfg["model"]["pretransform"]["config"]
    for side, latent in (("encoder", 16), ("decoder", 8)):  # 128x downsampling: a short latent at 44.1 kHz
        pre[side]["config"].update(c_mults=[1, 2, 4], strides=[4, 4, 8], latent_dim=latent)
    cfg["sample_size"] = cfg["sample_rate"]  # a 1 s default clip
    return cfg


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory, shared_reference: Path) -> dict:
    """Files in the released layout: prismaudio.ckpt (DiT + conditioner + VAE), vae.ckpt, model JSON."""
    root = tmp_path_factory.mktemp("official")
    cfg_json = _official_config(shared_reference)
    (root / "prismaudio.json").write_text(json.dumps(cfg_json))
    cfg = config_from_official(cfg_json)
    pipe = PrismAudioPipeline.from_config(cfg, seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in pipe.parameters():  # nothing left at its (often zero) init: a round trip must show it
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    sd = to_official_state_dict(pipe.dit.state_dict(), pipe.conditioner.state_dict(), pipe.vae.state_dict())
    unused = {}
    for which in ("video", "text"):
        w = WIDTHS[which]
        unused[f"conditioner.conditioners.{which}_features.proj_out.weight"] = torch.randn(WIDTHS["out"], w, generator=g)
        unused[f"conditioner.conditioners.{which}_features.proj_out.bias"] = torch.randn(WIDTHS["out"], generator=g)
    sd.update(unused)
    assert "conditioner.conditioners.sync_features.proj_out.weight" in sd  # kept by our conditioner
    torch.save(sd, root / "prismaudio.ckpt")
    vae = {f"autoencoder.{k}": v for k, v in pipe.vae.state_dict().items()}
    torch.save({"state_dict": {**vae, "discriminator.w": torch.ones(2)}, "epoch": 1}, root / "vae.ckpt")
    return {"root": root, "sd": sd, "unused": unused, "config": root / "prismaudio.json"}


def _convert_args(official: dict, out: Path, *extra: str) -> list[str]:
    return ["convert-official", "--weights", str(official["root"] / "prismaudio.ckpt"), "--vae",
            str(official["root"] / "vae.ckpt"), "--config", str(official["config"]), "--out", str(out), *extra]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("prismaudio: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ the network weights
def test_proj_out_of_other_widths_is_tolerated_and_round_trip_is_bit_exact(
    official: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model"
    assert main(_convert_args(official, out)) == 0
    err = capsys.readouterr().err
    ignored = [line for line in err.splitlines() if "never uses" in line]
    assert len(ignored) == 1 and all(k in ignored[0] for k in official["unused"])  # named, in one line
    for flag in ("--videoprism DIR", "--synchformer FILE", "--t5gemma DIR"):  # each missing one, one line
        assert sum(flag in line for line in err.splitlines()) == 1, flag
    pipe = PrismAudioPipeline.from_pretrained(out)
    back = to_official_state_dict(pipe.dit.state_dict(), pipe.conditioner.state_dict(), pipe.vae.state_dict())
    assert set(back) == set(official["sd"])  # the official layout again, unused proj_out included (as zeros)
    for k, v in official["sd"].items():
        want = torch.zeros_like(v) if k in official["unused"] else v
        assert back[k].dtype == v.dtype and torch.equal(back[k], want), k
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left behind


def test_generate_names_the_missing_encoder_and_its_flag(official: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    assert main(_convert_args(official, out)) == 0
    capsys.readouterr()
    assert main(["generate", str(EXAMPLE), "--model", str(out), "--out", str(tmp_path / "o"), "--quiet",
                 "--planner", "none", "--device", "cpu"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "video encoder 'videoprism'" in line and "--videoprism DIR" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["missing", "misshapen", "misshapen_unused_proj_out"])
def test_bad_state_dict_is_one_line_exit_2_nothing_written(official: dict, tmp_path: Path, damage: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    sd = dict(official["sd"])
    key = {"missing": "model.model.transformer.layers.1.cross_attn.to_kv.weight",
           "misshapen": "model.model.transformer.layers.0.self_attn.to_qkv.weight",
           "misshapen_unused_proj_out": "conditioner.conditioners.text_features.proj_out.weight"}[damage]
    if damage == "missing":
        del sd[key]
    else:
        sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    torch.save(sd, bad_root / "prismaudio.ckpt")
    args = _convert_args(official, tmp_path / "out")
    args[2] = str(bad_root / "prismaudio.ckpt")
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ("missing" in line if damage == "missing" else "shape" in line), line
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_directories_of_the_wrong_kind_are_one_line(official: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    # an official-checkpoint folder given as --model (it has no config.json)
    assert main(["generate", str(EXAMPLE), "--model", str(official["root"]), "--out", str(tmp_path / "o"),
                 "--quiet", "--planner", "none"]) == 2
    assert "not a PrismAudio model directory" in _one_error_line(capsys.readouterr().err)
    # a directory given as --weights
    assert main(_convert_args(official, tmp_path / "a")[:1] + ["--weights", str(official["root"]),
                                                              "--out", str(tmp_path / "a")]) == 2
    assert "is a directory" in _one_error_line(capsys.readouterr().err)
    # a directory that is not a T5-Gemma checkpoint given as --t5gemma (here: the official files)
    assert main(_convert_args(official, tmp_path / "b", "--t5gemma", str(official["root"]))) == 2
    assert "--t5gemma" in _one_error_line(capsys.readouterr().err)
    # --out that is a non-empty directory is refused before anything is written
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    assert main(_convert_args(official, tmp_path / "c")) == 2
    assert "not an empty directory" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"] and os.listdir(tmp_path / "c") == ["keep.txt"]


# ------------------------------------------------------------------------------ the whole pipeline
def _videoprism(d: Path, width: int) -> Path:
    from transformers import VideoPrismVideoModel, VideoPrismVisionConfig

    torch.manual_seed(0)
    cfg = VideoPrismVisionConfig(image_size=16, num_frames=4, tubelet_size=[1, 4, 4], hidden_size=width,
                                 num_attention_heads=2, intermediate_size=64, num_spatial_layers=1,
                                 num_temporal_layers=1, num_auxiliary_layers=1)
    VideoPrismVideoModel(cfg).save_pretrained(d)
    return d


def _t5gemma(d: Path, width: int) -> Path:
    from transformers import (
        GemmaTokenizer,
        T5GemmaConfig,
        T5GemmaForConditionalGeneration,
    )

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "\u2581" + string.ascii_letters + string.digits + ".,;:'!?-()":
        vocab.setdefault(ch, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=True)
    tok.save_pretrained(d)
    torch.manual_seed(1)
    mod = {"vocab_size": len(tok), "hidden_size": width, "intermediate_size": 48, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 12, "pad_token_id": 0,
           "bos_token_id": 2, "eos_token_id": 1}
    T5GemmaForConditionalGeneration(T5GemmaConfig(encoder=mod, decoder=mod, vocab_size=len(tok))).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory, shared_reference: Path) -> dict:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("encoders")
    fixture = shared_reference / "upstream_fixtures" / "synchformer_visual"
    facts = json.loads((fixture / "config.json").read_text())
    assert facts["embed_dim"] == WIDTHS["sync"] and facts["temporal_resolution"] == 8
    sync_file = root / "synchformer_state_dict.pth"
    sync_file.write_bytes((fixture / facts["weights_file"]).read_bytes())  # on tmp's filesystem: links work
    return {"video": _videoprism(root / "videoprism", WIDTHS["video"]), "text": _t5gemma(root / "t5gemma", WIDTHS["text"]),
            "sync": sync_file, "sync_params": {"dim": facts["embed_dim"], "heads": facts["num_heads"]}}


def test_converted_directory_runs_generate_end_to_end(official: dict, encoders: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """convert (network + VAE + three encoders) -> move the directory -> `generate --model DIR`."""
    staged = tmp_path / "staged"
    notes: list[str] = []
    convert_official_checkpoint(official["root"] / "prismaudio.ckpt", staged, config=official["config"],
                                vae_weights=official["root"] / "vae.ckpt",
                                encoders={k: encoders[k] for k in ("video", "sync", "text")},
                                encoder_params={"sync": encoders["sync_params"]}, notes=notes.append)
    assert not any("given" in n for n in notes)  # nothing missing
    cfg = json.loads((staged / "config.json").read_text())
    assert {s: cfg["encoders"][s]["params"]["path"] for s in ("video", "sync", "text")} == {
        "video": "encoders/videoprism", "sync": "encoders/synchformer/synchformer_state_dict.pth",
        "text": "encoders/t5gemma"}
    copied = staged / "encoders" / "synchformer" / "synchformer_state_dict.pth"
    assert os.path.samefile(copied, encoders["sync"])  # hard link on the same filesystem: no extra space
    model = tmp_path / "moved"
    staged.rename(model)  # self-contained: relative paths, so the directory can move
    runs = []
    for run in ("a", "b"):
        assert main(["generate", str(EXAMPLE), "--model", str(model), "--cot", COT, "--steps", "2",
                     "--duration", "1.0", "--seed", "5", "--device", "cpu", "--offload",
                     "--out", str(tmp_path / run), "--quiet"]) == 0
        runs.append(tmp_path / run / "example.wav")
    audio, sr = sf.read(runs[0], dtype="float32")
    assert sr == 44100 and audio.ndim == 2 and audio.shape[1] == 2
    n = PrismAudioPipeline.from_pretrained(model).config.latent_length(1.0)
    assert audio.shape[0] == min(44100, n * 128) and np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert runs[0].read_bytes() == runs[1].read_bytes()


def test_cli_encoder_flags_are_validated_and_recorded(official: dict, encoders: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    assert main(_convert_args(official, out, "--videoprism", str(encoders["video"]),
                              "--t5gemma", str(encoders["text"]))) == 0
    err = capsys.readouterr().err
    assert "--synchformer FILE" in err and "--videoprism DIR" not in err and "--t5gemma DIR" not in err
    cfg = json.loads((out / "config.json").read_text())["encoders"]
    assert cfg["video"]["params"] == {"path": "encoders/videoprism"} and cfg["sync"]["params"] == {}
    assert (out / "encoders" / "t5gemma" / "config.json").is_file()
    # a VideoPrism directory where a T5-Gemma one belongs: the width / kind check refuses, nothing written
    assert main(_convert_args(official, tmp_path / "x", "--t5gemma", str(encoders["video"]))) == 2
    assert "--t5gemma" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


class _Payload:
    """A pickle whose loading would run code (creates a marker file): it must never be unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["empty", "garbage", "pickle_payload"])
def test_unreadable_checkpoints_are_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   kind: str) -> None:
    import pickle

    ckpt = tmp_path / "prismaudio.ckpt"
    marker = tmp_path / "pwned"
    if kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"state_dict": _Payload(str(marker))}, ckpt, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    out = tmp_path / "out"
    assert main(["convert-official", "--weights", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and len(err[0]) < 300, err
    assert ("empty (0 bytes)" in err[0]) if kind == "empty" else ("cannot read checkpoint" in err[0])
    assert not marker.exists() and not out.exists()  # never unpickled, nothing written
