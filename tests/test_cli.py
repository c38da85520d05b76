"""`prismaudio generate` / `convert-official`: outputs, determinism, and one-line errors that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cli import main
from prismaudio.cot import CoT
from prismaudio.pipeline import PrismAudioPipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model") / "tiny"
    PrismAudioPipeline.from_preset("tiny", seed=0).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with av.open(str(d / "audio_only.m4a"), "w") as c:  # a real media file without a video stream
        s = c.add_stream("aac", rate=16000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 16000), np.float32), format="fltp", layout="stereo")
        frame.sample_rate = 16000
        for p in list(s.encode(frame)) + list(s.encode(None)):
            c.mux(p)
    with av.open(str(d / "no_frames.mp4"), "w") as c:  # a video stream with zero frames
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        c.start_encoding()
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return {p.stem: p for p in d.iterdir()}


def test_generate_writes_wav_mp4_png_and_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    args = ["generate", str(EXAMPLE), "--model", str(model_dir), "--steps", "3", "--duration", "1.5", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--cot", "a ball bounces"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--cot", "a ball bounces"]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["example.cot.json", "example.cot.txt", "example.mp4", "example.png", "example.wav"]
    assert json.loads((tmp_path / "a" / "example.cot.json").read_text())["semantic"].lower().startswith("a ball bounces")
    assert (tmp_path / "a" / "example.wav").read_bytes() == (tmp_path / "b" / "example.wav").read_bytes()
    wav, sr = sf.read(tmp_path / "a" / "example.wav")
    assert sr == 16000 and wav.shape == (24000, 2)
    with av.open(str(tmp_path / "a" / "example.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert c.streams.audio[0].codec_context.channels == 2
    assert (tmp_path / "a" / "example.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cot_from_file(model_dir: Path, tmp_path: Path) -> None:
    cot = tmp_path / "plan.txt"
    cot.write_text("Semantic: a red ball hits a wooden floor.\nTemporal: impacts at 1.0 s.", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["generate", str(EXAMPLE), "--model", str(model_dir), "--steps", "1", "--duration", "1",
                 "--cot", f"@{cot}", "--out", str(out), "--quiet"]) == 0
    written = CoT.parse((out / "example.cot.txt").read_text(encoding="utf-8"), allow_missing=True)
    assert written == CoT("a red ball hits a wooden floor.", "impacts at 1.0 s.", "", "")


@pytest.mark.parametrize("case,extra,msg", [
    ("missing", [], "not found"),
    ("empty", [], ""),
    ("corrupt", [], ""),
    ("audio_only", [], "no video stream"),
    ("no_frames", [], ""),
    ("ok", ["--duration", "0"], "--duration must be > 0"),
    ("ok", ["--duration", "-2"], "--duration must be > 0"),
    ("ok", ["--duration", "61"], "exceeds the maximum"),
    ("ok", ["--steps", "0"], "--steps must be a positive"),
    ("ok", ["--steps", "-3"], "--steps must be a positive"),
    ("ok", ["--model", "/nonexistent/model"], "does not exist"),
    ("ok", ["--cot", "@/nonexistent/plan.txt"], "cannot read"),
    ("ok", ["--cot", "@LATIN1"], "not valid UTF-8"),
    ("ok", ["--steps", "abc"], "invalid int value"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str, extra: list[str], msg: str, model_dir: Path, bad_videos: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    video = {"missing": tmp_path / "missing.mp4", "ok": EXAMPLE}.get(case) or bad_videos[case]
    extra = [e.replace("LATIN1", str(bad_videos["latin1"])) for e in extra]
    if "--model" not in extra:
        extra += ["--model", str(model_dir)]
    if "--cot" not in extra:
        extra += ["--planner", "none"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "abc" in extra else _nullcontext() as exc:
        code = main(["generate", str(video), "--out", str(out), "--quiet", *extra])
    code = exc.value.code if "abc" in extra else code  # type: ignore[union-attr]
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prismaudio: error:"), err
    assert msg.lower() in lines[0].lower()
    assert not out.exists()


class _nullcontext:
    value = None

    def __enter__(self) -> "_nullcontext":
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    """The installed entry point: exit 2, one stderr line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "prismaudio.cli", "generate", str(tmp_path / "nope.mp4"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_convert_official_cli(shared_reference: Path, tmp_path: Path) -> None:
    """The tiny official fixture converts into a directory that from_pretrained loads and that
    reproduces the official cfg-1 velocity."""
    from safetensors.torch import load_file

    from prismaudio.model.vae import OobleckVAE
    from prismaudio.model.official import config_from_official

    root = shared_reference / "official_fixtures" / "tiny"
    cfg = config_from_official(json.loads((root / "model_config.json").read_text()))
    vae_sd = OobleckVAE(cfg.vae).state_dict()
    torch.save({"state_dict": {f"autoencoder.{k}": v for k, v in vae_sd.items()}}, tmp_path / "vae.ckpt")
    out = tmp_path / "converted"
    assert main(["convert-official", "--weights", str(root / "weights.safetensors"), "--config",
                 str(root / "model_config.json"), "--vae", str(tmp_path / "vae.ckpt"), "--out", str(out)]) == 0
    pipe = PrismAudioPipeline.from_pretrained(out)
    ref = load_file(root / "reference.safetensors")
    with torch.no_grad():
        cond = pipe.conditioner(ref["in.video_features"], ref["in.text_features_padded"], ref["in.sync_features"],
                                latent_length=ref["in.x"].shape[-1])
        v = pipe.dit(ref["in.x"], ref["in.t"], cond)
    tol = 1e-4 * ref["out.v_cfg1"].abs().max() + 1e-5
    assert (v - ref["out.v_cfg1"]).abs().max() <= tol
    # a second conversion into a non-empty directory is refused and leaves it intact
    before = sorted(p.name for p in out.iterdir())
    assert main(["convert-official", "--weights", str(root / "weights.safetensors"), "--config",
                 str(root / "model_config.json"), "--vae", str(tmp_path / "vae.ckpt"), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == before


def test_convert_official_bad_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.ckpt").write_bytes(b"not a checkpoint")
    assert main(["convert-official", "--weights", str(tmp_path / "w.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("prismaudio: error:")
    assert not (tmp_path / "o").exists()


def test_synth_then_extract_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`synth` writes a corpus, `extract` caches it; a broken row is reported and skipped."""
    corpus = tmp_path / "corpus"
    assert main(["synth", "--out", str(corpus), "--n", "3", "--seed", "5", "--workers", "1", "--quiet"]) == 0
    manifest = corpus / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3 and all((corpus / r["video"]).is_file() for r in rows)
    broken = dict(rows[0], id="broken", video="video/missing.mp4")
    manifest.write_text(manifest.read_text() + json.dumps(broken) + "\n")
    feats = tmp_path / "feats"
    capsys.readouterr()
    assert main(["extract", "--manifest", str(manifest), "--out", str(feats), "--model", "preset:tiny",
                 "--quiet"]) == 1  # a clip failed: exit 1, as generate --manifest
    captured = capsys.readouterr()
    assert "extracted 3" in captured.out and "failed 1" in captured.out
    assert "broken" in captured.err
    assert sorted(p.name for p in feats.iterdir()) == sorted(f"{r['id']}.safetensors" for r in rows)


def test_encoder_overrides_parse_and_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prismaudio.cli import parse_encoder_overrides

    spec = parse_encoder_overrides(["video=clip:path=/x,fps=4"])["video"]
    assert spec.name == "clip" and spec.params == {"path": "/x", "fps": 4}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    code = main(["extract", "--manifest", str(manifest), "--out", str(tmp_path / "f"), "--model", "preset:tiny",
                 "--encoders", "text=t5gemma:path=/nonexistent", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prismaudio: error:") and "is not a directory" in err
    assert not (tmp_path / "f").exists()


def test_module_docstring_lists_every_subcommand() -> None:
    import prismaudio.cli as cli

    names = set(cli.build_parser()._subparsers._group_actions[0].choices)
    listed = {line.split("`")[1] for line in (cli.__doc__ or "").splitlines() if line.startswith("* `")}
    assert names == listed


@pytest.mark.parametrize("name", ["../escaped", "sub/clip", "..", ""])
def test_generate_name_cannot_leave_out(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """`--name` is a file name: one with a directory part would write outside --out (issue 20)."""
    out = tmp_path / "o" / "sub"
    code = main(["generate", str(EXAMPLE), "--name", name, "--out", str(out),
                 "--model", "preset:tiny", "--planner", "none", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--name must be a plain file name" in err[0]
    assert not (tmp_path / "o").exists() and not list(tmp_path.rglob("*.wav"))


def test_flac_and_the_original_soundtrack(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19 (outputs): FLAC instead of WAV; the original sound kept as a second track or mixed in."""
    from prismaudio.io.video import mux_audio

    video = tmp_path / "example.mp4"  # the example with a soundtrack of its own: a 440 Hz tone
    t = torch.arange(64000) / 16000
    mux_audio(EXAMPLE, 0.5 * torch.sin(2 * torch.pi * 440 * t).expand(2, -1), 16000, video)
    base = ["generate", str(video), "--model", str(model_dir), "--steps", "1", "--duration", "1", "--quiet",
            "--planner", "none", "--seed", "3"]
    assert main(base + ["--out", str(tmp_path / "new")]) == 0
    assert main(base + ["--out", str(tmp_path / "keep"), "--audio-format", "flac", "--soundtrack", "keep"]) == 0
    assert main(base + ["--out", str(tmp_path / "mix"), "--soundtrack", "mix"]) == 0
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["example.flac", "example.mp4", "example.png"]
    wav, _ = sf.read(tmp_path / "new" / "example.wav")
    flac, sr = sf.read(tmp_path / "keep" / "example.flac")
    # lossless 16-bit: the samples agree to within libsndfile's float->int rounding (1 LSB) of the WAV
    assert sr == 16000 and flac.shape == wav.shape and np.abs(wav - flac).max() <= 1.5 / 32768
    assert (tmp_path / "mix" / "example.wav").read_bytes() == (tmp_path / "new" / "example.wav").read_bytes()
    tracks = {}
    for kind in ("new", "keep", "mix"):
        with av.open(str(tmp_path / kind / "example.mp4")) as c:
            tracks[kind] = len(c.streams.audio)
            first = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        tracks[kind + "_first"] = first
    assert tracks["new"] == 1 and tracks["keep"] == 2 and tracks["mix"] == 1
    n = min(x.shape[1] for k, x in tracks.items() if k.endswith("_first"))
    assert np.abs(tracks["mix_first"][:, :n] - tracks["new_first"][:, :n]).max() > 1e-3  # the original is in it
    assert np.abs(tracks["keep_first"][:, :n] - tracks["new_first"][:, :n]).max() < 1e-6  # the first track is ours
    # a video without sound of its own: one line before any compute, nothing written
    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(20):
            fr = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8), format="rgb24")
            fr.pts = i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    capsys.readouterr()
    assert main(["generate", str(silent), "--soundtrack", "mix", "--out", str(tmp_path / "x")]) == 2
    assert "no soundtrack of its own" in capsys.readouterr().err and not (tmp_path / "x").exists()
