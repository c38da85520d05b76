"""`prismaudio` command line, the composition root (the one module that may wire in the procedural world):

* `generate`          sound for a video (or every clip of a manifest split) with a model directory
* `cot`               plan the four-part chain-of-thought for a video (offline / OpenAI-compatible / local VLM)
* `synth`             render the procedural audio-visual corpus (`prismaudio.procedural`)
* `extract`           cache encoder features and VAE latents per clip (the input of `data.features`)
* `train`             one training stage (vae | foundation | cot) from a YAML config, on the run harness
* `grpo`              RL post-training (Fast-GRPO / Flow-GRPO / SFT / RWR / DPO) from a YAML config
* `train-judges`      train the offline semantic / sync / quality judges on a procedural corpus
* `evaluate`          the paper's metrics (and the procedural ground truth) for generated audio
* `convert-official`  an official PrismAudio checkpoint as our model directory
* `demo`              the web demo (gradio) on this machine (`prismaudio.web`)
* `edit`              edit a video's soundtrack: inpaint, extend, add, remove, refine (`prismaudio.edit`)

Every user error is one line on stderr and exit code 2, and so is an OS error while writing (a
full disk, a read-only folder): output locations are checked before any work, and `generate`
stages its files in a hidden folder on --out's own filesystem, renamed into place only when every
file is written, so a failure writes nothing. Warnings go to stderr, also with --quiet.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import PrismAudioError

DEFAULT_MODEL_NAME = "prismaudio-mini"


def default_model_dir() -> Path | None:
    """$PRISMAUDIO_MODEL, else the shipped `prismaudio-mini` asset (`resources.asset_path`)."""
    from .resources import asset_path

    env = os.environ.get("PRISMAUDIO_MODEL")
    if env:
        return Path(env)
    shipped = asset_path(DEFAULT_MODEL_NAME)
    return shipped if (shipped / "config.json").is_file() else None


def load_pipeline(spec: str | None):
    """A model directory, or `preset:NAME` for randomly initialised weights (tests, smoke runs)."""
    from .pipeline import PrismAudioPipeline

    if spec is None:
        found = default_model_dir()
        if found is None:
            print(
                f"prismaudio: warning: no trained default model found (the {DEFAULT_MODEL_NAME} asset); "
                "using randomly initialised 'mini' weights, so the sound is not meaningful",
                file=sys.stderr,
            )
            spec = "preset:mini"
        else:
            spec = str(found)
    if spec.startswith("preset:"):
        return PrismAudioPipeline.from_preset(spec.split(":", 1)[1])
    return PrismAudioPipeline.from_pretrained(spec)


def read_text_arg(value: str | None) -> str | None:
    """`TEXT` or `@FILE` (UTF-8)."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise PrismAudioError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PrismAudioError(f"{path} is not valid UTF-8 text") from None


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed's signed 64-bit range


