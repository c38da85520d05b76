"""The `grpo` loop on accelerate: sample groups, decode, reward, advantages, policy update, EMA.

One iteration (paper Alg. of §3.3.2; official_network.md §10.3-10.6):

1. take `prompts_per_iter` clips (a seeded permutation per epoch, like `train/trainer.py`);
2. roll out G members per clip (`rollout.rollout`: Fast-GRPO shares the ODE prefix and draws the
   window start l afresh every iteration; Flow-GRPO is SDE everywhere) and VAE-decode them;
3. score them with the reward registry (eq. 5; per-prompt λ_k from `weights.py` when
   `content_weights`); a NaN reward excludes that sample;
4. group-normalised advantages (eq. 6, option global std), clipped at loss time;
5. update the DiT over the window steps with the clipped objective + β·KL to the frozen initial
   model (eq. 7, `grpo.grpo_loss`), or with a preference loss (`preference.py`) on the same groups.
   An optimizer step happens exactly every `grad_accum` micro-steps (validated to divide one
   iteration), fixing the official GA mismatch;
6. EMA (decay min((1 + s)/(10 + s), max)), logging, atomic full-state checkpoints.

The accelerator, resume policy, seeding, per-rank generators, checkpoints and export are the run
harness's (`harness/run.py`), shared with the training stages. Under DDP each process takes its own
`prompts_per_iter` clips of the shared epoch permutation (rank r the r-th slice), so the processes
together see each clip once per epoch, and gradients are averaged across them.

Frozen: VAE, encoders, conditioner (conditions computed once for the whole corpus under no_grad)
and the DiT's `empty_*_feat`. Determinism: every draw comes from one training generator; restoring
it with weights / EMA / optimizer / scheduler / (epoch, position) continues a run bit-identically.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PrismAudioError
from ..harness import EMA, FINAL, EpochSampler, RunHarness, build_optimizer, build_pipeline, print_log
from ..model.conditioning import ConditionTokens, frames_to_conditions
from ..rewards import RewardContext, combine_rewards, compute_rewards
from ..train.data import build_flow_clips, collate_flow, load_rows
from .config import GRPOConfig
from .grpo import compute_advantages, grpo_loss
from .preference import dpo_loss, rwr_loss, sft_loss
from .rollout import Rollout, policy_velocity, rollout, window_log_prob
from .weights import content_weights

Log = Callable[[str], None]
FROZEN_PARAMS = ("empty_clip_feat", "empty_sync_feat")  # official: frozen in GRPO (§10.6)
POST_TRAINED = "post_training.json"  # written into an exported GRPO model: what post-trained it


def post_training_of(model: str | Path) -> dict[str, Any] | None:
    """What already post-trained the model directory `model` (a GRPO export's `post_training.json`, or the
    `post_training` section `make grpo-default` puts in a shipped model's metrics.json), else None."""
    root = Path(model)
    for path, key in ((root / POST_TRAINED, None), (root / "metrics.json", "post_training")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found = data if key is None else (data.get(key) if isinstance(data, dict) else None)
        if isinstance(found, dict):
            return found
    return None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class GRPOTrainer:
    """Build with a `GRPOConfig`, then `run()`; `iteration()` runs one step of the loop."""

    def __init__(self, cfg: GRPOConfig, out_dir: str | Path, resume: bool = False, log: Log = print_log) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        done = post_training_of(cfg.model)
        if done is not None and not resume:  # first, before any slow work
            warnings.warn(f"{cfg.model} is already post-trained ({done.get('algorithm', 'GRPO')}, "
                          f"{done.get('iterations', '?')} iterations); this run post-trains it again. "
                          "`make train-default` rebuilds the CoT base (as `make grpo-default` requires)", stacklevel=2)
        self.harness = h = RunHarness(self.out, seed=cfg.seed, resume=resume, log=log)  # GA by hand: see validate
        self.acc, self.main, self.log, self.generator = h.acc, h.main, h.log, h.generator
        self.log(f"loading the model {cfg.model} ...")
        self.pipe = build_pipeline(cfg.model, cfg.seed)
        h.check_resume(self.pipe.config.to_dict(), "grpo")
        t0 = time.perf_counter()
        self.log(f"preparing the prompts: decoding the clips of {cfg.data.manifest or cfg.data.features} and "
                 "computing their conditions once (cached in data.cache_dir when set) ...")
        with self.acc.main_process_first():  # rank 0 decodes and fills the data cache; the others read it
            self._build_data()
        self.log(f"prepared {len(self.rows)} prompts in {_duration(time.perf_counter() - t0)}")
        self.pipe.to(h.device).requires_grad_(False).eval()
        self.dit = self.pipe.dit
        params = [p for n, p in self.dit.named_parameters() if n.split(".")[-1] not in FROZEN_PARAMS]
        for p in params:
            p.requires_grad_(True)
        needs_ref = cfg.loss.beta > 0 or cfg.algorithm == "dpo"
        self.ref = deepcopy(self.dit).requires_grad_(False).eval() if needs_ref else None  # θ_ref = θ_init
        optimizer, scheduler = build_optimizer(params, cfg.optim, cfg.optimizer_steps())
        self.sampler = EpochSampler(len(self.rows), cfg.seed)
        self.iter = self.epoch = self.position = self.opt_steps = 0
        self.ema = EMA(self.dit, cfg.ema_max_decay)
        st = h.restore(self.dit, optimizer, scheduler, self.ema)
        if st is not None:
            self.iter, self.epoch, self.position = st.step, st.epoch, st.position
            self.opt_steps = int(st.scheduler.get("last_epoch", 0))  # one scheduler step per optimizer step
            h.trim_log("metrics.jsonl", "iteration", st.step)
            self.log(f"resumed from {h.resume_from} (iteration {st.step}, epoch {st.epoch}, position {st.position})")
        self.model, self.optimizer, self.scheduler = h.prepare(self.dit, optimizer, scheduler)
        self.ema.to(h.device).track(h.unwrap(self.model))
        s = cfg.sampler
        self.log(f"{cfg.algorithm} ({s.mode}: T={s.steps}, w={s.effective_window()}, G={cfg.group_size}, "
                 f"a={s.noise_level}) on {len(self.rows)} clips, {sum(p.numel() for p in params):,} trainable "
                 f"parameters, rewards {cfg.rewards}; logs: {self.out / 'metrics.jsonl'}")

    # -------------------------------------------------------------------- data and conditions
    @torch.no_grad()
    def _build_data(self) -> None:
        """Decode the corpus once; compute every clip's condition once (frozen conditioner)."""
        cfg, pipe = self.cfg, self.pipe
        pipe._require_encoders()
        rows = load_rows(cfg.data, self.harness.data_log())
        clips = build_flow_clips(pipe, rows, cfg.data, "cot" if cfg.text == "cot" else "foundation", "multi",
                                 self.harness.data_log())
        by_id = {r.id: r for r in rows}
        self.rows = [by_id[i] for i in clips.ids]
        need = cfg.prompts_per_iter * self.harness.world
        if len(self.rows) < need:
            raise PrismAudioError(f"{len(self.rows)} clips cannot fill {cfg.prompts_per_iter} prompts per iteration "
                                  f"on each of {self.harness.world} process(es)")
        self.duration = clips.duration
        n = pipe.config.latent_length(clips.duration)
        self.latent_shape = (pipe.config.dit.io_channels, n)
        longest = max(t.shape[0] for t in clips.texts)  # one zero-padded text length for the corpus, so
        parts = []  # every clip's condition is the same whichever clips share its rollout batch
        for start in range(0, len(clips), 16):
            b = collate_flow([clips[i] for i in range(start, min(start + 16, len(clips)))])
            text = torch.nn.functional.pad(b["text"], (0, 0, 0, longest - b["text"].shape[1]))
            parts.append(frames_to_conditions(pipe.video_encoder, pipe.sync_encoder, pipe.conditioner, b["video"],
                                              b["sync"], text, n))
        self.conds = _cat_conditions(parts).to(self.acc.device)
        self.reference_audio: Tensor | None = None
        if "spatial" in cfg.rewards and any(not r.scene for r in self.rows):  # no scene ITD: use the VAE's
            self.reference_audio = pipe.decode(clips.latent, clips.duration)  # reconstruction of the clip

    def _next_prompts(self) -> list[int]:
        """This process's clips for the next iteration: all processes take the next
        `prompts_per_iter x world` clips of the epoch's permutation (a pure function of
        (seed, epoch, position)) and rank r keeps the r-th slice."""
        p, h = self.cfg.prompts_per_iter, self.harness
        out: list[int] = []
        while len(out) < p * h.world:
            self.sampler.epoch = self.epoch
            perm = list(iter(self.sampler))
            take = perm[self.position : self.position + p * h.world - len(out)]
            out += take
            self.position += len(take)
            if self.position >= len(perm):
                self.epoch, self.position = self.epoch + 1, 0
        return out[h.rank * p : (h.rank + 1) * p]

    # -------------------------------------------------------------------- rewards
    def _context(self, idx: list[int], g: int) -> RewardContext:
        rows = [self.rows[i] for i in idx for _ in range(g)]
        ref = None
        if self.reference_audio is not None:
            ref = self.reference_audio[torch.tensor(idx)].repeat_interleave(g, 0)
        return RewardContext(texts=[r.caption or None for r in rows], cots=[r.cot for r in rows],
                             video_paths=[str(r.video) for r in rows], scene_graphs=[r.scene for r in rows],
                             reference_audio=ref)

    def score(self, audio: Tensor, idx: list[int]) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(total [B·G], valid [B·G], log) with the base or the per-prompt content-aware λ_k."""
        cfg, g = self.cfg, self.cfg.group_size
        res = compute_rewards(list(cfg.rewards), cfg.rewards, audio, self.pipe.config.sample_rate,
                              self._context(idx, g))
        if not cfg.content_weights:
            return res.total, res.valid, res.log
        total, valid = res.total.clone(), res.valid.clone()
        for p, i in enumerate(idx):
            sl = slice(p * g, (p + 1) * g)
            lam = content_weights(cfg.rewards, self.rows[i].scene, self.rows[i].cot)
            total[sl], valid[sl], _ = combine_rewards({k: v[sl] for k, v in res.scores.items()}, lam)
        return total, valid, res.log

    # -------------------------------------------------------------------- one iteration
    def iteration(self) -> dict[str, Any]:
        cfg, g = self.cfg, self.cfg.group_size
        policy = self.acc.unwrap_model(self.model)
        t0 = time.perf_counter()
        idx = self._next_prompts()
        cond = self.conds.index(torch.tensor(idx, device=self.acc.device))
        ro, _ = rollout(policy, cond, self.latent_shape, cfg.sampler, g, self.generator)
        with torch.no_grad():
            audio = self.pipe.decode(ro.samples, self.duration)
        t1 = time.perf_counter()
        total, valid, rlog = self.score(audio, idx)
        adv = compute_advantages(total, valid, g, cfg.loss.global_std, cfg.loss.adv_eps)
        t2 = time.perf_counter()
        cond_rows = cond.repeat_interleave(g)
        if cfg.algorithm == "grpo":
            stats, nfe_train = self._grpo_update(ro, cond_rows, adv.to(self.acc.device), valid)
        else:
            stats, nfe_train = self._preference_update(ro, cond_rows, total, valid)
        t3 = time.perf_counter()
        self.iter += 1
        ok = valid.bool()
        return {
            "iteration": self.iter, "opt_steps": self.opt_steps, "epoch": self.epoch,
            "reward": float(total[ok].mean()) if ok.any() else float("nan"),
            **{f"reward/{k}": v for k, v in rlog["mean"].items()},
            "n_valid": int(ok.sum()), "n": int(ok.numel()), "window_start": ro.out.window_start,
            "nfe_rollout_per_sample": ro.nfe_per_sample, "nfe_policy_per_sample": nfe_train,
            "time_sampling": t1 - t0, "time_reward": t2 - t1, "time_update": t3 - t2,
            "lr": float(self.scheduler.get_last_lr()[0]), **stats,
        }

    def _grpo_update(self, ro: Rollout, cond_rows: ConditionTokens, adv: Tensor,
                     valid: Tensor) -> tuple[dict[str, float], float]:
        """Eq. 7 over the window steps; one micro-step per (inner epoch, window step, row chunk)."""
        cfg, out = self.cfg, ro.out
        sub = ro.timesteps[1]
        sig = out.sigmas
        n_rows = out.samples.shape[0]
        sums: dict[str, float] = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "ratio": 0.0, "clip_frac": 0.0}
        count = rows_evaluated = micro = 0
        for _ in range(cfg.inner_epochs):
            for j in range(out.window_width):
                for start in range(0, n_rows, cfg.micro_batch):
                    chunk = torch.arange(start, min(start + cfg.micro_batch, n_rows))
                    keep = chunk[valid[chunk]].to(self.acc.device)  # excluded samples take no part
                    weight = 1.0
                    if not keep.numel() and self.harness.world > 1:  # every rank must join each all-reduce:
                        keep, weight = chunk.to(self.acc.device), 0.0  # a zero-weighted backward
                    if keep.numel():
                        c = cond_rows.index(keep)
                        x, x1 = out.latents[keep, j], out.next_latents[keep, j]
                        new = window_log_prob(policy_velocity(self.model, c, cfg.sampler.cfg_scale), x, x1,
                                              sig[j], sig[j + 1], ro.noise_level, sub)
                        ref_mean = None
                        if self.ref is not None and cfg.loss.beta > 0:
                            with torch.no_grad():
                                ref_mean = window_log_prob(policy_velocity(self.ref, c, cfg.sampler.cfg_scale), x,
                                                           x1, sig[j], sig[j + 1], ro.noise_level, sub).mean
                        res = grpo_loss(new.log_prob, out.log_probs[keep, j], adv[keep], cfg.loss.clip_range,
                                        cfg.loss.adv_clip, new.mean, ref_mean, new.std, cfg.loss.beta)
                        self.acc.backward(res.loss * weight / cfg.grad_accum)
                        if weight:
                            rows_evaluated += keep.numel()
                            count += 1
                            for k, v in (("loss", res.loss), ("policy_loss", res.policy), ("kl", res.kl),
                                         ("ratio", res.ratio.mean()), ("clip_frac", res.clip_frac)):
                                sums[k] += float(v.detach())
                    micro += 1
                    if micro % cfg.grad_accum == 0:
                        self._optimizer_step()
        stats = {k: v / max(count, 1) for k, v in sums.items()}
        return stats, rows_evaluated / (cfg.inner_epochs * max(int(valid.sum()), 1))

    def _preference_update(self, ro: Rollout, cond_rows: ConditionTokens, total: Tensor,
                           valid: Tensor) -> tuple[dict[str, float], float]:
        """SFT / RWR / DPO on the final latents of the same groups (conditional velocity, CFG 1)."""
        cfg, g = self.cfg, self.cfg.group_size
        x0 = ro.samples.detach()
        seen = [0]

        def velocity_for(module: nn.Module) -> Callable[[Tensor], Any]:
            def make(rows: Tensor) -> Any:
                if module is not self.ref:
                    seen[0] += rows.numel()
                return policy_velocity(module, cond_rows.index(rows.to(self.acc.device)), 1.0)
            return make

        losses = []
        for k in range(cfg.inner_epochs):
            if cfg.algorithm == "sft":
                loss = sft_loss(velocity_for(self.model), x0, total, valid, g, self.generator)
            elif cfg.algorithm == "rwr":
                loss = rwr_loss(velocity_for(self.model), x0, total, valid, g, cfg.loss.rwr_temperature,
                                self.generator)
            else:
                assert self.ref is not None
                loss = dpo_loss(velocity_for(self.model), velocity_for(self.ref), x0, total, valid, g,
                                cfg.loss.dpo_beta, self.generator)
            if not bool(torch.isfinite(loss)):
                raise PrismAudioError(f"{cfg.algorithm} loss is not finite ({float(loss)}); refusing to update")
            self.acc.backward(loss / cfg.grad_accum)
            losses.append(float(loss.detach()))
            if (k + 1) % cfg.grad_accum == 0:
                self._optimizer_step()
        return {"loss": sum(losses) / len(losses)}, seen[0] / (cfg.inner_epochs * max(int(valid.sum()), 1))

    def _optimizer_step(self) -> None:
        if self.cfg.optim.grad_clip > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.opt_steps += 1
        if self.opt_steps % self.cfg.ema_every == 0:  # official ema.py decay schedule
            self.ema.update(self.opt_steps)

    # -------------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start, start_iter = time.perf_counter(), self.iter
        history: list[dict[str, Any]] = []
        if self.iter < cfg.iterations:
            self.log(f"iteration {self.iter + 1}/{cfg.iterations}: {cfg.prompts_per_iter} prompts x {cfg.group_size} "
                     "rollouts, decode, rewards, update (the first one also warms up) ...")
        while self.iter < cfg.iterations:
            rec = self.iteration()
            history.append(rec)
            left = cfg.iterations - self.iter
            if len(history) == 1 and left:
                took = time.perf_counter() - t_start
                self.log(f"iteration {self.iter} took {_duration(took)}; about {_duration(took * left)} "
                         f"for the {left} left")
            elif left and self.iter % cfg.checkpoint_every == 0:
                rate = (time.perf_counter() - t_start) / len(history)
                self.log(f"about {_duration(rate * left)} left ({left} iterations)")
            if self.iter % cfg.log_every == 0 or self.iter == cfg.iterations:
                self._write_log(rec)
            if self.iter % cfg.checkpoint_every == 0 or self.iter == cfg.iterations:
                self.save()
        elapsed = time.perf_counter() - t_start
        return self._finish(history, (self.iter - start_iter) / max(elapsed, 1e-9))

    def _write_log(self, rec: dict[str, Any]) -> None:
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        keys = ("reward", "loss", "kl", "n_valid", "window_start", "nfe_policy_per_sample", "time_sampling",
                "time_reward", "time_update")
        shown = " ".join(f"{k}={rec[k]:.4g}" for k in keys if k in rec)
        per = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k.startswith("reward/") and v is not None)
        self.log(f"iter {rec['iteration']}/{self.cfg.iterations} {shown} {per}")

    # -------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        h = self.harness
        h.save(step=self.iter, epoch=self.epoch, position=self.position, module=h.unwrap(self.model), ema=self.ema,
               optimizer=self.optimizer, scheduler=self.scheduler, config=self.cfg.to_dict(),
               model_config=self.pipe.config.to_dict(), keep_last=self.cfg.keep_last)

    def _finish(self, history: list[dict[str, Any]], iters_per_s: float) -> dict[str, Any]:
        h = self.harness
        hashes = h.rank_fingerprints(self.model)
        summary: dict[str, Any] = {"iterations": self.iter, "opt_steps": self.opt_steps, "iters_per_s": iters_per_s,
                                   "num_processes": h.world, "weights_hash": hashes[h.rank],
                                   "rank_weight_hashes": hashes, "ranks_in_sync": len(set(hashes)) == 1,
                                   "final": str(self.out / FINAL), "reward_curve": [r["reward"] for r in history]}

        cfg_algo = {"grpo": "GRPO"}.get(self.cfg.algorithm, self.cfg.algorithm.upper())

        def export() -> None:
            p = self.pipe
            from ..pipeline import PrismAudioPipeline

            PrismAudioPipeline(p.config, h.ema_module(self.model, self.ema), p.conditioner, p.vae, p.video_encoder,
                               p.sync_encoder, p.text_encoder).save_pretrained(self.out / FINAL)
            (self.out / "grpo_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            marker = {"algorithm": f"{cfg_algo} ({self.cfg.sampler.mode})", "iterations": self.iter,
                      "base": self.cfg.model, "rewards": self.cfg.rewards}
            (self.out / FINAL / POST_TRAINED).write_text(json.dumps(marker, indent=1) + "\n")
            self.log(f"done: iteration {self.iter}, {self.opt_steps} optimizer steps; EMA model in {self.out / FINAL}")

        h.finish(export)
        return summary


def _cat_conditions(parts: list[ConditionTokens]) -> ConditionTokens:
    out = parts[0]
    for p in parts[1:]:
        out = out.cat(p)
    return out


def grpo(cfg: GRPOConfig, out_dir: str | Path, resume: bool = False, log: Log | None = print_log) -> dict[str, Any]:
    """Run (or continue) one RL post-training run; returns the summary in `grpo_summary.json`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return GRPOTrainer(cfg, out_dir, resume=resume, log=log or (lambda _m: None)).run()
