"""The bad-input and output-fault suite (issue 20): the real CLI, in subprocesses, over a table of
cases whose inputs are all built here (corrupt / truncated / audio-only / odd-codec / one-frame /
huge videos, CoTs, model directories, configs, manifests, checkpoints, WAVs, unwritable and full
output locations).

For every case: the exit code, no traceback, stderr made only of `prismaudio:` lines with exactly
one error line when it fails, and --out holding either the complete set of outputs or nothing
(and, for a folder that existed, its old contents unchanged). Full-disk and read-only cases run
on a real small tmpfs (root can write into a chmod-0555 folder, so only a real read-only or full
filesystem proves anything) and skip, saying why, where mounting is not permitted; the file-size
cases use RLIMIT_FSIZE, which binds root too.

The cases run two at a time from one module fixture (each test reads its own result), so the
table's wall time stays near its CPU time on two cores.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "example.mp4"
TRAIN_CFG = REPO / "configs" / "train" / "tiny_smoke.yaml"
GRPO_CFG = REPO / "configs" / "grpo" / "tiny_smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
GEN = ("--steps", "2", "--quiet")
THREE = ("x.mp4", "x.png", "x.wav")  # generate --planner none --name x: the complete set
FIVE = ("x.cot.json", "x.cot.txt", *THREE)  # ... with a plan


@dataclass(frozen=True)
class Case:
    """One CLI run. Placeholders in argv: {I} the built inputs, {O} this case's --out,
    {M} this case's tmpfs mount (see `mount`)."""

    id: str
    argv: tuple[str, ...]
    code: int = 2
    msg: str = ""  # a substring (case-insensitive) of the error line, or of stderr when code is 0/1
    outputs: tuple[str, ...] | str = ()  # the complete set in {O} on success; "synth" / "judges": see _check_out
    mount: str | None = None  # "ro" or a tmpfs size ("64k"): {M} is a fresh mount of it
    fsize: int | None = None  # RLIMIT_FSIZE in bytes for the run
    pre: tuple[str, ...] = ()  # files put into {O} before the run (they must survive a failure)
    errors: int = 1  # error lines expected when code != 0
    stdin_closed: bool = False  # stdout is a pipe whose reader has gone (EPIPE)
    marker: bool = False  # the inputs' pickle payload must not have run
    slow: bool = False  # sampling / training: only with -m slow (the default table stays cheap)


def _c(id: str, *argv: str, **kw) -> Case:
    return Case(id, tuple(argv), **kw)