def seed_arg(value: str) -> int:
    """argparse type of --seed: an integer torch, NumPy and Python can all take."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, got {value}")
    return seed


# ------------------------------------------------------------------------------------- CoT
def planner_options(items: Sequence[str] | None) -> dict[str, Any]:
    """`--planner-opt key=value` pairs; values are read as YAML scalars (8 -> int, 1.5 -> float)."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PrismAudioError(f"--planner-opt expects KEY=VALUE, got {item!r}")
        try:
            opts[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            opts[key.strip()] = value
    return opts


def given_cot(args: argparse.Namespace) -> Any:
    """`--cot` as a CoT (four labelled parts / Markdown / JSON; anything else is treated as
    monolithic reasoning and split by the rule-based decoupler), or None when not given."""
    from .cot import CoT, CoTParseError, rule_based_decouple

    if args.cot is None:
        return None
    text = read_text_arg(args.cot)
    if not text.strip():
        raise PrismAudioError("--cot is empty")
    try:
        return CoT.parse(text)
    except CoTParseError as e:
        if any(v.strip() for v in (e.partial or {}).values()):  # labelled, some parts missing
            print(f"prismaudio: note: the CoT has no {', '.join(e.missing)} part; left empty", file=sys.stderr)
            return CoT.parse(text, allow_missing=True)
        return rule_based_decouple(text)


def resolve_cot(args: argparse.Namespace, video: Path) -> Any:
    """The CoT to condition on: `--cot`, else the planner's plan of the video, else None (`--planner none`)."""
    from .cot import build_planner

    given = given_cot(args)
    if given is not None or args.planner == "none":
        return given
    return build_planner(args.planner, **planner_options(args.planner_opt)).plan(video, caption=args.caption)


def status_printer(quiet: bool) -> Callable[[str], None]:
    """One `prismaudio: ...` line on stderr per slow stage (loading, planning, encoding); none with --quiet."""
    if quiet:
        return lambda _m: None
    return lambda m: print(f"prismaudio: {m}", file=sys.stderr, flush=True)


def cmd_cot(args: argparse.Namespace) -> int:
    from .io.video import probe_video

    video = Path(args.video)
    if args.out:
        from .io.files import check_output_file

        check_output_file(args.out)  # before planning (a VLM call can take minutes)
    probe_video(video)
    cot = resolve_cot(args, video)
    if cot is None:
        raise PrismAudioError("--planner none plans nothing; choose offline, openai or local")
    text = cot.to_json() if args.format == "json" else cot.render("multi")
    if args.out:
        from .io.files import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


# ------------------------------------------------------------------------------------ generate
def resolve_device_dtype(device: str | None, dtype: str) -> tuple[Any, Any]:
    """`--device` / `--dtype` -> (torch.device, torch.dtype), refusing what cannot run here."""
    import torch

    from .pipeline import INFERENCE_DTYPES

    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PrismAudioError(f"--device {name!r} is not a device (cuda, cuda:N or cpu)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrismAudioError("--device cuda: no CUDA GPU is visible to this PyTorch build; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PrismAudioError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise PrismAudioError(f"--device {name!r}: only cuda and cpu are supported")
    dt = INFERENCE_DTYPES[dtype]
    if dev.type == "cpu" and dt == torch.float16:
        raise PrismAudioError("--dtype fp16 is not supported on the CPU (slow, emulated half matmuls); "
                              "use --dtype bf16 or fp32 there, or --device cuda")
    if dev.type == "cpu" and dt == torch.bfloat16 and not _cpu_has_native_bf16():
        import warnings

        warnings.warn("this CPU has no native bf16 matmul (AVX-512 BF16 / AMX): --dtype bf16 is emulated and "
                      "slower than fp32 here (README: Use the released weights)", stacklevel=2)
    if dev.type == "cuda" and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PrismAudioError(f"--dtype bf16: {torch.cuda.get_device_name(dev)} has no bf16 support; use fp16 or fp32")
    return dev, dt


def _cpu_has_native_bf16() -> bool:
    """torch's own CPU probes (private API, so a missing probe counts as 'unknown' = no warning)."""
    import torch

    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if p is not None]
    try:
        return not probes or any(p() for p in probes)
    except Exception:  # noqa: BLE001
        return True


def place_pipeline(pipe: Any, args: argparse.Namespace) -> Any:
    """Move the pipeline to `--device`, cast its DiT to `--dtype`, set `--offload` (generate)."""
    dev, dt = resolve_device_dtype(args.device, args.dtype)
    pipe.offload_encoders = bool(args.offload)
    return pipe.to(dev, dt)


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from .io.audio import save_flac, save_wav
    from .io.files import Staging
    from .io.spectrogram import event_times, save_spectrogram_png
    from .io.video import mux_audio, probe_video, video_track_plan

    if args.steps <= 0:
        raise PrismAudioError(f"--steps must be a positive integer, got {args.steps}")
    if args.duration is not None and not args.duration > 0:
        raise PrismAudioError(f"--duration must be > 0 s, got {args.duration:g}")
    if args.manifest is not None or (args.video is not None and Path(args.video).is_dir()):
        return generate_manifest(args)
    if args.video is None:
        raise PrismAudioError("give a video file (or --manifest)")
    if args.name is not None and (not args.name or args.name in (".", "..") or "/" in args.name
                                  or os.sep in args.name or (os.altsep and os.altsep in args.name)):
        raise PrismAudioError(f"--name must be a plain file name (no directories), got {args.name!r}")
    video = Path(args.video)
    info = probe_video(video)  # fail fast on a bad video before loading the model
    _check_long_args(args, info.duration)
    if args.soundtrack != "new" and not info.has_audio:
        raise PrismAudioError(f"--soundtrack {args.soundtrack}: {video} has no soundtrack of its own")
    name = args.name or video.stem
    encoder = video_track_plan(video, Path(args.out) / f"{name}.mp4")  # decided before the compute
    if encoder is not None:
        print(f"prismaudio: note: the {video.suffix or 'input'} video track cannot go into an MP4 as it is; "
              f"{name}.mp4 re-encodes it ({encoder})", file=sys.stderr)
    with Staging(args.out) as staging:  # checks --out is writable before any work
        plan, result = _sample(args, video, info.duration)
        track, second = soundtrack(args.soundtrack, video, result.audio, result.sample_rate)
        windows = getattr(result, "windows", None)
        per_window = windows is not None and len(windows) > 1 and plan is None and any(result.plans)
        try:
            save = save_flac if args.audio_format == "flac" else save_wav
            save(staging.path(f"{name}.{args.audio_format}"), result.audio, result.sample_rate)
            mux_audio(video, track, result.sample_rate, staging.path(f"{name}.mp4"), second=second)
            if per_window:
                from .longform import event_times_long

                events = event_times_long(result, event_times)
            else:
                events = event_times(plan.temporal) if plan is not None else []
            save_spectrogram_png(staging.path(f"{name}.png"), result.audio, result.sample_rate, title=name,
                                 events=events)
            if plan is not None:  # the plan the audio was conditioned on, readable and editable (--cot @FILE)
                staging.path(f"{name}.cot.txt").write_text(plan.render("multi") + "\n", encoding="utf-8")
                staging.path(f"{name}.cot.json").write_text(plan.to_json() + "\n", encoding="utf-8")
            elif per_window:  # one plan per window: each under its time span; the JSON lists them
                from .longform import window_plans_json

                rows = window_plans_json(result)
                text = "\n\n".join(f"# window {r['window']}: {r['start']:.3f}-{r['end']:.3f} s\n"
                                    + (p.render("multi") if p is not None else str(r["cot"]))
                                    for r, p in zip(rows, result.plans))
                staging.path(f"{name}.cot.txt").write_text(text + "\n", encoding="utf-8")
                staging.path(f"{name}.cot.json").write_text(json.dumps(rows, ensure_ascii=False) + "\n",
                                                            encoding="utf-8")
            written = staging.publish()
        except OSError as e:  # nothing of it is in --out: the staging folder goes with the exception
            raise PrismAudioError(f"cannot write the outputs into {args.out}: {e.strerror or e}; "
                                  "nothing was written") from None
    if not args.quiet:
        for p in written:
            print(p)
    return 0


MIX_GAIN = 0.5  # the original soundtrack at -6 dB under the generated one


def soundtrack(mode: str, video: Path, audio: Any, sample_rate: int) -> tuple[Any, Any]:
    """The MP4's (first track, second track or None) for `--soundtrack`: new = the generated audio
    alone; mix = generated + the original at -6 dB (scaled down only where the sum would clip);
    keep = the generated track first and the original as a second track."""
    if mode == "new":
        return audio, None
    from .io.audio import load_audio

    original, _ = load_audio(video, sample_rate, channels=2)
    n = audio.shape[-1]
    original = original[:, :n]
    if original.shape[-1] < n:
        import torch.nn.functional as F

        original = F.pad(original, (0, n - original.shape[-1]))
    if mode == "keep":
        return audio, original
    mixed = audio + MIX_GAIN * original
    peak = float(mixed.abs().max())
    return (mixed / peak if peak > 1.0 else mixed), None


def _check_long_args(args: argparse.Namespace, video_duration: float) -> None:
    """`--max-duration` / `--window` / `--overlap` refused in one line before the model loads."""
    import math

    from .longform import check_long_duration

    for flag, value in (("--max-duration", args.max_duration), ("--window", args.window)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise PrismAudioError(f"{flag} must be a positive number of seconds, got {value:g}")
    if args.overlap is not None and not (args.overlap >= 0 and math.isfinite(args.overlap)):
        raise PrismAudioError(f"--overlap must be >= 0 seconds, got {args.overlap:g}")
    wanted = args.duration if args.duration is not None else video_duration
    if wanted > args.max_duration:
        check_long_duration(wanted, video_duration, args.max_duration)


def _sample(args: argparse.Namespace, video: Path, video_duration: float) -> tuple[Any, Any]:
    """Load the model and generate; the API plans the CoT unless --cot gives one (the same
    behaviour as `PrismAudioPipeline.generate`): (plan or None, GenerationResult). A video longer
    than the model's trained clip goes to `longform.generate_long` (windows, a bar over them)."""
    import time

    from tqdm import tqdm

    given = given_cot(args)
    options = planner_options(args.planner_opt)
    say = status_printer(args.quiet)
    say(f"loading the model ({args.model or default_model_dir() or 'preset:mini'}) ...")
    t0 = time.perf_counter()
    pipe = place_pipeline(load_pipeline(args.model), args)
    say(f"loaded in {time.perf_counter() - t0:.1f} s")
    if args.duration_rule is not None:
        pipe.config.sampling.duration_rule = args.duration_rule
    from .longform import LongformConfig, generate_long, needs_windows, window_length_s

    total = args.duration if args.duration is not None else pipe.clip_duration(video_duration)
    if needs_windows(pipe, total, args.window):
        from .longform import check_long_duration

        check_long_duration(total, video_duration, args.max_duration)
        print(f"prismaudio: note: {total:.1f} s of sound is longer than the model's "
              f"{window_length_s(pipe, args.window):g} s clips: generating it in overlapping windows", file=sys.stderr)
        bars: list[tqdm] = []

        def advance(done: int, n: int) -> None:
            if not bars:  # created when the windows are known (after the planner and encoders are set up)
                bars.append(tqdm(total=n, desc="windows", unit="window", disable=args.quiet, leave=False))
            bars[0].update(done - bars[0].n)

        config = LongformConfig(window_s=args.window, overlap_s=args.overlap, max_duration_s=args.max_duration)
        try:
            result = generate_long(
                pipe, video, cot=given, duration=args.duration, seed=args.seed, steps=args.steps, cfg_scale=args.cfg,
                progress=advance, config=config, planner=None if args.planner == "none" else args.planner,
                planner_options=options, caption=args.caption, cot_style=args.cot_style, status=say)
        finally:
            for bar in bars:
                bar.close()
        return result.plan if given is not None else None, result
    bars = []

    def progress(i: int, total: int) -> None:
        if not bars:  # created at the first step so feature extraction does not skew its rate
            bars.append(tqdm(total=total, desc="sampling", unit="step", disable=args.quiet, leave=False))
        bars[0].update(1)

    result = pipe.generate(
        video, cot=given, duration=args.duration, seed=args.seed, steps=args.steps, cfg_scale=args.cfg,
        progress=progress, planner=None if args.planner == "none" else args.planner, planner_options=options,
        caption=args.caption, cot_style=args.cot_style, status=say,
    )
    for bar in bars:
        bar.close()
    return result.plan, result


def generate_manifest(args: argparse.Namespace) -> int:
    """`generate --manifest`: OUT/<id>.wav for every clip of the split; exit 1 if any clip failed."""
    from .batch import folder_rows, generate_rows, manifest_plan, manifest_rows
    from .cot import build_planner

    folder = args.manifest is None  # `generate DIR`: every video of the folder
    if (args.video is not None and not folder) or args.cot is not None or args.name is not None:
        raise PrismAudioError("a batch (--manifest or a folder) generates every clip: drop the video, --cot and --name")
    if args.limit is not None and args.limit <= 0:
        raise PrismAudioError(f"--limit must be a positive integer, got {args.limit}")
    if args.audio_format != "wav" or args.soundtrack != "new":
        raise PrismAudioError("a batch writes <id>.wav files for `prismaudio evaluate`: drop --audio-format "
                              "and --soundtrack")
    if folder and args.manifest_cot:
        raise PrismAudioError("--manifest-cot needs a --manifest (a folder of videos has no CoTs)")
    warn = lambda m: print(f"prismaudio: warning: {m}", file=sys.stderr)  # noqa: E731
    if folder:
        rows = folder_rows(args.video, args.limit)
    else:
        rows = manifest_rows(args.manifest, None if args.split == "all" else args.split, args.limit, warn)
    if args.manifest_cot:
        plan = manifest_plan
    elif args.planner == "none":
        plan = lambda row: None  # noqa: E731
    else:
        planner = build_planner(args.planner, **planner_options(args.planner_opt))
        plan = lambda row: planner.plan(row.video, caption=args.caption)  # noqa: E731
    from .io.files import check_output_dir

    check_output_dir(args.out)
    say = status_printer(args.quiet)
    say(f"loading the model ({args.model or default_model_dir() or 'preset:mini'}) ...")
    pipe = place_pipeline(load_pipeline(args.model), args)
    summary = generate_rows(pipe, rows, args.out, plan, cot_style=args.cot_style, steps=args.steps,
                            cfg_scale=args.cfg, seed=args.seed, progress=not args.quiet)
    for clip, why in summary.failed.items():
        print(f"prismaudio: error: clip {clip}: {why}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(summary.done)} generated, {len(summary.skipped_existing)} already there, "
              f"{len(summary.failed)} failed -> {args.out}")
    return 1 if summary.failed else 0


# ------------------------------------------------------------------------- convert-official
def cmd_convert_official(args: argparse.Namespace) -> int:
    """Official weights (+ the three encoders) -> one model directory, written atomically by the
    library; every fact worth knowing (dropped unused weights, encoders still missing) is a note."""
    from .io.files import check_output_dir
    from .model.official import convert_official_checkpoint

    if Path(args.weights).is_dir():
        raise PrismAudioError(f"--weights {args.weights} is a directory; give the checkpoint file in it "
                              "(prismaudio.ckpt or .safetensors)")
    check_output_dir(args.out)
    encoders = {"video": args.videoprism, "sync": args.synchformer, "text": args.t5gemma}
    convert_official_checkpoint(
        args.weights, args.out, config=args.config, vae_weights=args.vae,
        encoders={k: v for k, v in encoders.items() if v is not None},
        notes=lambda line: print(f"prismaudio: note: {line}", file=sys.stderr),
    )
    print(args.out)
    return 0


# ------------------------------------------------------------------------------- synth / extract
def cmd_synth(args: argparse.Namespace) -> int:
    from .io.files import check_output_dir
    from .procedural.synth import run_synth

    check_output_dir(args.out)
    manifest = run_synth(
        args.out, n=args.n, seed=args.seed, split=args.split, workers=args.workers, duration=args.duration,
        fps=args.fps, size=args.size, sample_rate=args.sample_rate, progress=not args.quiet,
    )
    print(manifest)
    return 0


def parse_encoder_overrides(items: list[str]):
    """`video=clip:path=/ckpt,fps=4` -> {"video": EncoderSpec("clip", {"path": "/ckpt", "fps": 4})}."""
    import yaml

    from .config import EncoderSpec

    out = {}
    for item in items:
        slot, _, rest = item.partition("=")
        name, _, params = rest.partition(":")
        if not slot or not name:
            raise PrismAudioError(f"--encoders {item!r}: expected SLOT=NAME[:key=value,...]")
        kwargs = {}
        for kv in filter(None, params.split(",")):
            key, eq, value = kv.partition("=")
            if not eq:
                raise PrismAudioError(f"--encoders {item!r}: parameter {kv!r} is not key=value")
            kwargs[key] = yaml.safe_load(value)
        out[slot] = EncoderSpec(name, kwargs)
    return out


def cmd_extract(args: argparse.Namespace) -> int:
    from .data.extract import extract_features

    from .io.files import check_output_dir

    if args.batch_size <= 0:
        raise PrismAudioError(f"--batch-size must be a positive integer, got {args.batch_size}")
    check_output_dir(args.out)
    pipe = load_pipeline(args.model)
    for modality, spec in parse_encoder_overrides(args.encoders).items():  # e.g. a real T5-Gemma
        pipe.set_encoder(modality, spec)
    summary = extract_features(args.manifest, args.out, pipe, batch_size=args.batch_size, progress=not args.quiet,
                               cot_field=args.cot_field, duration=args.duration, seed=args.seed)
    for p in summary.problems:
        print(f"prismaudio: warning: {p}", file=sys.stderr)
    for clip_id, reason in summary.failed:
        print(f"prismaudio: warning: skipped {clip_id}: {reason}", file=sys.stderr)
    print(f"{summary.line()} -> {args.out}")
    return 1 if summary.failed else 0  # as `generate --manifest`: the good clips are written, the run is not clean


def cmd_train_judges(args: argparse.Namespace) -> int:
    import json

    from .procedural.train_judges import train_judges

    for name in ("semantic_steps", "sync_steps", "quality_steps"):
        if getattr(args, name) <= 0:
            raise PrismAudioError(f"--{name.replace('_', '-')} must be a positive integer")
    from .io.files import check_output_dir

    check_output_dir(args.out)
    metrics = train_judges(args.corpus, args.out, semantic_steps=args.semantic_steps, sync_steps=args.sync_steps,
                           quality_steps=args.quality_steps, seed=args.seed, limit=args.limit,
                           log=None if args.quiet else print)
    print(json.dumps(metrics, indent=1))
    return 0


# ---------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics.evaluate import run_cli  # checks --out first, writes the three files all-or-nothing

    return run_cli(args)


# ---------------------------------------------------------------------------------- train
def check_text_file(path: str, what: str) -> None:
    """A config file must be UTF-8 text; anything else is one line here, before any parser sees it."""
    try:
        Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PrismAudioError(f"{what} {path} is not UTF-8 text (not a YAML file?)") from None
    except OSError:
        pass  # missing / unreadable: the config loader names it


def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_train_config, train

    from .io.files import check_output_dir

    check_text_file(args.config, "training config")
    cfg = load_train_config(args.config, args.set)
    check_output_dir(args.out or cfg.out_dir)
    train(cfg, args.out or cfg.out_dir, resume=args.resume, log=None if args.quiet else lambda m: print(m, flush=True))
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from .rl import load_grpo_config
    from .rl.trainer import grpo

    from .io.files import check_output_dir

    check_text_file(args.config, "GRPO config")
    cfg = load_grpo_config(args.config, args.set)
    check_output_dir(args.out or cfg.out_dir)
    grpo(cfg, args.out or cfg.out_dir, resume=args.resume, log=None if args.quiet else lambda m: print(m, flush=True))
    return 0


# ---------------------------------------------------------------------------------- parser
def add_planner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--planner", default="offline",
                   help="CoT planner: offline (analyses the video itself; default), openai (any OpenAI-compatible "
                        "endpoint), local (a transformers VLM from a local dir), or none")
    p.add_argument("--planner-opt", action="append", metavar="KEY=VALUE",
                   help="planner parameter, repeatable (openai: base_url=, model=, api_key=, timeout=; local: path=)")
    p.add_argument("--caption", default=None, help="a caption for the planner (overrides its object classes)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"prismaudio: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .config import MAX_LONG_DURATION

    p = _Parser(prog="prismaudio", description="PrismAudio video-to-audio generation")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate stereo sound for a video")
    g.add_argument("video", nargs="?", default=None,
                   help="input video file, or a folder: every video in it, the model loaded once (or --manifest)")
    g.add_argument("--manifest", default=None,
                   help="instead of one video: every clip of a manifest split -> OUT/<id>.wav (+ <id>.cot.json), "
                        "the input of `prismaudio evaluate`; existing WAVs are skipped (resumable)")
    g.add_argument("--split", default="test", help="with --manifest: the split to generate, or 'all' (default test)")
    g.add_argument("--limit", type=int, default=None, help="with --manifest: at most this many clips")
    g.add_argument("--manifest-cot", action="store_true",
                   help="with --manifest: condition on each row's own CoT instead of the planner's plan")
    g.add_argument("--cot", default=None,
                   help="chain-of-thought plan: TEXT or @FILE (four labelled parts, Markdown or JSON; other text "
                        "is split into the four parts by the rule-based decoupler). Default: the planner's plan")
    add_planner_args(g)
    g.add_argument("--cot-style", default="multi", choices=["multi", "monolithic", "random", "none"],
                   help="how the CoT is rendered for the text encoder (default multi, the paper's)")
    g.add_argument("--out", default="outputs", help="output directory (default: outputs)")
    g.add_argument("--name", default=None, help="output base name (default: the video's stem)")
    g.add_argument("--steps", type=int, default=24, help="sampling steps (default 24)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: model's)")
    g.add_argument("--seed", type=seed_arg, default=0)
    g.add_argument("--duration", type=float, default=None,
                   help="seconds (default: the video's); longer than the model's clips -> overlapping windows")
    g.add_argument("--max-duration", type=float, default=MAX_LONG_DURATION,
                   help=f"refuse videos (or --duration) longer than this many seconds (default {MAX_LONG_DURATION:g})")
    g.add_argument("--window", type=float, default=None,
                   help="window length in seconds for long videos (default: the model's trained clip length)")
    g.add_argument("--overlap", type=float, default=None,
                   help="minimum overlap of consecutive windows in seconds (default: a quarter of the window)")
    g.add_argument("--duration-rule", choices=["exact", "whole_seconds"], default=None,
                   help="the video's length as is, or truncated to whole seconds as the official demo.sh "
                        "does (default: the model's, normally exact)")
    g.add_argument("--model", default=None, help="model directory, or preset:NAME for random weights")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision of the DiT and condition MLPs (default fp32; the VAE decodes in fp32)")
    g.add_argument("--offload", action="store_true",
                   help="free the pretrained encoders once their features exist, before sampling (less GPU memory)")
    g.add_argument("--audio-format", choices=["wav", "flac"], default="wav",
                   help="the generated track's file: 16-bit WAV (default) or FLAC (lossless, smaller)")
    g.add_argument("--soundtrack", choices=["new", "mix", "keep"], default="new",
                   help="the MP4's sound: new (the generated track only; default), mix (with the original "
                        "at -6 dB), keep (the original as a second audio track)")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no file list")
    g.set_defaults(func=cmd_generate)

    k = sub.add_parser("cot", help="plan the four-part chain-of-thought for a video")
    k.add_argument("video", help="input video file")
    k.add_argument("--cot", default=None, help=argparse.SUPPRESS)
    add_planner_args(k)
    k.add_argument("--format", default="text", choices=["text", "json"], help="output format (default text)")
    k.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")
    k.set_defaults(func=cmd_cot)

    s = sub.add_parser("synth", help="generate the procedural audio-visual corpus (AudioCanvas-style)")
    s.add_argument("--out", required=True, help="output directory (manifest.jsonl, video/, audio/)")
    s.add_argument("--n", type=int, required=True, help="number of clips")
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--split", choices=["train", "val", "test"], default=None, help="only clips of this split")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--duration", type=float, default=4.0, help="seconds per clip (default 4)")
    s.add_argument("--fps", type=int, default=25)
    s.add_argument("--size", type=int, default=96, help="video width = height in pixels")
    s.add_argument("--sample-rate", type=int, default=16000)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("extract", help="cache encoder features and VAE latents for a manifest")
    e.add_argument("--manifest", required=True, help="JSONL or CSV manifest")
    e.add_argument("--out", required=True, help="feature cache directory (one safetensors per clip)")
    e.add_argument("--model", default=None, help="model directory (its encoders and VAE), or preset:NAME")
    e.add_argument("--encoders", nargs="*", default=[], metavar="SLOT=NAME[:k=v,...]",
                   help="replace the model's encoders, e.g. text=t5gemma:path=/ckpt/t5gemma video=clip:path=/ckpt/clip")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--cot-field", choices=["multi", "monolithic", "caption", "none"], default="multi",
                   help="text given to the text encoder (default: the four-part CoT)")
    e.add_argument("--duration", type=float, default=None, help="clip length (default: the model's)")
    e.add_argument("--seed", type=seed_arg, default=0, help="seed of the sampled VAE latents")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_extract)

    j = sub.add_parser("train-judges", help="train the offline semantic / sync / quality judges on a corpus")
    j.add_argument("--corpus", required=True, help="corpus directory (or its manifest) from `prismaudio synth`")
    j.add_argument("--out", required=True, help="output directory: semantic/, sync/, quality/, metrics.json")
    j.add_argument("--semantic-steps", type=int, default=1200)
    j.add_argument("--sync-steps", type=int, default=1500)
    j.add_argument("--quality-steps", type=int, default=1500)
    j.add_argument("--limit", type=int, default=None, help="use at most this many clips per split")
    j.add_argument("--seed", type=seed_arg, default=0)
    j.add_argument("--quiet", action="store_true")
    j.set_defaults(func=cmd_train_judges)

    v = sub.add_parser("evaluate", help="evaluate generated audio against the references (paper metrics)")
    v.add_argument("--manifest", required=True, help="JSONL or CSV manifest (reference audio, video, captions)")
    v.add_argument("--generated", action="append", default=[], metavar="[NAME=]DIR",
                   help="folder of <id>.wav (.flac/.mp3) files; repeatable; NAME defaults to the folder name")
    v.add_argument("--judges", choices=["offline", "real"], default="offline",
                   help="offline judges, or the real models of --real-config (roles it leaves out: offline, said "
                        "once; a backend whose file is missing or fails to load: its columns n/a, said once)")
    v.add_argument("--real-config", default=None,
                   help="YAML naming each backend's local checkpoint, {role: {backend: NAME, path: FILE}} "
                        "(see configs/eval/real.yaml and docs/metrics.md)")
    v.add_argument("--judges-dir", default=None,
                   help="offline judges folder (default: $PRISMAUDIO_JUDGES or the shipped judges asset)")
    v.add_argument("--split", default="test", help="manifest split to evaluate, or 'all' (default: test)")
    v.add_argument("--limit", type=int, default=None, help="evaluate at most this many clips")
    v.add_argument("--spatial-mode", choices=["bewo", "paper"], default="bewo",
                   help="GCC protocol: bewo (the cited code, exact; default; ~0.25 s CPU per 4 s track with numba) or paper (App. F.1 TDOA distributions)")
    v.add_argument("--bewo-cache", default=None, metavar="DIR",
                   help="cache BEWO GCC tracks in DIR by audio content, so a reference folder's are computed once across runs")
    v.add_argument("--bewo-frame-stride", type=int, default=1,
                   help="use every k-th GCC frame of a BEWO window (1 = exact protocol)")
    v.add_argument("--no-gt", action="store_true", help="skip the scene-graph ground-truth measures")
    v.add_argument("--out", required=True,
                   help="output prefix: writes PREFIX.md, PREFIX.json and PREFIX.clips.jsonl (per-clip values)")
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("train", help="train a stage (vae | foundation | cot) from a YAML config, on accelerate")
    t.add_argument("config", help="training config YAML (see configs/train/)")
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted keys (e.g. --set optim.lr=1e-4); repeatable")
    t.add_argument("--out", default=None, help="run directory (default: the config's out_dir)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("grpo", help="RL post-training (Fast-GRPO / Flow-GRPO / SFT / RWR / DPO) from a YAML config")
    r.add_argument("config", help="GRPO config YAML (see configs/grpo/)")
    r.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, dotted keys (e.g. --set sampler.window=4); repeatable")
    r.add_argument("--out", default=None, help="run directory (default: the config's out_dir)")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=cmd_grpo)

    c = sub.add_parser("convert-official", help="convert an official PrismAudio checkpoint")
    c.add_argument("--weights", required=True, help="official prismaudio.ckpt or .safetensors")
    c.add_argument("--config", default=None, help="official model config JSON (default: the paper config)")
    c.add_argument("--vae", default=None, help="optional official vae.ckpt overriding the pretransform")
    c.add_argument("--synchformer", default=None, metavar="FILE",
                   help="the released synchformer_state_dict.pth (sync encoder)")
    c.add_argument("--videoprism", default=None, metavar="DIR",
                   help="a local transformers VideoPrism LvT-large directory (video encoder)")
    c.add_argument("--t5gemma", default=None, metavar="DIR",
                   help="a local google/t5gemma-l-l-ul2-it directory (text encoder)")
    c.add_argument("--out", required=True,
                   help="output model directory (new or empty); the encoders are hard-linked (or copied) into it")
    c.set_defaults(func=cmd_convert_official)

    from .web.command import add_parser as add_demo_parser  # gradio is imported only when `demo` runs
    add_demo_parser(sub)
    from .edit.command import add_parser as add_edit_parser
    add_edit_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    import warnings

    # Library warnings (a truncated CoT, a resampled file) reach CLI users as one plain line each.
    warnings.formatwarning = lambda message, category, *a, **k: f"prismaudio: warning: {message}\n"
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
        return code
    except PrismAudioError as e:
        print(f"prismaudio: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as e:  # the disk filled, a folder turned read-only...: the environment, not a bug
        if e.errno == errno.EPIPE:
            return _broken_pipe()
        from .io.files import os_error_line

        print(f"prismaudio: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prismaudio: interrupted", file=sys.stderr)
        return 130


def one_line(message: str) -> str:
    """A message that came with line breaks (a YAML parser's caret diagram) as one line."""
    parts = [p.strip() for p in message.splitlines() if p.strip() and set(p.strip()) != {"^"}]
    return "; ".join(parts) if parts else message.strip()


def _broken_pipe() -> int:
    """The reader went away (`prismaudio cot V | head -1`): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return 128 + 13  # the shell's status for a SIGPIPE-ended process


if __name__ == "__main__":
    sys.exit(main())
