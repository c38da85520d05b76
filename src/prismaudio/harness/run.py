"""One run's plumbing on `accelerate`, shared by the training stages and by GRPO / SFT / RWR / DPO.

`RunHarness` owns what every run needs and what must never differ between run kinds: the
accelerator (one process on CPU; DDP on CPUs (gloo) or GPUs under `accelerate launch` /
`torchrun`), the resume policy (refuse to overwrite a run, continue the latest complete
checkpoint on `--resume`, refuse a checkpoint of another stage or architecture), seeding, one
training generator per process, atomic full-state checkpoints with every rank's generator, the
matching restore, the per-rank weight fingerprints that prove DDP kept the ranks in sync, and the
main-process-only final export. A run (`train/trainer.py`, `rl/trainer.py`) keeps only its loop.

Determinism: every random draw of a step comes from `harness.generator` (one per process, seeded
by (seed, rank)); the data order is an `EpochSampler` permutation of (seed, epoch); restoring the
generators, (epoch, position) and model / EMA / optimizer / scheduler / global RNGs therefore
continues a run bit-identically on CPU.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from ..config import PRESETS
from ..errors import PrismAudioError
from ..io.files import atomic_path
from ..io.weights import fingerprint
from ..pipeline import PrismAudioPipeline
from . import checkpoint as ckpt
from .ema import EMA

Log = Callable[[str], None]
CHECKPOINTS = "checkpoints"
FINAL = "final"


def print_log(msg: str) -> None:
    """A run's default log: one flushed line on stdout (rank 0 only, see `RunHarness.log`)."""
    print(msg, flush=True)


def split_warnings(warn: Log, log: Log) -> Log:
    """A log whose "skipping ..." and "warning: ..." lines (the data builders' problems) go to
    `warn` (stderr, shown even with --quiet) and everything else to `log` (progress)."""

    def route(msg: str) -> None:
        if msg.startswith("warning: "):
            warn(msg[len("warning: "):])
        elif msg.startswith("skipping"):
            warn(msg)
        else:
            log(msg)

    return route


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch's global RNGs (module init, anything not on the run's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils import tensorboard as _tb  # noqa: F401
    except ImportError:
        return False
    return True


