"""`prismaudio demo`: serve the web demo on this machine.

Offline by construction: gradio's analytics and version check, Hugging Face telemetry and
OpenTelemetry are switched off in the environment before gradio is imported, the page uses
system fonts, and the server binds to 127.0.0.1 unless told otherwise. Everything it writes
(uploads, gradio's cache, results) goes into one temporary folder, removed on exit (Ctrl-C or
SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..errors import PrismAudioError

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "OTEL_SDK_DISABLED": "true",
    "GRADIO_SSR_MODE": "False",  # no Node.js server next to ours
}
EXAMPLE = Path("examples") / "example.mp4"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `demo` on the CLI's subparsers (`func` is `run`)."""
    d = subparsers.add_parser("demo", help="serve the web demo (gradio) on this machine")
    d.add_argument("--model", default=None, help="model directory or preset:NAME (default: the shipped model)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--planner", default="offline", help="the planner selected when the page opens (default offline)")
    d.add_argument("--max-upload-mb", type=float, default=200.0, help="largest video accepted (default 200 MB)")
    d.add_argument("--example", default=None,
                   help=f"the clip behind 'Use the example clip' (default {EXAMPLE} when it exists)")
    d.add_argument("--keep-jobs", type=int, default=16, help="results kept on disk before the oldest go")
    d.add_argument("--tmpdir", default=None, help="parent of the demo's temporary folder (default: the system's)")
    d.add_argument("--quiet", action="store_true", help="print only the URL")
    d.set_defaults(func=run)
    return d


def find_example(given: str | None) -> Path | None:
    """--example, else examples/example.mp4 in the working directory or the source checkout."""
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise PrismAudioError(f"--example {p}: no such file")
        return p.resolve()
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / EXAMPLE).is_file():
            return (base / EXAMPLE).resolve()
    return None


def _check_args(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise PrismAudioError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise PrismAudioError(f"--max-upload-mb must be > 0, got {args.max_upload_mb:g}")
    if args.keep_jobs < 1:
        raise PrismAudioError(f"--keep-jobs must be >= 1, got {args.keep_jobs}")


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PrismAudioError(f"--host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise PrismAudioError(f"cannot serve on {host}:{port}: {e.strerror or e} (choose another --port)") from None


def run(args: argparse.Namespace) -> int:
    """Load the model, build the page, serve until Ctrl-C / SIGTERM, then remove the temp folder."""
    import shutil

    _check_args(args)
    example = find_example(args.example)
    _check_port_free(args.host, args.port)  # before the slow model load
    from .jobs import Workspace

    ws = Workspace(args.tmpdir, keep_jobs=args.keep_jobs)
    tempfile.tempdir = str(ws.tmp_dir)  # every temp file of this process (multipart spools, staging) lands in it
    stop = threading.Event()

    def on_signal(*_: Any) -> None:  # while serving: stop the loop below; before: interrupt the loading
        if not serving.is_set():
            raise KeyboardInterrupt
        stop.set()

    serving = threading.Event()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    demo = None
    try:
        os.environ.update(OFFLINE_ENV)
        os.environ["GRADIO_TEMP_DIR"] = str(ws.gradio_dir)  # uploads + gradio's cache, read at gradio import
        if "MPLCONFIGDIR" not in os.environ:  # matplotlib's font cache too, so nothing lands in ~/.cache
            os.environ["MPLCONFIGDIR"] = str(ws.root / "matplotlib")
        try:
            import gradio  # noqa: F401
        except ModuleNotFoundError:
            raise PrismAudioError("the web demo needs gradio: pip install 'prismaudio[web]'") from None
        from ..cli import load_pipeline
        from ..cot import list_planners
        from .app import PageConfig, build_app, theme
        from .jobs import MB, Generator

        if example is not None:  # served from our folder, never from the source tree
            (ws.root / "example").mkdir()
            example = Path(shutil.copy2(example, ws.root / "example" / example.name))
        planners = list_planners()
        if args.planner not in planners + ["none"]:
            raise PrismAudioError(f"--planner {args.planner!r}: available {', '.join(planners + ['none'])}")
        log = (lambda *_: None) if args.quiet else (lambda msg: print(f"prismaudio: {msg}", file=sys.stderr))
        log("loading the model")
        pipe = load_pipeline(args.model)
        page = PageConfig(planners=planners, default_planner=args.planner, example=example,
                          max_upload_bytes=int(args.max_upload_mb * MB), steps=pipe.config.sampling.steps,
                          cfg=pipe.config.sampling.cfg_scale)
        demo = build_app(Generator(pipe, ws), page)
        demo.queue(default_concurrency_limit=1)
        try:
            _, url, _ = demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                                    prevent_thread_lock=True, quiet=True, show_error=False, theme=theme(),
                                    max_file_size=page.max_upload_bytes, ssr_mode=False, pwa=False,
                                    mcp_server=False, allowed_paths=[str(ws.jobs_dir), str(ws.root / "example")],
                                    footer_links=[])
        except OSError as e:
            raise PrismAudioError(f"cannot serve on {args.host}:{args.port}: {e}") from None
        print(f"prismaudio demo: serving on {url} (Ctrl-C to stop)", flush=True)
        log(f"temporary folder {ws.root} (removed on exit)")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            log(f"warning: --host {args.host} makes the demo reachable from other machines (no authentication)")
        serving.set()
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        if demo is not None:
            demo.close(verbose=False)
        ws.close()
        tempfile.tempdir = None
        for s, h in previous.items():
            signal.signal(s, h)
