"""The finetune recipe, top to bottom: setup → (resume) → train loop → save.

It reads only the resolved Config. Each step is a named method so a reader can follow one run:
  setup_runtime   context, seed, output folders, which checkpoint to resume from (if any)
  setup_data      dataset from train_dataset (MindRecord or tokenized JSON), batch per runner_config
  setup_model     base model + PET transform, then pretrained weights (strict)
  setup_optimizer lr schedule, AdamW on trainable params, the compiled train-step cell(s)
  restore         resume: adapter weights, optimizer moments, loss scale, global step (and with it
                  the lr position), RNG state and the data cursor, all from one checkpoint
  record_run      output_dir/run_manifest.json: config, versions, data hashes, seed, command line
  train           the loop: step, progress, metrics, periodic checkpoints, stop on SIGTERM/SIGINT
                  (train/resume.py); each step checked by train/faults.py (bad batch, bad update,
                  collapse); the summary and next commands at the end (train/report.py)
  save            one checkpoint: adapter (MindFormers names and layout) + training state +
                  manifest + `latest`, crash-safe (ckpt/store.py), then keep-last-N

Resuming is step-exact: the remaining steps of a resumed run see the same batches in the same
order with the same optimizer state as an uninterrupted run, so their losses match. One limit:
MindSpore 2.10 keeps the random state of its CPU dropout kernels inside the kernels, where no API
reaches it (get_rng_state covers only the generator-based ops, which have no CPU kernels), so with
dropout > 0 the masks after a resume differ from an uninterrupted run's. The recipe says so.
"""
from __future__ import annotations

import json
import logging
import re
import signal
import time
import uuid
from pathlib import Path

import numpy as np

from petrun.ckpt import layout
from petrun.config import Config
from petrun.errors import UserError
from petrun.train import faults, resume

log = logging.getLogger("petrun")
# Train-cell parameters that are not resume state: the lr schedule array is rebuilt from the
# config, and accumulation buffers are zero at every optimizer-step boundary (where we save).
_NOT_STATE = re.compile(r"^(learning_rate|seen_overflow)$|^accu_grads\.")

def _callback(cfg: Config, kind: str) -> dict:
    return next((cb for cb in cfg.get("callbacks") or []
                 if isinstance(cb, dict) and cb.get("type") == kind), {})


