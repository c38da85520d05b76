"""The one training loop, on `accelerate`, shared by every stage.

A stage supplies a dataset, a module whose `forward(batch, generator)` returns (loss, logs), a
collate function, `demo` and `export`; this loop does the rest: AdamW + warm-up/cosine LR,
gradient accumulation (`accelerator.accumulate`), clipping, a float32 EMA, logging (TensorBoard
through accelerate's tracker when `tensorboard` is importable, always `metrics.jsonl`), demos,
checkpoints of the complete state, `--resume`, and the final EMA export.

Determinism: every random draw of a step comes from one explicit training generator per process;
the data order is a permutation seeded by (seed, epoch); so restoring the generator, the epoch and
the position inside it, plus model / EMA / optimizer / scheduler / global RNGs, continues a run
bit-identically on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..errors import PrismAudioError
from ..pipeline import PrismAudioPipeline
from . import state as ckpt
from .config import TrainConfig

Log = Callable[[str], None]
CHECKPOINTS = "checkpoints"
FINAL = "final"


# ------------------------------------------------------------------------------ pieces
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


class EMA:
    """Float32 exponential moving average of a module's floating-point state (params + buffers).

    With `warmup` the decay after step n is min(decay, (1 + n) / (10 + n)) (official ema.py): a short run (a few
    thousand steps at decay 0.999) would otherwise export weights still ~30% made of the random
    initialisation. n is the trainer's step, so a resumed run applies the same decays.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.track(module)
        self.shadow = {k: v.detach().float().clone() for k, v in self.live.items()}

    def track(self, module: nn.Module) -> None:
        """(Re)bind the live tensors: moving a module to a device replaces its buffers."""
        self.live = {k: v for k, v in module.state_dict(keep_vars=True).items() if v.is_floating_point()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the live weights after optimizer step `step` (1-based, as official ema.py)."""
        decay = self.decay_at(step)
        for k, v in self.live.items():
            self.shadow[k].lerp_(v.detach().float(), 1.0 - decay)

    def to(self, device: torch.device) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def load(self, shadow: dict[str, Tensor]) -> None:
        if set(shadow) != set(self.shadow):
            raise PrismAudioError("the checkpoint's EMA does not match the model's parameters")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)

    def copy_into(self, module: nn.Module) -> nn.Module:
        sd = module.state_dict()
        module.load_state_dict({k: self.shadow[k].to(v.dtype) if k in self.shadow else v for k, v in sd.items()})
        return module


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine to `min_lr_ratio` at `max_steps` (or constant)."""
    o = cfg.optim

    def fn(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def weights_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_pipeline(cfg: TrainConfig) -> PrismAudioPipeline:
    """The starting model: a preset (seeded init) or a model directory (e.g. the vae stage export)."""
    name = cfg.model.split(":", 1)[1] if cfg.model.startswith("preset:") else cfg.model
    from ..config import PRESETS

    if name in PRESETS:  # a directory named like a preset is written "./mini"
        return PrismAudioPipeline.from_preset(name, seed=cfg.seed)
    return PrismAudioPipeline.from_pretrained(cfg.model)


def _build_stage(cfg: TrainConfig, pipe: PrismAudioPipeline, log: Log) -> Any:
    if cfg.stage == "vae":
        from .vae_stage import VAEStage

        return VAEStage(cfg, pipe, log)
    from .flow_stage import FlowStage

    return FlowStage(cfg, pipe, log)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


# ------------------------------------------------------------------------------ the loop
def _print(msg: str) -> None:
    print(msg, flush=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False, log: Log = _print) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, DistributedType

        self.cfg = cfg
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / CHECKPOINTS
        tracker = "tensorboard" if _has_tensorboard() else None
        self.acc = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
            cpu=not torch.cuda.is_available(),  # so torchrun / accelerate launch on CPUs gives gloo DDP
            log_with=tracker, project_dir=str(self.out / "logs"), step_scheduler_with_optimizer=False,
            # the official keep-for-parity parameters (and dropped paths) get no gradient
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        if self.acc.distributed_type == DistributedType.FSDP:
            raise PrismAudioError("FSDP is not supported: the EMA and the checkpoint writer need whole "
                                  "parameters on every process; launch with DDP (the models fit one device)")
        self.main = self.acc.is_main_process
        self.log = log if self.main else (lambda _msg: None)
        latest = ckpt.find_latest(self.ckpt_dir)
        if latest is not None and not resume:
            raise PrismAudioError(f"{self.out} already holds checkpoints (latest {latest.name}); "
                                  "pass --resume to continue, or choose another --out")
        self.resume_from = latest if resume else None
        if resume and latest is None:
            self.log(f"--resume: no complete checkpoint in {self.ckpt_dir}, starting from scratch")

        _seed_everything(cfg.seed)
        self.pipe = build_pipeline(cfg)
        if self.resume_from is not None:  # refuse a foreign checkpoint before decoding any data
            ckpt.check_compatible(ckpt.read_meta(self.resume_from), self.pipe.config.to_dict(), cfg.stage,
                                  self.resume_from)
        with self.acc.main_process_first():  # rank 0 decodes and fills the data cache; the others read it
            self.stage = _build_stage(cfg, self.pipe, self.log)
        self.pipe.to(self.acc.device)
        n = len(self.stage.dataset)
        world = self.acc.num_processes
        if n < cfg.batch_size * world:
            raise PrismAudioError(f"{n} clips cannot fill one batch of {cfg.batch_size} on each of {world} process(es)")
        self.module: nn.Module = self.stage.module
        self.generator = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + self.acc.process_index)
        self.sampler = EpochSampler(n, cfg.seed)
        loader = DataLoader(self.stage.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                            collate_fn=self.stage.collate, drop_last=True)
        params = [p for p in self.module.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps,
                                      weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.step = self.epoch = self.position = 0
        self.ema = EMA(self.module, cfg.ema_decay, cfg.ema_warmup)
        if self.resume_from is not None:
            self._restore(self.resume_from, optimizer, scheduler)
        self.model, self.optimizer, self.loader, self.scheduler = self.acc.prepare(self.module, optimizer, loader, scheduler)
        self.ema.to(self.acc.device).track(self.acc.unwrap_model(self.model))
        self.acc.step = self.position  # accelerate's accumulation counter restarts every epoch
        self.acc.init_trackers("prismaudio", config=_flat(cfg.to_dict()))
        self.log(f"training {sum(p.numel() for p in params):,} parameters on {world} process(es) "
                 f"({self.acc.device}); logs: {'TensorBoard + ' if tracker else ''}{self.out / 'metrics.jsonl'}")

    # -------------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t_start, steps_start = time.perf_counter(), self.step
        t_log = t_start
        while self.step < cfg.max_steps:
            self.sampler.epoch = self.epoch
            loader = self.acc.skip_first_batches(self.loader, self.position) if self.position else self.loader
            for batch in loader:
                with self.acc.accumulate(self.model):
                    loss, logs = self.model(batch, self.generator)
                    self.acc.backward(loss)
                    if self.acc.sync_gradients and cfg.optim.grad_clip > 0:
                        logs["grad_norm"] = self.acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    self.optimizer.step()
                    if self.acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.position += 1
                for k, v in {"loss": loss, **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach().float())
                    counts[k] = counts.get(k, 0) + 1
                if not self.acc.sync_gradients:
                    continue
                self.step += 1
                self.ema.update(self.step)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    now = time.perf_counter()
                    done = self.step % cfg.log_every or cfg.log_every
                    self._log_metrics({k: v / counts[k] for k, v in sums.items()}, done / max(now - t_log, 1e-9))
                    sums, counts, t_log = {}, {}, now
                if cfg.demo_every and self.step % cfg.demo_every == 0:
                    self._demo()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save()
                if self.step >= cfg.max_steps:
                    break
            else:
                self.epoch += 1
                self.position = 0
        elapsed = time.perf_counter() - t_start
        return self._finish((self.step - steps_start) / max(elapsed, 1e-9))

    def _log_metrics(self, means: dict[str, float], steps_per_s: float) -> None:
        keys = sorted(means)
        local = torch.tensor([means[k] for k in keys], device=self.acc.device)
        mean = self.acc.reduce(local, reduction="mean") if self.acc.num_processes > 1 else local
        values = {f"train/{k}": float(v) for k, v in zip(keys, mean.tolist())}
        values["train/lr"] = float(self.scheduler.get_last_lr()[0])
        values["train/steps_per_s"] = steps_per_s
        self.acc.log(values, step=self.step)
        if self.main:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, "epoch": self.epoch, **values}) + "\n")
            shown = " ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in values.items())
            self.log(f"step {self.step}/{self.cfg.max_steps} {shown}")

    def _ema_module(self) -> nn.Module:
        return self.ema.copy_into(deepcopy(self.acc.unwrap_model(self.model)))

    def _demo(self) -> None:
        if self.main:
            out = self.out / "demos"
            out.mkdir(parents=True, exist_ok=True)
            for p in self.stage.demo(self._ema_module(), out, self.step):
                if p.suffix == ".wav":
                    self.log(f"demo: {p}")
        self.acc.wait_for_everyone()

    # -------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        """Every process contributes its generator state; the main process writes the directory."""
        from accelerate.utils import gather_object

        gens = gather_object([self.generator.get_state().tolist()])
        error = ""
        if self.main:
            py, npy, tch = ckpt.capture_host_rng()
            rng = {"torch": tch, **{f"train.rank{r}": torch.tensor(s, dtype=torch.uint8) for r, s in enumerate(gens)}}
            if torch.cuda.is_available():
                rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            state = ckpt.TrainingState(
                step=self.step, epoch=self.epoch, position=self.position,
                model=self.acc.unwrap_model(self.model).state_dict(), ema=self.ema.shadow,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), rng=rng,
                python_rng=py, numpy_rng=npy, config=self.cfg.to_dict(), model_config=self.pipe.config.to_dict(),
                world_size=self.acc.num_processes,
            )
            try:
                path = ckpt.save_state(self.ckpt_dir, state, self.cfg.keep_last)
                self.log(f"checkpoint: {path}")
            except PrismAudioError as e:
                error = str(e)
        errors = [e for e in gather_object([error]) if e]
        if errors:
            raise PrismAudioError(errors[0])

    def _restore(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        st = ckpt.load_state(path)
        try:
            self.module.load_state_dict(st.model, strict=True)
            optimizer.load_state_dict(st.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise PrismAudioError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
        scheduler.load_state_dict(st.scheduler)
        self.ema.load(st.ema)
        ckpt.restore_host_rng(st.python_rng, st.numpy_rng, st.rng["torch"])
        key = f"train.rank{self.acc.process_index}"
        if st.world_size == self.acc.num_processes and key in st.rng:
            self.generator.set_state(st.rng[key])
        else:
            self.log(f"warning: checkpoint was written by {st.world_size} process(es), this run has "
                     f"{self.acc.num_processes}: training generators are re-seeded (not bit-identical)")
            self.generator.manual_seed(self.cfg.seed * 7919 + 1 + self.acc.process_index + 1_000_003 * st.step)
        if torch.cuda.is_available() and "cuda.0" in st.rng:
            torch.cuda.set_rng_state_all([st.rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in st.rng])
        self.step, self.epoch, self.position = st.step, st.epoch, st.position
        self.log(f"resumed from {path} (step {st.step}, epoch {st.epoch}, batch {st.position})")

    # -------------------------------------------------------------------- the end
    def _finish(self, steps_per_s: float) -> dict[str, Any]:
        from accelerate.utils import gather_object

        live = self.acc.unwrap_model(self.model)
        hashes = gather_object([weights_hash(live)])
        summary: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "steps_per_s": steps_per_s,
                                   "num_processes": self.acc.num_processes, "rank_weight_hashes": hashes,
                                   "ranks_in_sync": len(set(hashes)) == 1, "final": str(self.out / FINAL)}
        if self.main:
            self.stage.export(self._ema_module(), self.out / FINAL)
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            self.log(f"done: step {self.step}, {steps_per_s:.2f} steps/s; EMA model exported to {self.out / FINAL}")
            if not summary["ranks_in_sync"]:
                self.log("warning: the processes' weights differ (see train_summary.json)")
        self.acc.wait_for_everyone()
        self.acc.end_training()  # also tears down the process group
        return summary


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        from torch.utils import tensorboard as _tb  # noqa: F401
    except ImportError:
        return False
    return True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, log: Log | None = _print) -> dict[str, Any]:
    """Run (or continue) one training stage; returns the summary written to `train_summary.json`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, out_dir, resume=resume, log=log or (lambda _msg: None)).run()