G = ("generate",)
OK = "{I}/ok.mp4"
CASES: list[Case] = [
    # ------------------------------------------------------------------ generate: videos
    _c("gen-missing", *G, "{I}/nope.mp4", "--out", "{O}", *GEN, msg="not found"),
    _c("gen-empty-file", *G, "{I}/empty.mp4", "--out", "{O}", *GEN, msg="empty"),
    _c("gen-random-bytes", *G, "{I}/random.mp4", "--out", "{O}", *GEN, msg="not a readable media file"),
    _c("gen-text-as-mp4", *G, "{I}/text.mp4", "--out", "{O}", *GEN, msg="media file"),
    _c("gen-audio-only", *G, "{I}/audio_only.m4a", "--out", "{O}", *GEN, msg="no video stream"),
    _c("gen-zero-frames", *G, "{I}/no_frames.mp4", "--out", "{O}", *GEN, msg="no video stream"),
    _c("gen-truncated-no-moov", *G, "{I}/truncated.mp4", "--out", "{O}", *GEN, msg="media file"),
    _c("gen-folder-without-videos", *G, "{I}/cots", "--out", "{O}", *GEN, msg="no video files"),
    _c("gen-truncated-decodable-warns", *G, "{I}/truncated.mkv", "--out", "{O}", "--name", "x", "--planner", "none",
       *GEN, code=0, outputs=THREE, msg="truncated or damaged"),
    _c("gen-webm-vp8", *G, "{I}/vp8.webm", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, msg="re-encodes"),
    _c("gen-gif", *G, "{I}/anim.gif", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, msg="re-encodes"),
    _c("gen-raw-avi", *G, "{I}/raw.avi", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, msg="re-encodes"),
    _c("gen-one-frame", *G, "{I}/one_frame.mp4", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, slow=True),
    _c("gen-huge-resolution", *G, "{I}/huge.mp4", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, slow=True),
    _c("gen-odd-size-webm", *G, "{I}/odd.webm", "--out", "{O}", "--name", "x", "--planner", "none", *GEN, code=0,
       outputs=THREE, slow=True),
    # ------------------------------------------------------------------ generate: options
    _c("gen-duration-zero", *G, OK, "--out", "{O}", "--duration", "0", *GEN, msg="--duration must be > 0"),
    _c("gen-duration-negative", *G, OK, "--out", "{O}", "--duration", "-2", *GEN, msg="--duration must be > 0"),
    _c("gen-duration-nan", *G, OK, "--out", "{O}", "--duration", "nan", *GEN, msg="--duration"),
    _c("gen-duration-inf", *G, OK, "--out", "{O}", "--duration", "inf", *GEN, msg="duration"),
    _c("gen-duration-too-long", *G, OK, "--out", "{O}", "--duration", "61", *GEN, msg="exceeds the maximum"),
    _c("gen-steps-zero", *G, OK, "--out", "{O}", "--steps", "0", "--quiet", msg="--steps must be a positive"),
    _c("gen-steps-not-int", *G, OK, "--out", "{O}", "--steps", "abc", msg="invalid int value"),
    _c("gen-seed-negative", *G, OK, "--out", "{O}", "--seed", "-1", *GEN, msg="--seed"),
    _c("gen-seed-huge", *G, OK, "--out", "{O}", "--seed", "1" + "0" * 30, *GEN, msg="--seed"),
    _c("gen-name-with-dir", *G, OK, "--out", "{O}", "--name", "../escaped", *GEN, msg="--name must be a plain"),
    _c("gen-name-empty", *G, OK, "--out", "{O}", "--name", "", *GEN, msg="--name must be a plain"),
    _c("gen-device-bogus", *G, OK, "--out", "{O}", "--device", "tpu", *GEN, msg="--device"),
    _c("gen-fp16-on-cpu", *G, OK, "--out", "{O}", "--device", "cpu", "--dtype", "fp16", *GEN, msg="fp16"),
    _c("gen-unknown-planner", *G, OK, "--out", "{O}", "--planner", "bogus", *GEN, msg="bogus"),
    _c("gen-planner-opt-not-kv", *G, OK, "--out", "{O}", "--planner-opt", "novalue", *GEN, msg="--planner-opt"),
    _c("gen-cot-style-bogus", *G, OK, "--out", "{O}", "--cot-style", "loud", *GEN, msg="invalid choice"),
    # ------------------------------------------------------------------ generate: CoTs
    _c("cot-empty", *G, OK, "--out", "{O}", "--cot", "   ", *GEN, msg="--cot is empty"),
    _c("cot-file-missing", *G, OK, "--out", "{O}", "--cot", "@{I}/cots/nope.txt", *GEN, msg="cannot read"),
    _c("cot-file-latin1", *G, OK, "--out", "{O}", "--cot", "@{I}/cots/latin1.txt", *GEN, msg="not valid UTF-8"),
    _c("cot-file-binary", *G, OK, "--out", "{O}", "--cot", "@{I}/cots/binary.bin", *GEN, msg="not valid UTF-8"),
    _c("cot-file-is-dir", *G, OK, "--out", "{O}", "--cot", "@{I}/cots", *GEN, msg="cannot read"),
    _c("cot-malformed-json", *G, OK, "--out", "{O}", "--name", "x", "--cot", "@{I}/cots/malformed.json",
       "--duration", "1", *GEN, code=0, outputs=FIVE, slow=True),
    _c("cot-oversized", *G, OK, "--out", "{O}", "--name", "x", "--cot", "@{I}/cots/huge.txt", "--duration", "1",
       *GEN, code=0, outputs=FIVE, msg="truncated", slow=True),
    # ------------------------------------------------------------------ generate: model directories
    _c("model-missing", *G, OK, "--out", "{O}", "--model", "{I}/models/nope", *GEN, msg="does not exist"),
    _c("model-empty-dir", *G, OK, "--out", "{O}", "--model", "{I}/models/empty", *GEN, msg="config.json"),
    _c("model-bad-config-json", *G, OK, "--out", "{O}", "--model", "{I}/models/badjson", *GEN, msg="config"),
    _c("model-config-unknown-key", *G, OK, "--out", "{O}", "--model", "{I}/models/unknownkey", *GEN, msg="bogus"),
    _c("model-no-weights", *G, OK, "--out", "{O}", "--model", "{I}/models/noweights", *GEN, msg="safetensors"),
    _c("model-truncated-weights", *G, OK, "--out", "{O}", "--model", "{I}/models/truncated", *GEN,
       msg="model.safetensors"),
    _c("model-pickle-weights", *G, OK, "--out", "{O}", "--model", "{I}/models/pickle", *GEN,
       msg="model.safetensors", marker=True),
    _c("model-unknown-preset", *G, OK, "--out", "{O}", "--model", "preset:nope", *GEN, msg="nope"),
    # ------------------------------------------------------------------ generate: where it writes
    _c("out-is-a-file", *G, OK, "--out", "{I}/text.mp4", *GEN, msg="not a directory"),
    _c("out-under-a-file", *G, OK, "--out", "{I}/text.mp4/sub", *GEN, msg="is a file"),
    _c("out-read-only-fs", *G, OK, "--out", "{M}/out", *GEN, mount="ro", msg="not writable"),
    _c("out-full-disk", *G, OK, "--out", "{M}/out", "--duration", "1", "--planner", "none", *GEN, mount="64k",
       msg="no space left"),
    # 88k: the 1 s WAV (64 KiB) and the MP4 fit, the spectrogram PNG (~30 KiB) does not
    _c("out-disk-fills-mid-way", *G, OK, "--out", "{M}/out", "--duration", "1", "--planner", "none", *GEN,
       mount="88k",
       msg="no space left"),
    _c("out-full-disk-existing-folder", *G, OK, "--out", "{M}/out", "--duration", "1", "--planner", "none", *GEN,
       mount="96k", pre=("keep.txt",), msg="no space left", slow=True),
    _c("out-file-size-limit", *G, OK, "--out", "{O}", "--duration", "1", "--planner", "none", *GEN, fsize=40_000,
       msg="file too large"),
    # ------------------------------------------------------------------ generate --manifest
    _c("manifest-missing", *G, "--manifest", "{I}/nope.jsonl", "--out", "{O}", *GEN, msg="not found"),
    _c("manifest-empty", *G, "--manifest", "{I}/manifests/empty.jsonl", "--out", "{O}", *GEN, msg="empty"),
    _c("manifest-all-bad-lines", *G, "--manifest", "{I}/manifests/bad_lines.jsonl", "--split", "all",
       "--out", "{O}", *GEN, msg="no usable clips in"),
    _c("manifest-wrong-split", *G, "--manifest", "{I}/manifests/one.jsonl", "--split", "val", "--out", "{O}", *GEN,
       msg="no usable clips of split"),
    _c("manifest-limit-zero", *G, "--manifest", "{I}/manifests/one.jsonl", "--limit", "0", "--out", "{O}", *GEN,
       msg="--limit"),
    _c("manifest-with-name", *G, "--manifest", "{I}/manifests/one.jsonl", "--name", "x", "--out", "{O}", *GEN,
       msg="drop the video"),
    _c("manifest-clip-video-missing", *G, "--manifest", "{I}/manifests/missing_video.jsonl", "--split", "all",
       "--planner", "none", "--out", "{O}", *GEN, code=1, msg="not found", slow=True),
    _c("manifest-cot-without-cot", *G, "--manifest", "{I}/manifests/one.jsonl", "--split", "all",
       "--manifest-cot", "--out", "{O}", *GEN, code=1, msg="no cot"),
    # ------------------------------------------------------------------ cot
    _c("cot-cmd-missing-video", "cot", "{I}/nope.mp4", msg="not found"),
    _c("cot-cmd-out-is-dir", "cot", OK, "--out", "{I}/cots", msg="is a directory"),
    _c("cot-cmd-out-dir-missing", "cot", OK, "--out", "{I}/nope/plan.txt", msg="does not exist"),
    _c("cot-cmd-out-read-only", "cot", OK, "--out", "{M}/plan.txt", mount="ro", msg="not writable"),
    _c("cot-cmd-planner-none", "cot", OK, "--planner", "none", msg="plans nothing"),
    _c("cot-cmd-format-bogus", "cot", OK, "--format", "xml", msg="invalid choice"),
    _c("cot-cmd-broken-pipe", "cot", OK, code=141, stdin_closed=True, errors=0),
    # ------------------------------------------------------------------ synth
    _c("synth-n-zero", "synth", "--out", "{O}", "--n", "0", "--quiet", msg="positive integer"),
    _c("synth-n-not-int", "synth", "--out", "{O}", "--n", "abc", msg="invalid int value"),
    _c("synth-size-too-small", "synth", "--out", "{O}", "--n", "1", "--size", "8", "--quiet", msg="size >= 32"),
    _c("synth-split-bogus", "synth", "--out", "{O}", "--n", "1", "--split", "dev", msg="invalid choice"),
    _c("synth-seed-huge", "synth", "--out", "{O}", "--n", "1", "--seed", "9" * 25, msg="--seed"),
    _c("synth-out-is-a-file", "synth", "--out", "{I}/text.mp4", "--n", "1", "--quiet", msg="not a directory"),
    _c("synth-out-read-only", "synth", "--out", "{M}/c", "--n", "1", "--quiet", mount="ro", msg="not writable"),
    _c("synth-full-disk", "synth", "--out", "{M}/c", "--n", "6", "--duration", "2", "--size", "48",
       "--workers", "2", "--quiet", mount="300k", outputs="synth", msg="no space left"),
    # ------------------------------------------------------------------ extract
    _c("extract-manifest-missing", "extract", "--manifest", "{I}/nope.jsonl", "--out", "{O}", "--quiet",
       msg="not found"),
    _c("extract-batch-size-zero", "extract", "--manifest", "{I}/manifests/one.jsonl", "--out", "{O}",
       "--batch-size", "0", msg="--batch-size"),
    _c("extract-out-is-a-file", "extract", "--manifest", "{I}/manifests/one.jsonl", "--out", "{I}/text.mp4",
       "--quiet", msg="not a directory"),
    _c("extract-encoder-spec-bad", "extract", "--manifest", "{I}/manifests/one.jsonl", "--out", "{O}",
       "--encoders", "video", "--quiet", msg="--encoders"),
    _c("extract-cot-field-bogus", "extract", "--manifest", "{I}/manifests/one.jsonl", "--out", "{O}",
       "--cot-field", "poem", msg="invalid choice"),
    # ------------------------------------------------------------------ train / grpo configs
    _c("train-config-missing", "train", "{I}/nope.yaml", "--out", "{O}", msg="no such file"),
    _c("train-config-not-utf8", "train", "{I}/configs/binary.yaml", "--out", "{O}", msg="utf-8"),
    _c("train-config-not-yaml", "train", "{I}/configs/not_yaml.yaml", "--out", "{O}", msg="not_yaml.yaml"),
    _c("train-config-unknown-key", "train", "{I}/configs/unknown_key.yaml", "--out", "{O}", msg="bogus_key"),
    _c("train-config-bad-type", "train", "{I}/configs/bad_type.yaml", "--out", "{O}", msg="max_steps"),
    _c("train-config-lr-list", "train", "{I}/configs/lr_list.yaml", "--out", "{O}", msg="lr"),
    _c("train-set-lr-string", "train", str(TRAIN_CFG), "--set", "optim.lr=abc", "--out", "{O}", msg="lr"),
    _c("train-set-not-kv", "train", str(TRAIN_CFG), "--set", "max_steps", "--out", "{O}", msg="max_steps"),
    _c("train-out-is-a-file", "train", str(TRAIN_CFG), "--out", "{I}/text.mp4", msg="not a directory"),
    _c("train-out-read-only", "train", str(TRAIN_CFG), "--out", "{M}/run", mount="ro", msg="not writable"),
    _c("grpo-config-unknown-key", "grpo", str(GRPO_CFG), "--set", "bogus=1", "--out", "{O}", msg="bogus"),
    _c("grpo-config-bad-float", "grpo", str(GRPO_CFG), "--set", "optim.lr=[1, 2]", "--out", "{O}", msg="lr"),
    _c("grpo-out-read-only", "grpo", str(GRPO_CFG), "--out", "{M}/run", mount="ro", msg="not writable"),
    # ------------------------------------------------------------------ train-judges
    _c("judges-corpus-missing", "train-judges", "--corpus", "{I}/nope", "--out", "{O}", "--quiet",
       msg="no manifest"),
    _c("judges-steps-zero", "train-judges", "--corpus", "{I}/corpus", "--out", "{O}", "--sync-steps", "0",
       msg="--sync-steps"),
    _c("judges-out-is-a-file", "train-judges", "--corpus", "{I}/corpus", "--out", "{I}/text.mp4", "--quiet",
       msg="not a directory"),
    _c("judges-manifest-bad-line", "train-judges", "--corpus", "{I}/corpus_bad_line", "--out", "{O}",
       "--semantic-steps", "1", "--sync-steps", "1", "--quality-steps", "1", "--quiet", code=0,
       outputs="judges", msg="bad JSON", slow=True),
    # ------------------------------------------------------------------ evaluate (input checks)
    _c("eval-manifest-missing", "evaluate", "--manifest", "{I}/nope.jsonl", "--generated", "{I}/wavs",
       "--out", "{O}/r", "--quiet", msg="not found"),
    _c("eval-generated-missing", "evaluate", "--manifest", "{I}/corpus/manifest.jsonl", "--split", "all",
       "--generated", "{I}/nope", "--out", "{O}/r", "--quiet", msg="nope"),
    _c("eval-limit-zero", "evaluate", "--manifest", "{I}/corpus/manifest.jsonl", "--generated", "{I}/wavs",
       "--limit", "0", "--out", "{O}/r", msg="--limit"),
    _c("eval-real-config-without-real", "evaluate", "--manifest", "{I}/corpus/manifest.jsonl", "--generated",
       "{I}/wavs", "--real-config", "{I}/configs/binary.yaml", "--out", "{O}/r", msg="--judges real"),
    # ------------------------------------------------------------------ convert-official / checkpoints
    _c("convert-weights-missing", "convert-official", "--weights", "{I}/nope.ckpt", "--out", "{O}",
       msg="does not exist"),
    _c("convert-weights-is-dir", "convert-official", "--weights", "{I}/models", "--out", "{O}",
       msg="is a directory"),
    _c("convert-weights-empty", "convert-official", "--weights", "{I}/ckpt/empty.ckpt", "--out", "{O}",
       msg="empty"),
    _c("convert-weights-garbage", "convert-official", "--weights", "{I}/ckpt/garbage.ckpt", "--out", "{O}",
       msg="cannot read checkpoint"),
    _c("convert-weights-pickle-payload", "convert-official", "--weights", "{I}/ckpt/payload.ckpt", "--out", "{O}",
       msg="cannot read checkpoint", marker=True),
    _c("convert-weights-truncated-safetensors", "convert-official", "--weights", "{I}/ckpt/truncated.safetensors",
       "--out", "{O}", msg="truncated.safetensors"),
    _c("convert-out-is-a-file", "convert-official", "--weights", "{I}/ckpt/garbage.ckpt", "--out", "{I}/text.mp4",
       msg="not a directory"),
    # ------------------------------------------------------------------ the command line itself
    _c("cli-no-command", msg="required"),
    _c("cli-unknown-command", "fly", msg="invalid choice"),
]