class FinetuneRecipe:
    def __init__(self, cfg: Config, console=None, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.console = console
        self.rank = rank
        self.world_size = world_size  # data-parallel ranks; each reads its shard of every epoch
        self.summary: dict = {"losses": [], "checkpoints": []}

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict:
        from petrun.preflight import run_setting_errors
        self.lock = self.runlog = None
        self._pending: list[tuple[str, str]] = []   # lines said before the run's logs open
        self.resume_from = None
        try:
            refused = run_setting_errors(self.cfg, "finetune")   # for --skip-preflight, the API
            if refused:
                raise refused[0]
            with resume.interrupt_setup():   # a signal stops the setup at once: nothing saved yet
                self.setup_runtime()
                self.setup_data()
                resume.pause_for_tests("setup_model", self.say)
                self.setup_model()
            # From here a signal waits for a safe point: the first step, or a step and its save.
            with resume.StopOnSignal(self.say) as self.stop:
                self.setup_optimizer()
                self.restore()
                self._replace_earlier_run()
                self.record_run()
                self.train()
        except KeyboardInterrupt as e:   # Ctrl-C, or resume.SetupInterrupted for SIGTERM
            raise resume.stopped_before_training(getattr(e, "signum", signal.SIGINT),
                                                 self.resume_from, self.say, self.summary) from None
        except BaseException as e:
            if self.runlog is not None:
                self.runlog.failed(e)   # error.log: the message, or an internal error's traceback
            raise
        finally:
            if self.runlog is not None:
                self.runlog.close()
            if self.lock is not None:
                self.lock.release()
        return self.summary

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)
        if getattr(self, "runlog", None) is not None:
            self.runlog.info(text)
        else:
            getattr(self, "_pending", []).append(("info", text))

    def warn(self, text: str) -> None:
        if getattr(self, "runlog", None) is not None:
            self.runlog.warning(text)
        else:
            getattr(self, "_pending", []).append(("warning", text))
        if self.console is None:
            log.warning(text)
            return
        from rich.markup import escape
        self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False,
                           soft_wrap=True)

    # ------------------------------------------------------------------ setup
    def setup_runtime(self) -> None:
        from petrun.ckpt.store import CheckpointFolder, find_resume_checkpoint
        from petrun.parallel.context import set_seed, setup_context
        cfg = self.cfg
        self.device_target = setup_context(cfg)
        # Under a launcher this joins the job (the scheduler process never returns from it), so
        # nothing above may write files. Rank and world decide data shards and rank_N/ folders.
        from petrun.parallel.context import init_distributed
        self.rank, self.world_size = init_distributed(cfg)
        self.seed = int(cfg.get("seed", 0) or 0)
        # Before the model is built: adapter init (and, without load_checkpoint, the base
        # weights a resumed run must rebuild identically) depend on it.
        set_seed(self.seed)
        self.output_dir = Path(cfg.get("output_dir") or "./output")
        self.ckpt_dir = layout.checkpoint_dir(self.output_dir, self.rank)
        self.log_dir = layout.log_dir(self.output_dir, self.rank)
        for d in (self.ckpt_dir, self.log_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create {d} ({e.strerror})", key="output_dir",
                                file=cfg.origin("output_dir"),
                                fix="choose a writable output_dir (--output_dir DIR)") from None
        # Before anything in the folder is touched: a second run into it stops here.
        from petrun.ckpt.lock import RunLock
        self.lock = RunLock(self.output_dir, self.rank).acquire(origin=cfg.origin("output_dir"))
        self.store = CheckpointFolder(self.ckpt_dir)
        self.store.remove_leftovers()  # temporary files of a save that was killed midway
        wanted = cfg.get("resume_training")
        if wanted not in (None, False, ""):
            self.resume_from = find_resume_checkpoint(
                wanted, output_dir=self.output_dir, rank=self.rank, warn=self.warn)
            if self.world_size > 1:
                self.resume_from = resume.agree_on_step(self.resume_from, self.store, self.rank,
                                                        explicit=wanted is not True, warn=self.warn)
            if self.resume_from is None:
                self.warn(f"resume requested, but {self.ckpt_dir} holds no checkpoint yet: "
                          "starting from step 0")
        self._earlier_files = None if wanted not in (None, False, "") else \
            faults.claim_output(cfg, self.store, self.output_dir, self.log_dir, self.rank)
        self.run_id = (self.resume_from.manifest.get("run_id") if self.resume_from else None) \
            or uuid.uuid4().hex[:12]

    def _replace_earlier_run(self) -> None:
        """Every check passed: --overwrite removes the earlier run now (faults.replace_earlier);
        then this run's text logs open (info.log / error.log of this rank)."""
        from petrun.train.runlog import RunLog
        note = (faults.replace_earlier(self.store, self._earlier_files, self.output_dir)
                if self._earlier_files is not None else None)
        self.runlog = RunLog(self.log_dir, self.rank)
        for level, text in self._pending:
            getattr(self.runlog, level)(text)
        self._pending.clear()
        if note:
            self.say(note)

    def setup_data(self) -> None:
        from petrun.atomic import describe_file
        from petrun.data.loader import open_dataset
        from petrun.data.ondemand import RawText
        from petrun.parallel.context import data_shard
        from petrun.models.registry import arch_entry, build_config, embedding_rows
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
        # Data parallel splits samples over ranks; semi-auto full_batch gives each rank all of them.
        self.num_shards, self.shard_id = data_shard(cfg)
        from petrun.parallel.context import loader_batch
        self.batch_size = loader_batch(cfg, self.batch_size)
        self.extra_tokens = arch_entry(cfg.get("model.arch.type")).extra_tokens
        self.data = open_dataset(
            dataset_dir, seq_length=self.seq_length, batch_size=self.batch_size,
            extra_tokens=self.extra_tokens,
            # The loss always needs targets; data without a labels column trains on input_ids.
            columns=["input_ids", "labels"], shuffle=bool(cfg.get("train_dataset.data_loader.shuffle")),
            seed=int(cfg.get("train_dataset.seed", self.seed) or 0),
            num_shards=self.num_shards, shard_id=self.shard_id,
            drop_remainder=bool(cfg.get("train_dataset.drop_remainder", True)),
            raw=RawText.from_config(cfg, "train_dataset"),
            packing=bool(cfg.get("train_dataset.packing")),
            bucketing=bool(cfg.get("train_dataset.bucketing")),
            bucket_multiple=cfg.get("train_dataset.bucket_multiple"),
            pad_id=int(cfg.get("model.model_config.pad_token_id") or 0),
            vocab_size=embedding_rows(build_config(cfg.get("model"))))
        if self.data.packed is not None:
            self.say(self.data.packed.summary())
        elif self.data.bucketing:
            self.say(f"bucketing: batches of similar length, trimmed to multiples of "
                     f"{self.data.bucket_multiple} tokens")
        self.data_files = [describe_file(f) for f in self.data.files]
        self.batches_per_epoch = self.data.batches_per_epoch
        self.epochs = int(cfg.get("runner_config.epochs") or 1)
        self.steps_per_epoch = self.batches_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise UserError(f"one optimizer step needs {self.accum} batches but an epoch has only "
                            f"{self.batches_per_epoch}", key="runner_config.gradient_accumulation_steps",
                            fix="lower gradient_accumulation_steps or batch_size, or use more data")
        # The LR curve always spans the configured epochs: stop_step ends a run early without
        # reshaping the schedule, so a stopped run resumed later follows the same curve.
        self.planned_steps = self.epochs * self.steps_per_epoch
        stop = int(cfg.get("runner_config.stop_step") or 0)
        self.total_steps = min(self.planned_steps, stop) if stop else self.planned_steps
        self.say(f"data: {dataset_dir} — {self.batches_per_epoch} batches of {self.batch_size} × "
                 f"{self.seq_length + self.extra_tokens} tokens per epoch; {self.total_steps} optimizer steps"
                 + (f" (gradient accumulation {self.accum})" if self.accum > 1 else ""))
        self.setup_eval()

    def setup_eval(self) -> None:
        """do_eval: eval_dataset opened and checked now, evaluated every eval_step_interval steps
        and/or every eval_epoch_interval epochs (MindFormers' keys; -1 or 0 turns one off; that
        one of them is on, run() checked with the pre-flight's rule)."""
        cfg = self.cfg
        self.evaluator = None
        self.eval_every_steps = self.eval_every_epochs = 0
        if not cfg.get("do_eval"):
            return
        from petrun.infer.eval import Evaluator
        self.evaluator = Evaluator.from_config(cfg)
        self.eval_every_steps = max(0, int(cfg.get("eval_step_interval") or 0))
        self.eval_every_epochs = max(0, int(cfg.get("eval_epoch_interval") or 0))
        when = [f"every {n} {unit}" for n, unit in ((self.eval_every_steps, "steps"),
                                                     (self.eval_every_epochs, "epochs")) if n]
        self.say(f"eval: {cfg.get('eval_dataset.data_loader.dataset_dir')} "
                 f"{' and '.join(when)}")

    def evaluate(self, step: int, epoch: int, metrics) -> None:
        result = self.evaluator.run(self.model)
        self.summary.setdefault("evals", []).append({"step": step, "epoch": epoch, **result.as_dict()})
        metrics.write({"event": "eval", "step": step, "epoch": epoch, "eval_loss": result.loss,
                       "eval_perplexity": result.perplexity, "eval_tokens": result.tokens,
                       "eval_seconds": round(result.seconds, 2)})
        if self.rank == 0:
            self.say(f"step {step}: {result.line()}")

    def setup_model(self) -> None:
        from petrun.build import build_model, load_pretrained
        cfg = self.cfg
        reports = []
        self.model = build_model(cfg, device_target=self.device_target, report=reports.append)
        self.pet_report = reports[0] if reports else None
        if self.pet_report is not None:
            self.say(f"{self.pet_report.pet_type}: {self.pet_report.line}")
        else:
            from petrun.pet.base import count_parameters, trainable_line
            self.say("full finetune: " + trainable_line(*count_parameters(self.model)))
        # auto_trans_ckpt: a rank_N/ source is resharded (or merged) to this job's layout first.
        self.loaded_files = load_pretrained(self.model, cfg, rank=self.rank, world=self.world_size,
                                            output_dir=self.output_dir, say=self.say)
        if not self.loaded_files:
            self.say("[yellow]no load_checkpoint: the base model starts from random weights[/yellow]")
        self.trainable = list(self.model.trainable_params())

    def setup_optimizer(self) -> None:
        from petrun.train.lr import schedule
        from petrun.train.optim import build_optimizer
        from petrun.train import step as steps
        cfg = self.cfg
        self.lr = schedule(cfg.get("lr_schedule") or {"type": "constant",
                                                      "learning_rate": cfg.get("optimizer.learning_rate", 1e-5)},
                           self.planned_steps)
        self.optimizer = build_optimizer(self.trainable, cfg.get("optimizer") or {}, self.lr)
        wrapper = cfg.get("runner_wrapper") or {}
        from petrun.parallel.context import grad_reducer, pipeline_wrap
        reducer = grad_reducer(self.optimizer.parameters)  # None unless data parallel
        self.model.set_train(True)
        net = steps.PackedInputs(self.model) if self.data.packed is not None else self.model
        net, pipeline_reducer = pipeline_wrap(cfg, net, self.optimizer.parameters)
        self.one_step = steps.OptimizerStep(net, self.optimizer, self.trainable, self.accum,
                                            wrapper.get("scale_sense", 1.0),
                                            float(wrapper.get("max_grad_norm", 1.0)),
                                            bool(wrapper.get("use_clip_grad", False)),
                                            grad_reducer=pipeline_reducer or reducer)
        self.train_cell = self.one_step.cell

    def state_params(self) -> list:
        """What resuming needs besides the weights: optimizer moments (adam_m.*, adam_v.*),
        global_step (the lr position), loss_scale and the dynamic loss-scale counters."""
        network = {p.name for p in self.model.get_parameters()}
        return [p for p in self.train_cell.get_parameters()
                if p.name not in network and not _NOT_STATE.match(p.name)]

    # ------------------------------------------------------------------ resume
    def restore(self) -> None:
        """Put the run where the checkpoint left it (a no-op for a fresh run): train/resume.py."""
        self.start_step, self.start_epoch, self.skip_batches = 0, 1, 0
        self.last_saved_step: int | None = None
        ckpt = self.resume_from
        if ckpt is None:
            return
        m = ckpt.manifest
        resume.check_compatible(m, ckpt.manifest_path, cfg=self.cfg, world_size=self.world_size,
                                data_files=self.data_files, order_digest=self._order_digest,
                                warn=self.warn)
        resume.load_state((("adapter", ckpt.adapter, self.trainable, self.model),
                           ("training state", ckpt.state, self.state_params(), self.train_cell)))
        resume.restore_rng(m.get("rng") or {})
        at = resume.Progress.from_manifest(m, self.steps_per_epoch)
        self.start_step, self.start_epoch, self.skip_batches = at.step, at.epoch, at.skip_batches
        self.last_saved_step = self.start_step
        self.say(f"resumed from {ckpt.adapter} (step {self.start_step}, epoch {self.start_epoch}"
                 + (f", {self.skip_batches} batches of it already trained" if self.skip_batches else "")
                 + f"); loss scale {float(m.get('loss_scale') or 1.0):g}")
        resume.warn_dropout(self.model, self.warn)

    def _order_digest(self, epoch: int) -> str:
        import hashlib
        return hashlib.sha256(np.ascontiguousarray(self.data.order(epoch), dtype=np.int64)
                              .tobytes()).hexdigest()[:16]

    # ------------------------------------------------------------------ run manifest
    def record_run(self) -> None:
        """Written only once everything checked out, so a refused start changes no file."""
        from petrun.atomic import describe_file, write_text_atomic
        from petrun.ckpt.load import checkpoint_files
        from petrun.ckpt.run_manifest import record_invocation
        cfg = self.cfg
        # The resolved config travels with the checkpoints it produces (each manifest has it too).
        write_text_atomic(self.ckpt_dir / layout.CONFIG_NAME, cfg.to_yaml())
        if self.rank != 0:
            return
        # Base weights can be tens of GB: pinned by size, not hashed at every start.
        base_files = [describe_file(f, digest=False) for path in self.loaded_files
                      for f in checkpoint_files(path)]
        resumed = ({"checkpoint": str(self.resume_from.adapter), "step": self.start_step}
                   if self.resume_from else None)
        record_invocation(self.output_dir, {
            "run_id": self.run_id, "world_size": self.world_size, "seed": self.seed,
            "data_seed": self.data.seed, "shuffle": self.data.shuffle, "data_files": self.data_files,
            "load_checkpoint": base_files, "resumed_from": resumed, "config_hash": cfg.hash(),
            "config": json.loads(json.dumps(cfg.data, default=str))})

    # ------------------------------------------------------------------ train loop
    def train(self) -> None:
        from petrun.train import step as steps
        from petrun.train.callbacks import MetricsLog, Progress
        cfg = self.cfg
        monitor = _callback(cfg, "CheckpointMonitor")
        self.prefix = monitor.get("prefix", "petrun")
        save_every = int(monitor.get("save_checkpoint_steps") or 0)
        self.keep = int(monitor.get("keep_checkpoint_max") or 5)
        self.scale = None
        if self.start_step >= self.total_steps:
            self.say(f"nothing to train: the checkpoint is at step {self.start_step} of "
                     f"{self.total_steps} (raise runner_config.epochs or stop_step to train further)")
            self.summary.update(steps=self.start_step, wall_s=0.0, first_step_s=0.0,
                                median_step_s=0.0, tokens_per_second=0.0)
            return
        every = int(_callback(cfg, "MFLossMonitor").get("per_print_times") or 1)
        progress = Progress(self.console, self.total_steps, every=every, enabled=self.rank == 0)
        mirrors = ()
        if cfg.get("tensorboard.tensorboard_dir"):
            from petrun.train.tensorboard import TensorBoardLog
            mirrors = (TensorBoardLog(cfg.get("tensorboard"), self.rank, cfg.to_yaml(),
                                      self.run_id),)
        stop = self.stop
        metrics = MetricsLog(self.log_dir / layout.METRICS_NAME, run_id=self.run_id,
                             resume_step=self.start_step if self.resume_from else None,
                             mirrors=mirrors)
        if self.resume_from is not None:
            metrics.write({"event": "resume", "step": self.start_step,
                           "checkpoint": str(self.resume_from.adapter)})
        # The parameters' forward pass, no update (ranks could not agree on its verdict).
        probe = None if cfg.get("use_parallel") else faults.Probe(
            steps.PackedInputs(self.model) if self.data.packed is not None else self.model, stop)
        self.watch = faults.Watch(cfg, self.store, self.run_id, probe=probe, warn=self.warn,
                                  start_step=self.start_step,
                                  samples=lambda epoch, at: faults.batch_rows(
                                      self.data, epoch, (at - 1) * self.accum, self.accum,
                                      self.batch_size))
        step, times, token_counts, start = self.start_step, [], [], time.perf_counter()
        epoch = step_in_epoch = 0
        try:
            for epoch in range(self.start_epoch, self.epochs + 1):
                skip = self.skip_batches if epoch == self.start_epoch else 0
                step_in_epoch, group = skip // self.accum, []
                for batch in self.data.epoch(epoch, skip).create_tuple_iterator(num_epochs=1):
                    group.append(batch)
                    if len(group) < self.accum:
                        continue
                    # model input tokens (bucketing trims batches, so count each one)
                    step_tokens = sum(int(b[0].shape[0]) * (int(b[0].shape[1]) - self.extra_tokens)
                                      for b in group)
                    for b in group:
                        self.data.check_batch(b, f"a batch of step {step + 1}")
                    if step == self.start_step:   # stops here after a signal during setup
                        stop.before_training(self.resume_from, self.summary)
                    t0 = time.perf_counter()
                    stop.in_step = True
                    loss, overflow, scale, norm = self.one_step(group)
                    dt = time.perf_counter() - t0
                    step += 1
                    step_in_epoch += 1
                    stop.reclaim()   # between steps, Ctrl-C reaches us as SIGINT
                    stop.in_step = False
                    self.scale = scale
                    record = {"step": step, "total_steps": self.total_steps, "epoch": epoch}
                    if self.watch.after_step(step, epoch, step_in_epoch, group, loss, norm,
                                             overflow, self.one_step.loss_scaled, self.trainable):
                        times.append(dt)
                        token_counts.append(step_tokens)
                        lr = float(self.lr[min(step - 1, len(self.lr) - 1)])
                        self.summary["losses"].append(loss)
                        progress.update(step, epoch, loss, lr, step_tokens / dt, norm, overflow)
                        metrics.write({**record, "loss": loss, "lr": lr, "grad_norm": norm,
                                       "overflow": overflow, "loss_scale": scale,
                                       "step_time_s": round(dt, 4), "tokens": step_tokens,
                                       "tokens_per_second": round(step_tokens / dt, 1),
                                       "elapsed_s": round(time.perf_counter() - start, 2)})
                        self.watch.collapse(step, loss, norm)
                    else:   # a bad batch: no update, no loss to plot
                        metrics.write({**record, "event": "skipped", "reason": "bad batch",
                                       "loss_value": str(loss), "grad_norm_value": str(norm)})
                    group = []
                    if save_every and step % save_every == 0:
                        self.save(epoch, step_in_epoch, step)
                    epoch_end = step_in_epoch == self.steps_per_epoch
                    if self.evaluator is not None and (
                            (self.eval_every_steps and step % self.eval_every_steps == 0)
                            or (self.eval_every_epochs and epoch_end
                                and epoch % self.eval_every_epochs == 0)):
                        self.evaluate(step, epoch, metrics)
                    if stop.signum is not None:
                        if self.last_saved_step != step:
                            self.save(epoch, step_in_epoch, step)
                        raise stop.stopped_after(step, self.total_steps, self.summary)
                    if step >= self.total_steps:
                        break
                if step >= self.total_steps:
                    break
            if self.last_saved_step != step:
                self.save(epoch, step_in_epoch, step)
            from petrun.train.report import measure_memory
            memory = measure_memory(self.cfg, metrics, self.summary, self.say)
        finally:
            progress.close()
            metrics.close()
        from petrun.train.report import finish
        finish(self.cfg, self.summary, step=step, times=times, token_counts=token_counts,
               wall_s=time.perf_counter() - start, memory=memory, rank=self.rank,
               log_dir=self.log_dir, ckpt_dir=self.ckpt_dir, say=self.say, warn=self.warn)

    # ------------------------------------------------------------------ save
    def save(self, epoch: int, step_in_epoch: int, step: int) -> Path:
        """One checkpoint (ckpt/store.py): <prefix>_rank_<r>-<epoch>_<step>.ckpt with the adapter in
        MindFormers' layout, its training state and manifest; then keep_checkpoint_max."""
        from petrun.ckpt.io import save_params
        from petrun.ckpt.store import checkpoint_stem
        stem = checkpoint_stem(self.prefix, self.rank, epoch, step_in_epoch)
        kept = (f"the newest checkpoint (step {self.last_saved_step}) is intact"
                if self.last_saved_step is not None else "no checkpoint was saved yet")
        self.watch.before_save(step, self.trainable)   # inf/NaN parameters are never saved
        faults.recreate_checkpoint_dir(self.cfg, self.ckpt_dir, step, self.warn)
        manifest = resume.progress_record(
            self.cfg, step=step, epoch=epoch, step_in_epoch=step_in_epoch, accum=self.accum,
            consumed_samples=step * self.accum * self.batch_size * self.num_shards,
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, rank=self.rank,
            world_size=self.world_size, run_id=self.run_id, loss_scale=self.scale,
            chat_template=self.data.info.get("template"),   # read by infer/chat.model_template
            data={"files": self.data_files, "num_samples": self.data.num_samples,
                  "seed": self.data.seed, "shuffle": self.data.shuffle,
                  "order_sha256": self._order_digest(epoch)})
        try:
            ckpt = self.store.save(stem, adapter=self.trainable, state=self.state_params(),
                                   append={"epoch_num": epoch, "step_num": step}, manifest=manifest)
        except UserError as e:
            raise UserError(f"checkpoint of step {step} not saved: {e.message}; {kept}",
                            file=e.file, key=e.key, fix=e.fix) from None
        self.last_saved_step = step
        self.summary["checkpoints"].append({"path": str(ckpt.adapter), "step": step})
        if _callback(self.cfg, "CheckpointMonitor").get("save_network_params"):
            net_dir = layout.network_dir(self.output_dir, self.rank)
            save_params(list(self.model.get_parameters()),
                        net_dir / f"{self.prefix}_rank_{self.rank}-network-{epoch}_{step_in_epoch}.ckpt")
        removed = set(self.store.prune(self.keep, self.run_id))
        self.summary["checkpoints"] = [c for c in self.summary["checkpoints"]
                                       if Path(c["path"]).stem not in removed]
        return ckpt.adapter
