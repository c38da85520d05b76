"""The training loop shared by every stage (vae, foundation, cot), on the run harness.

A stage supplies a dataset, a module whose `forward(batch, generator)` returns (loss, logs), a
collate function, `demo` and `export`; the harness (`harness/run.py`) owns the accelerator,
resume policy, seeding, checkpoints and export; this loop adds gradient accumulation
(`accelerator.accumulate`), clipping, the EMA update, logging (TensorBoard through accelerate's
tracker when `tensorboard` is importable, always `metrics.jsonl`) and demos.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import PrismAudioError
from ..harness import EMA, FINAL, EpochSampler, RunHarness, build_optimizer, build_pipeline, print_log
from ..pipeline import PrismAudioPipeline
from .config import TrainConfig

Log = Callable[[str], None]


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
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False, log: Log = print_log) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.harness = h = RunHarness(self.out, seed=cfg.seed, resume=resume, log=log, grad_accum=cfg.grad_accum,
                                   mixed_precision=cfg.mixed_precision, trackers=True)
        self.acc, self.main, self.log, self.generator = h.acc, h.main, h.log, h.generator
        self.pipe = build_pipeline(cfg.model, cfg.seed)
        if cfg.context.enabled:  # before the resume check: the run's model config has the context projection
            from .flow_stage import enable_context

            enable_context(self.pipe, cfg, self.log)
        h.check_resume(self.pipe.config.to_dict(), cfg.stage)  # before decoding any data
        with self.acc.main_process_first():  # rank 0 decodes and fills the data cache; the others read it
            self.stage = _build_stage(cfg, self.pipe, h.data_log())
        self.pipe.to(h.device)
        n = len(self.stage.dataset)
        if n < cfg.batch_size * h.world:
            raise PrismAudioError(f"{n} clips cannot fill one batch of {cfg.batch_size} on each of {h.world} process(es)")
        self.module: nn.Module = self.stage.module
        self.sampler = EpochSampler(n, cfg.seed)
        # A loader of its own generator: each iterator draws a base seed from it, and from torch's global
        # RNG without one, which left a resumed run's saved global RNG a few draws off an uninterrupted one.
        loader = DataLoader(self.stage.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                            collate_fn=self.stage.collate, drop_last=True,
                            generator=torch.Generator().manual_seed(cfg.seed))
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, cfg.optim, cfg.max_steps)
        self.step = self.epoch = self.position = 0
        self.ema = EMA(self.module, cfg.ema_decay, cfg.ema_warmup)
        st = h.restore(self.module, optimizer, scheduler, self.ema)
        if st is not None:
            self.step, self.epoch, self.position = st.step, st.epoch, st.position
            h.trim_log("metrics.jsonl", "step", st.step)
            self.log(f"resumed from {h.resume_from} (step {st.step}, epoch {st.epoch}, batch {st.position})")
        self.model, self.optimizer, self.loader, self.scheduler = h.prepare(self.module, optimizer, loader, scheduler)
        self.ema.to(h.device).track(h.unwrap(self.model))
        self.acc.step = self.position  # accelerate's accumulation counter restarts every epoch
        self.acc.init_trackers("prismaudio", config=_flat(cfg.to_dict()))
        self.log(f"training {sum(p.numel() for p in params):,} parameters on {h.world} process(es) "
                 f"({h.device}); logs: {'TensorBoard + ' if h.tracker else ''}{self.out / 'metrics.jsonl'}")

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
        return self.harness.ema_module(self.model, self.ema)

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
        self.harness.save(step=self.step, epoch=self.epoch, position=self.position, module=self.harness.unwrap(self.model),
                       ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler, config=self.cfg.to_dict(),
                       model_config=self.pipe.config.to_dict(), keep_last=self.cfg.keep_last)

    # -------------------------------------------------------------------- the end
    def _finish(self, steps_per_s: float) -> dict[str, Any]:
        hashes = self.harness.rank_fingerprints(self.model)
        summary: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "steps_per_s": steps_per_s,
                                   "num_processes": self.harness.world, "rank_weight_hashes": hashes,
                                   "ranks_in_sync": len(set(hashes)) == 1, "final": str(self.out / FINAL)}

        def export() -> None:
            self.stage.export(self._ema_module(), self.out / FINAL)
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            self.log(f"done: step {self.step}, {steps_per_s:.2f} steps/s; EMA model exported to {self.out / FINAL}")
            if not summary["ranks_in_sync"]:
                self.log("warning: the processes' weights differ (see train_summary.json)")

        self.harness.finish(export)  # also tears down the process group
        return summary


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, log: Log | None = print_log) -> dict[str, Any]:
    """Run (or continue) one training stage; returns the summary written to `train_summary.json`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, out_dir, resume=resume, log=log or (lambda _msg: None)).run()