# ---------------------------------------------------------------------------------- inputs
def _video(path: Path, codec: str, fmt: str | None = None, pix: str = "yuv420p", n: int = 20, w: int = 64,
           h: int = 48, rate: int = 10, opts: dict | None = None) -> Path:
    with av.open(str(path), "w", format=fmt, options=opts or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix
        for i in range(n):
            a = np.zeros((h, w, 3), np.uint8)
            a[:, (i * 3) % w] = 255
            a[(i * 2) % h, :] = (0, 128, 255)
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


class _Payload:
    """A pickle whose loading would run code (it creates the marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def _build(d: Path) -> Path:
    import torch
    import yaml

    marker = d / "PWNED"
    shutil.copy(EXAMPLE, d / "ok.mp4")
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "text.mp4").write_text("this is not a video\n")
    data = EXAMPLE.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # its moov atom is at the end: unreadable
    with av.open(str(d / "audio_only.m4a"), "w") as c:
        s = c.add_stream("aac", rate=16000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 16000), np.float32), format="fltp", layout="stereo")
        frame.sample_rate = 16000
        for p in list(s.encode(frame)) + list(s.encode(None)):
            c.mux(p)
    with av.open(str(d / "no_frames.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        c.start_encoding()
    full = _video(d / "full.mkv", "libx264", "matroska", n=40, rate=20)
    b = full.read_bytes()
    (d / "truncated.mkv").write_bytes(b[: len(b) // 2])  # a decodable first half; the header says 2 s
    _video(d / "vp8.webm", "libvpx", "webm")
    _video(d / "odd.webm", "libvpx", "webm", w=63, h=47)
    _video(d / "anim.gif", "gif", "gif", pix="rgb8")
    _video(d / "raw.avi", "rawvideo", "avi", pix="bgr24")
    _video(d / "one_frame.mp4", "libx264", "mp4", n=1, rate=25)
    _video(d / "huge.mp4", "libx264", "mp4", n=10, w=3840, h=2160, rate=10, opts={})
    cots = d / "cots"
    cots.mkdir()
    (cots / "latin1.txt").write_bytes("Semantic: caf\xe9".encode("latin-1"))
    (cots / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (cots / "malformed.json").write_text('{"semantic": "a ball bounces", "temporal": [1, 2', encoding="utf-8")
    (cots / "huge.txt").write_text("Semantic: " + "a wooden ball bounces on a hard floor. " * 30000, encoding="utf-8")
    models = d / "models"
    (models / "empty").mkdir(parents=True)
    (models / "badjson").mkdir()
    (models / "badjson" / "config.json").write_text("{not json")
    mini = REPO / "src" / "prismaudio" / "assets" / "prismaudio-mini"
    cfg = json.loads((mini / "config.json").read_text())
    for name in ("unknownkey", "noweights", "truncated", "pickle"):
        (models / name).mkdir()
        (models / name / "config.json").write_text(json.dumps({**cfg, "bogus": 1} if name == "unknownkey" else cfg))
    for name in ("truncated", "pickle"):
        for f in ("encoders.safetensors", "vae.safetensors"):
            os.link(mini / f, models / name / f)
    w = (mini / "model.safetensors").read_bytes()
    (models / "truncated" / "model.safetensors").write_bytes(w[: len(w) // 3])
    torch.save({"w": _Payload(str(marker))}, models / "pickle" / "model.safetensors")
    ck = d / "ckpt"
    ck.mkdir()
    (ck / "empty.ckpt").write_bytes(b"")
    (ck / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"state_dict": _Payload(str(marker))}, ck / "payload.ckpt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    (ck / "truncated.safetensors").write_bytes(w[:1000])
    cfgs = d / "configs"
    cfgs.mkdir()
    base = yaml.safe_load(TRAIN_CFG.read_text())
    (cfgs / "binary.yaml").write_bytes(b"\x00\x01\x02: [\xff")
    (cfgs / "not_yaml.yaml").write_text("stage: [foundation\nmodel: {tiny\n")
    (cfgs / "unknown_key.yaml").write_text(yaml.safe_dump({**base, "bogus_key": 1}))
    (cfgs / "bad_type.yaml").write_text(yaml.safe_dump({**base, "max_steps": "abc"}))
    (cfgs / "lr_list.yaml").write_text(yaml.safe_dump({**base, "optim": {**base["optim"], "lr": [1, 2]}}))
    # a real two-clip corpus (train + test) for train-judges and evaluate, and the manifests
    from prismaudio.cli import main as cli_main

    corpus = d / "corpus"
    assert cli_main(["synth", "--out", str(corpus), "--n", "2", "--duration", "2", "--size", "48", "--workers", "1",
                     "--quiet"]) == 0
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    bad = d / "corpus_bad_line"
    shutil.copytree(corpus, bad)
    rows = [json.loads(x) for x in lines]
    # both clips in both splits, so a 1-step judge run has train and test clips; one broken line
    both = [json.dumps({**r, "id": f"{r['id']}_{s}", "split": s}) for r in rows for s in ("train", "test")]
    (bad / "manifest.jsonl").write_text("\n".join([both[0], '{"id": "broken", ', *both[1:]]) + "\n")
    man = d / "manifests"
    man.mkdir()
    (man / "empty.jsonl").write_text("")
    (man / "bad_lines.jsonl").write_text('{"id": \n[1, 2]\n"just a string"\n')
    one = {"id": "c0", "video": str(d / "ok.mp4"), "split": "test", "duration": 1.0}
    (man / "one.jsonl").write_text(json.dumps(one) + "\n")
    (man / "missing_video.jsonl").write_text(json.dumps({**one, "video": str(d / "gone.mp4")}) + "\n")
    wavs = d / "wavs"
    wavs.mkdir()
    sf.write(wavs / f"{rows[0]['id']}.wav", np.zeros((32000, 2), np.float32), 16000)
    return marker


# ------------------------------------------------------------------------------- running
@dataclass
class Run:
    case: Case
    code: int
    stderr: str
    out: Path
    mount: Path | None
    before: dict[str, bytes] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0


def _mount(point: Path, kind: str) -> str | None:
    """Mount a fresh tmpfs at `point` (read-only, or of a size); the reason when that is not possible."""
    if os.geteuid() != 0:
        return "a small real filesystem needs root to mount (tmpfs); not root here"
    if shutil.which("mount") is None:
        return "no mount command"
    point.mkdir(parents=True)
    opts = "ro,size=1m" if kind == "ro" else f"size={kind}"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount -t tmpfs not permitted here: {r.stderr.strip()[:120]}"


def _umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _run(case: Case, inputs: Path, root: Path) -> Run:
    base = root / case.id
    base.mkdir()
    out, point = base / "out", None
    if case.mount is not None:
        point = base / "mnt"
        why = _mount(point, case.mount)
        if why is not None:
            return Run(case, -1, "", out, None, skipped=why)
        if any("{O}" in a for a in case.argv):
            raise AssertionError("a mounted case writes into {M}")
        out = point / "out"
    if case.pre:
        out.mkdir(parents=True)
        for name in case.pre:
            (out / name).write_text(f"old {name}\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else {}
    argv = [a.replace("{I}", str(inputs)).replace("{O}", str(out)).replace("{M}", str(point)) for a in case.argv]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))

    cmd = [sys.executable, "-m", "prismaudio.cli", *argv]
    t0 = time.perf_counter()
    if case.stdin_closed:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=base)
        p.stdout.close()  # the reader is gone before the first write (`prismaudio cot V | head -0`)
        err = p.stderr.read().decode()
        code = p.wait(timeout=300)
    else:
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=base, timeout=300,
                           preexec_fn=limit if case.fsize else None)
        code, err = r.returncode, r.stderr
    return Run(case, code, err, out, point, before, seconds=time.perf_counter() - t0)


def _selected(request: pytest.FixtureRequest) -> set[str]:
    ids = set()
    for item in request.session.items:
        if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params:
            ids.add(item.callspec.params["case"].id)
    return ids


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    inputs = tmp_path_factory.mktemp("inputs")
    marker = _build(inputs)
    root = tmp_path_factory.mktemp("runs")
    wanted = _selected(request)
    pool = ThreadPoolExecutor(max_workers=2)
    # the slow ones (sampling, training) first, so the two workers stay busy to the end
    order = sorted((c for c in CASES if c.id in wanted), key=lambda c: (c.code == 2 and c.mount is None, c.id))
    futures: dict[str, Future] = {c.id: pool.submit(_run, c, inputs, root) for c in order}
    yield futures, marker
    pool.shutdown(wait=True)
    done = [f.result() for f in futures.values()]
    for r in done:
        if r.mount is not None:
            _umount(r.mount)
    slowest = sorted(done, key=lambda r: -r.seconds)[:5]
    print("\nslowest cases: " + ", ".join(f"{r.case.id} {r.seconds:.1f} s" for r in slowest))


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _check_out(r: Run) -> None:
    c, out = r.case, r.out
    if c.outputs == "synth":  # all or nothing per clip, and no manifest after a failure
        assert not (out / "manifest.jsonl").exists()
        videos, audios = _listing(out / "video"), _listing(out / "audio")
        assert [Path(v).stem for v in videos] == [Path(a).stem for a in audios], (videos, audios)
        assert all(not n.startswith(".") for n in videos + audios), "temp files left"
        for a in audios:
            assert sf.info(str(out / "audio" / a)).frames > 0
        return
    if c.outputs == "judges":
        assert _listing(out) == ["metrics.json", "quality", "semantic", "sync"]
        assert all(_listing(out / j) for j in ("quality", "semantic", "sync"))
        return
    if r.code == 0:
        assert _listing(out) == sorted(c.outputs)
        for name in c.outputs:
            assert (out / name).stat().st_size > 0, name
        if "x.mp4" in c.outputs:
            with av.open(str(out / "x.mp4")) as m:
                assert len(m.streams.video) == 1 and len(m.streams.audio) == 1
                assert m.streams.video[0].codec_context.name in ("h264", "mpeg4")
                assert sum(1 for _ in m.decode(video=0)) >= 1
        if "x.wav" in c.outputs:
            assert sf.info(str(out / "x.wav")).frames > 0
    else:  # nothing new: no file, no staging folder, no temp file; old files as they were
        now = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else {}
        assert now == r.before, f"--out changed: {sorted(now)} (was {sorted(r.before)})"
        if r.mount is not None and c.mount != "ro":
            left = [p.name for p in r.mount.iterdir() if p.name != "out"]
            assert left == [], f"left on the disk: {left}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input(case: Case, runs) -> None:
    futures, marker = runs
    r: Run = futures[case.id].result()
    if r.skipped:
        pytest.skip(r.skipped)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.code == case.code, f"exit {r.code}, expected {case.code}: {r.stderr[-2000:]}"
    assert all(line.startswith("prismaudio: ") for line in lines), f"not all stderr lines are ours: {lines}"
    errors = [line for line in lines if line.startswith("prismaudio: error:")]
    if case.code not in (0, 141):
        assert len(errors) == case.errors, lines  # one line per error; the rest are warnings / notes
        assert all(line.startswith(("prismaudio: error:", "prismaudio: warning:", "prismaudio: note:"))
                   for line in lines), lines
        assert "\n" not in errors[0] and len(errors[0]) < 400, errors[0]
        assert case.msg.lower() in errors[0].lower(), f"{case.msg!r} not in {errors[0]!r}"
    else:
        assert errors == [], lines
        assert case.msg.lower() in r.stderr.lower(), f"{case.msg!r} not in {lines}"
    if case.marker:
        assert not marker.exists(), "the pickle payload ran"
    _check_out(r)


def test_the_table_covers_every_kind() -> None:
    """The issue's minimum: >= 60 cases over every command and input kind."""
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] for c in CASES if c.argv}
    assert commands >= {"generate", "cot", "synth", "extract", "train", "grpo", "train-judges", "evaluate",
                        "convert-official"}