def build_pipeline(model: str, seed: int) -> PrismAudioPipeline:
    """A run's starting model: a preset (seeded init) or a model directory (e.g. a stage's export).
    A directory named like a preset is written "./mini"."""
    name = model.split(":", 1)[1] if model.startswith("preset:") else model
    if name in PRESETS:
        return PrismAudioPipeline.from_preset(name, seed=seed)
    return PrismAudioPipeline.from_pretrained(model)


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from a generator seeded by (seed, epoch): the data order is a
    pure function of the epoch, so resuming needs only (epoch, position), and every DDP rank
    draws the same permutation before accelerate shards it.

    Deliberately no `set_epoch` method: accelerate would call it with its loader's own iteration
    count, which restarts at 0 in a resumed run (and in the loader `skip_first_batches` builds).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class RunHarness:
    """Build first (it seeds), then build the model and data, then `prepare`, `restore`, loop, `save`,
    `finish`. `grad_accum` is accelerate's accumulation (`accelerator.accumulate`); a run that
    accumulates by hand (GRPO's micro-steps) passes 1."""

    def __init__(self, out_dir: str | Path, *, seed: int, resume: bool, log: Log, grad_accum: int = 1,
                 mixed_precision: str = "no", trackers: bool = False) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType

        self.out = Path(out_dir)
        self.ckpt_dir = self.out / CHECKPOINTS
        self.seed = seed
        self.tracker = "tensorboard" if trackers and has_tensorboard() else None
        self.acc = Accelerator(
            gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
            cpu=not torch.cuda.is_available(),  # so torchrun / accelerate launch on CPUs gives gloo DDP
            log_with=self.tracker, project_dir=str(self.out / "logs"), step_scheduler_with_optimizer=False,
            # the official keep-for-parity parameters (and dropped paths) get no gradient
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        if self.acc.distributed_type == DistributedType.FSDP:
            raise PrismAudioError("FSDP is not supported: the EMA and the checkpoint writer need whole "
                                  "parameters on every process; launch with DDP (the models fit one device)")
        self.main = self.acc.is_main_process
        self.log: Log = log if self.main else (lambda _msg: None)
        latest = ckpt.find_latest(self.ckpt_dir)
        if latest is not None and not resume:
            raise PrismAudioError(f"{self.out} already holds checkpoints (latest {latest.name}); "
                                  "pass --resume to continue, or choose another --out")
        self.resume_from = latest if resume else None
        if resume and latest is None:
            self.warn(f"--resume: no complete checkpoint in {self.ckpt_dir}, starting from scratch")
        seed_everything(seed)
        self.generator = torch.Generator().manual_seed(self._generator_seed())

    def warn(self, msg: str) -> None:
        """A warning: one line on stderr from the main process, shown even when the log is quiet."""
        if self.main:
            print(f"prismaudio: warning: {msg}", file=sys.stderr, flush=True)

    def data_log(self) -> Log:
        """The log to give the data builders: their skipped-clip / warning lines go to `warn`."""
        return split_warnings(self.warn, self.log)

    # -------------------------------------------------------------------- facts
    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    def _generator_seed(self, step: int | None = None) -> int:
        base = self.seed * 7919 + 1 + self.rank
        return base if step is None else base + 1_000_003 * step

    # -------------------------------------------------------------------- building
    def check_resume(self, model_config: dict[str, Any], stage: str) -> None:
        """Refuse a foreign checkpoint (other stage / architecture) before any expensive work."""
        if self.resume_from is None:
            return
        for p in reversed(ckpt.complete_checkpoints(self.ckpt_dir)):
            if p.name > self.resume_from.name:
                continue
            try:
                meta = ckpt.read_meta(p)
            except PrismAudioError:
                continue  # damaged: `restore` falls back past it and says so
            ckpt.check_compatible(meta, model_config, stage, p)
            return

    def prepare(self, *objs: Any) -> Any:
        return self.acc.prepare(*objs)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.acc.unwrap_model(model)

    # -------------------------------------------------------------------- checkpoints
    def save(self, *, step: int, epoch: int, position: int, module: nn.Module, ema: EMA,
             optimizer: torch.optim.Optimizer, scheduler: Any, config: dict[str, Any],
             model_config: dict[str, Any], keep_last: int) -> None:
        """Every process contributes its generator state; the main process writes the directory.
        A write failure on the main process is raised on every process (nobody hangs)."""
        from accelerate.utils import gather_object

        gens = gather_object([self.generator.get_state().tolist()])
        error = ""
        if self.main:
            py, npy, tch = ckpt.capture_host_rng()
            rng = {"torch": tch, **{f"train.rank{r}": torch.tensor(s, dtype=torch.uint8) for r, s in enumerate(gens)}}
            if torch.cuda.is_available():
                rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            state = ckpt.TrainingState(
                step=step, epoch=epoch, position=position, model=module.state_dict(), ema=ema.shadow,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng,
                python_rng=py, numpy_rng=npy, config=config, model_config=model_config, world_size=self.world,
            )
            try:
                path = ckpt.save_state(self.ckpt_dir, state, keep_last)
                self.log(f"checkpoint: {path}")
            except PrismAudioError as e:
                error = str(e)
        errors = [e for e in gather_object([error]) if e]
        if errors:
            raise PrismAudioError(errors[0])

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                ema: EMA) -> ckpt.TrainingState | None:
        """Load `resume_from` into the (unprepared) module / optimizer / scheduler / EMA, the global
        RNGs and this rank's generator; None when there is nothing to resume. A checkpoint written
        by another number of processes re-seeds the generators (and says so: not bit-identical)."""
        if self.resume_from is None:
            return None
        path, st = self._load_intact(self.resume_from)
        try:
            module.load_state_dict(st.model, strict=True)
            optimizer.load_state_dict(st.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise PrismAudioError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
        scheduler.load_state_dict(st.scheduler)
        ema.load(st.ema)
        ckpt.restore_host_rng(st.python_rng, st.numpy_rng, st.rng["torch"])
        key = f"train.rank{self.rank}"
        if st.world_size == self.world and key in st.rng:
            self.generator.set_state(st.rng[key])
        else:
            self.warn(f"checkpoint was written by {st.world_size} process(es), this run has "
                      f"{self.world}: training generators are re-seeded (not bit-identical)")
            self.generator.manual_seed(self._generator_seed(st.step))
        if torch.cuda.is_available() and "cuda.0" in st.rng:
            torch.cuda.set_rng_state_all([st.rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in st.rng])
        return st

    def _load_intact(self, latest: Path) -> tuple[Path, ckpt.TrainingState]:
        """The newest checkpoint at or before `latest` whose files all read (a disk fault can leave
        the latest one damaged after it was renamed into place): fall back, and say so."""
        candidates = [p for p in reversed(ckpt.complete_checkpoints(self.ckpt_dir)) if p.name <= latest.name]
        errors = []
        for p in candidates or [latest]:
            try:
                st = ckpt.load_state(p)
            except PrismAudioError as e:
                errors.append(str(e))
                self.warn(f"checkpoint {p.name} is damaged ({e}); trying the one before it")
                continue
            self.resume_from = p
            return p, st
        raise PrismAudioError(f"no intact checkpoint to resume in {self.ckpt_dir}: {errors[-1]}")

    def trim_log(self, name: str, key: str, upto: int) -> None:
        """Drop the rows of the JSON-lines log `name` written after the checkpoint being resumed
        (`key` > `upto`), so a resumed run's log has each step once."""
        path = self.out / name
        if not self.main or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get(key, 0) <= upto]
        if len(keep) != len(lines):
            with atomic_path(path) as tmp:
                Path(tmp).write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    # -------------------------------------------------------------------- the end
    def ema_module(self, model: nn.Module, ema: EMA) -> nn.Module:
        """A copy of the (unwrapped) model carrying the EMA weights: what demos and exports use."""
        return ema.copy_into(deepcopy(self.unwrap(model)))

    def rank_fingerprints(self, model: nn.Module) -> list[str]:
        """Every process's weight fingerprint (equal everywhere iff DDP kept the ranks in sync)."""
        from accelerate.utils import gather_object

        return gather_object([fingerprint(self.unwrap(model))])

    def finish(self, export: Callable[[], None] | None = None) -> None:
        """Run `export` on the main process, wait for everyone, tear down trackers and the group."""
        if self.main and export is not None:
            export()
        self.acc.wait_for_everyone()
        self.acc.end_training()
