"""The finetune recipe, top to bottom: setup → train loop → save.

It reads only the resolved Config. Each step is a named method so a reader can follow one run:
  setup_runtime   context, seed, output folders
  setup_data      dataset from train_dataset (MindRecord or tokenized JSON), batch per runner_config
  setup_model     base model + PET transform, then pretrained weights (strict)
  setup_optimizer lr schedule, AdamW on trainable params, the compiled train-step cell(s)
  train           the loop: step, progress, metrics, periodic checkpoints
  save            adapter-only checkpoint (MindFormers names and layout), atomically
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np

from petrun.config import Config
from petrun.errors import UserError

log = logging.getLogger("petrun")


def _callback(cfg: Config, kind: str) -> dict:
    for cb in cfg.get("callbacks") or []:
        if isinstance(cb, dict) and cb.get("type") == kind:
            return cb
    return {}


class FinetuneRecipe:
    def __init__(self, cfg: Config, console=None, rank: int = 0):
        self.cfg = cfg
        self.console = console
        self.rank = rank
        self.summary: dict = {"losses": [], "checkpoints": []}

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict:
        self.setup_runtime()
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()
        self.train()
        return self.summary

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ setup
    def setup_runtime(self) -> None:
        from petrun.parallel.context import set_seed, setup_context
        cfg = self.cfg
        for key, what in (("resume_training", "resuming"), ("do_eval", "evaluation during training"),
                          ("auto_trans_ckpt", "checkpoint transformation")):
            if cfg.get(key):
                raise UserError(f"{what} is not built yet in this version of petrun", key=key,
                                file=cfg.origin(key), fix=f"set {key}: False (or --{key} False)")
        self.device_target = setup_context(cfg)
        self.seed = int(cfg.get("seed", 0) or 0)
        set_seed(self.seed)  # before the model is built: adapter init depends on it
        self.output_dir = Path(cfg.get("output_dir") or "./output")
        self.ckpt_dir = self.output_dir / "checkpoint" / f"rank_{self.rank}"
        self.log_dir = self.output_dir / "log" / f"rank_{self.rank}"
        for d in (self.ckpt_dir, self.log_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create {d} ({e.strerror})", key="output_dir",
                                file=cfg.origin("output_dir"),
                                fix="choose a writable output_dir (--output_dir DIR)") from None
        # The resolved config travels with the checkpoints it produced.
        (self.ckpt_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    def setup_data(self) -> None:
        from petrun.data.loader import build_dataset
        from petrun.models.registry import arch_entry
        cfg = self.cfg
        key = "train_dataset.data_loader.dataset_dir"
        dataset_dir = cfg.get(key)
        if not dataset_dir:
            raise UserError("no training data: the dataset path is empty", key=key,
                            file=cfg.origin(key),
                            fix="pass --train_dataset_dir PATH (a .mindrecord file or folder, or a "
                                "tokenized .jsonl)")
        self.seq_length = int(cfg.get("model.model_config.seq_length"))
        self.batch_size = int(cfg.get("runner_config.batch_size")
                              or cfg.get("train_dataset.batch_size") or 1)
        self.accum = int(cfg.get("runner_config.gradient_accumulation_steps") or 1)
        self.extra_tokens = arch_entry(cfg.get("model.arch.type")).extra_tokens
        self.dataset = build_dataset(
            dataset_dir, seq_length=self.seq_length, batch_size=self.batch_size,
            extra_tokens=self.extra_tokens,
            # The loss always needs targets; data without a labels column trains on input_ids.
            columns=["input_ids", "labels"], shuffle=bool(cfg.get("train_dataset.data_loader.shuffle")),
            seed=int(cfg.get("train_dataset.seed", self.seed) or 0),
            drop_remainder=bool(cfg.get("train_dataset.drop_remainder", True)))
        self.batches_per_epoch = self.dataset.get_dataset_size()
        self.epochs = int(cfg.get("runner_config.epochs") or 1)
        self.steps_per_epoch = self.batches_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise UserError(f"one optimizer step needs {self.accum} batches but an epoch has only "
                            f"{self.batches_per_epoch}", key="runner_config.gradient_accumulation_steps",
                            fix="lower gradient_accumulation_steps or batch_size, or use more data")
        self.total_steps = self.epochs * self.steps_per_epoch
        stop = int(cfg.get("runner_config.stop_step") or 0)
        if stop:
            self.total_steps = min(self.total_steps, stop)
        self.say(f"data: {dataset_dir} — {self.batches_per_epoch} batches of {self.batch_size} × "
                 f"{self.seq_length + self.extra_tokens} tokens per epoch; {self.total_steps} optimizer steps"
                 + (f" (gradient accumulation {self.accum})" if self.accum > 1 else ""))

    def setup_model(self) -> None:
        from petrun.api import PET_PATTERN, build_model, load_checkpoint
        cfg = self.cfg
        reports = []
        self.model = build_model(cfg, device_target=self.device_target, report=reports.append)
        self.pet_report = reports[0] if reports else None
        if self.pet_report is not None:
            self.say(f"{self.pet_report.pet_type}: {self.pet_report.line}")
        else:
            from petrun.pet.base import count_parameters, trainable_line
            self.say("full finetune: " + trainable_line(*count_parameters(self.model)))
        ckpt = cfg.get("load_checkpoint")
        if ckpt:
            result = load_checkpoint(self.model, ckpt, strict=True, allow_missing=(PET_PATTERN,))
            self.say(f"loaded {len(result['loaded'])} tensors from {ckpt}"
                     + (f" ({len(result['missing'])} adapter parameters start fresh)"
                        if result["missing"] else ""))
        else:
            self.say("[yellow]no load_checkpoint: the base model starts from random weights[/yellow]")
        self.trainable = list(self.model.trainable_params())

    def setup_optimizer(self) -> None:
        from petrun.train.lr import schedule
        from petrun.train.optim import build_optimizer
        from petrun.train import step as steps
        cfg = self.cfg
        self.lr = schedule(cfg.get("lr_schedule") or {"type": "constant",
                                                      "learning_rate": cfg.get("optimizer.learning_rate", 1e-5)},
                           self.total_steps)
        self.optimizer = build_optimizer(self.trainable, cfg.get("optimizer") or {}, self.lr)
        wrapper = cfg.get("runner_wrapper") or {}
        scale, update = steps.build_loss_scale(wrapper.get("scale_sense", 1.0))
        clip = float(wrapper.get("max_grad_norm", 1.0))
        use_clip = bool(wrapper.get("use_clip_grad", False))
        self.model.set_train(True)
        if self.accum == 1:
            self.step_cell = steps.TrainStep(self.model, self.optimizer, scale, update, clip, use_clip)
            self.step_cell.set_train(True)
            self.skips_overflow = self.step_cell.skip_on_overflow
        else:
            buffers = steps.make_buffers(self.trainable)
            self.acc_cell = steps.AccumulateStep(self.model, self.optimizer.parameters, buffers, scale, update)
            self.apply_cell = steps.ApplyAccumulated(self.acc_cell, self.optimizer, self.accum, clip, use_clip)
            self.acc_cell.set_train(True)
            self.skips_overflow = self.apply_cell.skip_on_overflow

    # ------------------------------------------------------------------ train loop
    def one_step(self, batches) -> tuple[float, bool, float, float]:
        """One optimizer step over `accum` micro-batches → (loss, overflow, loss_scale, grad_norm)."""
        if self.accum == 1:
            ids, labels = batches[0]
            loss, overflow, scale, norm = self.step_cell(ids, labels)
            return float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy()), float(norm.asnumpy())
        losses = [float(self.acc_cell(ids, labels)[0].asnumpy()) for ids, labels in batches]
        overflow, scale, norm = self.apply_cell()
        return float(np.mean(losses)), bool(overflow.asnumpy()), float(scale.asnumpy()), float(norm.asnumpy())

    def train(self) -> None:
        from petrun.train.callbacks import MetricsLog, Progress
        cfg = self.cfg
        monitor = _callback(cfg, "CheckpointMonitor")
        self.prefix = monitor.get("prefix", "petrun")
        save_every = int(monitor.get("save_checkpoint_steps") or 0)
        self.keep = int(monitor.get("keep_checkpoint_max") or 5)
        every = int(_callback(cfg, "MFLossMonitor").get("per_print_times") or 1)
        progress = Progress(self.console, self.total_steps, every=every, enabled=self.rank == 0)
        metrics = MetricsLog(self.log_dir / "metrics.jsonl")
        tokens_per_step = self.batch_size * self.seq_length * self.accum
        iterator = self.dataset.create_tuple_iterator(num_epochs=self.epochs)
        step, times, start = 0, [], time.perf_counter()
        epoch = step_in_epoch = 0
        try:
            for epoch in range(1, self.epochs + 1):
                step_in_epoch, group = 0, []
                for batch in iterator:  # MindSpore's iterator yields one epoch per for-loop
                    group.append(batch)
                    if len(group) < self.accum:
                        continue
                    t0 = time.perf_counter()
                    loss, overflow, scale, norm = self.one_step(group)
                    dt = time.perf_counter() - t0
                    group = []
                    step += 1
                    step_in_epoch += 1
                    times.append(dt)
                    if not np.isfinite(loss) or (overflow and not self.skips_overflow):
                        raise UserError(f"loss {loss}, gradient norm {norm} at step {step}: training "
                                        "diverged (no checkpoint written for this step)",
                                        key="lr_schedule.learning_rate",
                                        fix="lower the learning rate, enable use_clip_grad, or use "
                                            "a dynamic loss scale for float16")
                    lr = float(self.lr[min(step - 1, len(self.lr) - 1)])
                    self.summary["losses"].append(loss)
                    progress.update(step, epoch, loss, lr, tokens_per_step / dt, norm, overflow)
                    metrics.write({"step": step, "total_steps": self.total_steps, "epoch": epoch,
                                   "loss": loss, "lr": lr, "grad_norm": norm, "overflow": overflow,
                                   "loss_scale": scale, "step_time_s": round(dt, 4),
                                   "tokens_per_second": round(tokens_per_step / dt, 1),
                                   "elapsed_s": round(time.perf_counter() - start, 2)})
                    if save_every and step % save_every == 0:
                        self.save(epoch, step_in_epoch, step)
                    if step >= self.total_steps:
                        break
                if step >= self.total_steps:
                    break
            if not self.summary["checkpoints"] or self.summary["checkpoints"][-1]["step"] != step:
                self.save(epoch, step_in_epoch, step)
        finally:
            progress.close()
            metrics.close()
        steady = times[1:] or times
        median = statistics.median(steady) if steady else 0.0
        self.summary.update(steps=step, wall_s=time.perf_counter() - start,
                            first_step_s=times[0] if times else 0.0, median_step_s=median,
                            tokens_per_second=tokens_per_step / median if median else 0.0)
        last = self.summary["checkpoints"][-1]["path"] if self.summary["checkpoints"] else "-"
        self.say(f"done: {step} steps, loss {self.summary['losses'][0]:.4f} → "
                 f"{self.summary['losses'][-1]:.4f}, {self.summary['tokens_per_second']:,.0f} tok/s "
                 f"(median step {median * 1000:.0f} ms, first step {self.summary['first_step_s']:.1f} s "
                 f"incl. compile); adapter: {last}")

    # ------------------------------------------------------------------ save
    def save(self, epoch: int, step_in_epoch: int, step: int) -> Path:
        """Adapter-only (trainable) weights as <prefix>_rank_<r>-<epoch>_<step>.ckpt, atomically."""
        from petrun.ckpt.io import save_params
        name = f"{self.prefix}_rank_{self.rank}-{epoch}_{step_in_epoch}.ckpt"
        path = save_params(self.trainable, self.ckpt_dir / name,
                           append={"epoch_num": epoch, "step_num": step})
        self.summary["checkpoints"].append({"path": str(path), "step": step})
        if _callback(self.cfg, "CheckpointMonitor").get("save_network_params"):
            net_dir = self.output_dir / "checkpoint_network" / f"rank_{self.rank}"
            save_params(list(self.model.get_parameters()),
                        net_dir / f"{self.prefix}_rank_{self.rank}-network-{epoch}_{step_in_epoch}.ckpt")
        self._prune()
        return path

    def _prune(self) -> None:
        """keep_checkpoint_max: drop the oldest of this run's checkpoints beyond the limit."""
        while len(self.summary["checkpoints"]) > self.keep:
            old = Path(self.summary["checkpoints"].pop(0)["path"])
            if old.exists():
                old.unlink()