def test_unique_tmpfs_placeholders() -> None:
    for c in CASES:
        assert (c.mount is not None) == any("{M}" in a for a in c.argv), c.id



def test_train_judges_reads_manifests_with_the_shared_reader(tmp_path: Path) -> None:
    """Issue 20 item 8: one bad line (or a row that is not a corpus row) is a warning, not a crash."""
    from prismaudio.procedural.train_judges import usable_rows

    good = {"id": "c0", "video": "v/c0.mp4", "audio": "a/c0.wav", "split": "train", "caption": "a drum",
            "cot": {"semantic": "a drum"}, "scene": {"sources": [{"class": "drum"}]}}
    lines = [json.dumps(good), '{"id": "broken", ', json.dumps({**good, "id": "c1", "scene": None}),
             json.dumps({**good, "id": "c2", "split": "test"})]
    m = tmp_path / "manifest.jsonl"
    m.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning) as seen:
        rows = usable_rows(m, "train")
    assert [r["id"] for r in rows] == ["c0"] and rows[0]["audio"] == tmp_path / "a" / "c0.wav"
    text = " | ".join(str(w.message) for w in seen)
    assert "bad JSON" in text and "'c1'" in text


def test_train_data_warnings_reach_stderr_with_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 item 10: `train --quiet` silenced the skipped-clip warnings (they went to the log)."""
    from prismaudio.harness import split_warnings

    logged: list[str] = []
    route = split_warnings(lambda m: print(f"prismaudio: warning: {m}", file=sys.stderr), logged.append)
    route("skipping clip 'c3': video file not found")
    route("warning: could not write the data cache")
    route("loaded 8 clips")
    err = capsys.readouterr().err.splitlines()
    assert err == ["prismaudio: warning: skipping clip 'c3': video file not found",
                   "prismaudio: warning: could not write the data cache"]
    assert logged == ["loaded 8 clips"]
