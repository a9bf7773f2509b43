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
import statistics
import time
import uuid
from pathlib import Path

import numpy as np

from petrun.ckpt import layout
from petrun.config import Config
from petrun.errors import Interrupted, UserError
from petrun.train import resume

log = logging.getLogger("petrun")
# Steps in a row with a gradient norm of exactly 0 that mean training has collapsed.
COLLAPSE_STEPS = 3


def nonfinite_count(params) -> int:
    """inf/NaN values in MindSpore Parameters (cast to fp32 first: numpy has no bfloat16)."""
    import mindspore as ms
    bad = 0
    for p in params:
        value = p.value() if p.dtype in (ms.float32, ms.float64) else p.value().astype(ms.float32)
        bad += int(np.count_nonzero(~np.isfinite(value.asnumpy())))
    return bad

# Train-cell parameters that are not resume state: the lr schedule array is rebuilt from the
# config, and accumulation buffers are zero at every optimizer-step boundary (where we save).
_NOT_STATE = re.compile(r"^(learning_rate|seen_overflow)$|^accu_grads\.")

def _callback(cfg: Config, kind: str) -> dict:
    for cb in cfg.get("callbacks") or []:
        if isinstance(cb, dict) and cb.get("type") == kind:
            return cb
    return {}


class FinetuneRecipe:
    def __init__(self, cfg: Config, console=None, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.console = console
        self.rank = rank
        self.world_size = world_size  # data-parallel ranks; each reads its shard of every epoch
        self.summary: dict = {"losses": [], "checkpoints": []}

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict:
        self.lock = self.runlog = None
        self._pending: list[tuple[str, str]] = []   # lines said before the run's logs open
        try:
            self.setup_runtime()
            self.setup_data()
            self.setup_model()
            self.setup_optimizer()
            self.restore()
            self._replace_earlier_run()
            self.record_run()
            self.train()
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
        self.resume_from = None
        if wanted not in (None, False, ""):
            self.resume_from = find_resume_checkpoint(
                wanted, output_dir=self.output_dir, rank=self.rank, warn=self.warn)
            if self.world_size > 1:
                self.resume_from = self._agree_on_resume_step(self.resume_from, explicit=wanted is not True)
            if self.resume_from is None:
                self.warn(f"resume requested, but {self.ckpt_dir} holds no checkpoint yet: "
                          "starting from step 0")
        else:
            self._claim_output()
        self.run_id = (self.resume_from.manifest.get("run_id") if self.resume_from else None) \
            or uuid.uuid4().hex[:12]

    def _claim_output(self) -> None:
        """A new run into a folder that holds another run's checkpoints or metrics would mix with
        them (the metrics of both in one file, `latest` of either): refused unless the user says
        continue (--resume) or replace (--overwrite, which removes that run's files as a set,
        once every check of this run has passed: a refused run loses nothing)."""
        self._earlier_files = None
        earlier = self.store.checkpoints()
        logs = [self.log_dir / name for name in (layout.METRICS_NAME, "training.png", "info.log",
                                                 "error.log")]
        tb = self.cfg.get("tensorboard.tensorboard_dir")
        if tb:
            logs += sorted((Path(tb) / f"rank_{self.rank}").glob("events.out.tfevents.*"))
        metrics = logs[0]
        if not earlier and not (metrics.is_file() and metrics.stat().st_size):
            return
        what = (f"{len(earlier)} checkpoint(s), the newest of step {earlier[0].step}" if earlier
                else f"the metrics {metrics}")
        if not self.cfg.get("overwrite_output_dir"):
            raise UserError(f"{self.output_dir} holds another run ({what}); a new run into it "
                            "would mix its checkpoints and metrics with that run's",
                            key="output_dir", file=self.cfg.origin("output_dir"),
                            fix="add --resume to continue that run, --overwrite to replace it, or "
                                "choose another --output_dir")
        self._earlier_files = logs

    def _replace_earlier_run(self) -> None:
        """Every check passed: --overwrite removes the earlier run now; then this run's text
        logs open (info.log / error.log of this rank)."""
        from petrun.train.runlog import RunLog
        if getattr(self, "_earlier_files", None) is not None:
            removed = self.store.remove_all()
            for f in self._earlier_files:
                f.unlink(missing_ok=True)
            note = (f"--overwrite: removed the earlier run from {self.output_dir} ({removed} "
                    "checkpoint(s) and its metrics)")
        else:
            note = None
        self.runlog = RunLog(self.log_dir, self.rank)
        for level, text in self._pending:
            getattr(self.runlog, level)(text)
        self._pending.clear()
        if note:
            self.say(note)

    def _agree_on_resume_step(self, mine, *, explicit: bool):
        """Data-parallel ranks must resume from the same step, or their AllReduces pair up
        different steps. A kill can land while one rank has renamed its newest checkpoint into
        place and another has not: then every rank resumes from the newest step all of them hold."""
        from petrun.parallel.context import gather_ints
        steps = [s[0] for s in gather_ints([mine.step if mine is not None else -1])]
        if len(set(steps)) == 1:
            return mine
        table = ", ".join(f"rank {r}: {'none' if s < 0 else f'step {s}'}" for r, s in enumerate(steps))
        if explicit:
            raise UserError(f"the ranks would resume from different steps ({table})",
                            key="resume_training",
                            fix="pass --resume with an output_dir (each rank picks its rank_N folder), "
                                "or checkpoints of one step for every rank")
        agreed = min(steps)
        if agreed < 0:
            self.warn(f"resume: not every rank holds a checkpoint ({table}); all start from step 0")
            return None
        same = [c for c in self.store.checkpoints() if c.step == agreed and c.problem() is None]
        if not same:
            raise UserError(f"rank {self.rank} has no intact checkpoint of step {agreed}, the newest "
                            f"step every rank holds ({table})", file=str(self.ckpt_dir),
                            key="resume_training",
                            fix="raise keep_checkpoint_max so ranks keep a common step, or start "
                                "a new run without --resume")
        if mine.step != agreed:
            self.warn(f"resume: rank {self.rank} uses its step-{agreed} checkpoint, the newest step "
                      f"every rank holds ({table})")
        return same[0]

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
            raw=RawText.from_config(cfg, "train_dataset"), packing=self._packing(),
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

    def _packing(self) -> bool:
        cfg = self.cfg
        if not cfg.get("train_dataset.packing"):
            return False
        from petrun.pet.config import method
        pet = (cfg.get("model.model_config.pet_config") or {}).get("pet_type")
        if (method(pet) is not None and not method(pet).packing) or \
                "Ptuning2" in str(cfg.get("model.arch.type")):
            raise UserError(f"packing is not supported with pet_type {pet}: its virtual tokens or "
                            "key/value prefix belong to one sample, not to a packed row",
                            key="train_dataset.packing", file=cfg.origin("train_dataset.packing"),
                            fix="set train_dataset.packing: False (or use LoRA, IA3, adapters or "
                                "a full finetune), or train_dataset.bucketing: True instead")
        from petrun.parallel.context import parallel_mode
        if cfg.get("use_parallel") and parallel_mode(cfg) != "DATA_PARALLEL":
            # per-batch rotary tables / position embeddings have no semi-auto strategies yet
            raise UserError("packing is not built for semi-auto/auto parallel yet",
                            key="train_dataset.packing", file=cfg.origin("train_dataset.packing"),
                            fix="set train_dataset.packing: False (data parallel and single-device "
                                "runs support it)")
        return True

    def setup_eval(self) -> None:
        """do_eval: eval_dataset opened and checked now, evaluated every eval_step_interval steps
        and/or every eval_epoch_interval epochs (MindFormers' keys; -1 or 0 turns one off)."""
        cfg = self.cfg
        self.evaluator = None
        self.eval_every_steps = self.eval_every_epochs = 0
        if not cfg.get("do_eval"):
            return
        from petrun.infer.eval import Evaluator
        self.evaluator = Evaluator.from_config(cfg)
        self.eval_every_steps = max(0, int(cfg.get("eval_step_interval") or 0))
        self.eval_every_epochs = max(0, int(cfg.get("eval_epoch_interval") or 0))
        if not (self.eval_every_steps or self.eval_every_epochs):
            raise UserError("do_eval is True but neither eval_step_interval nor eval_epoch_interval "
                            "is positive, so evaluation would never run", key="eval_step_interval",
                            file=cfg.origin("do_eval"),
                            fix="set eval_step_interval: N (every N steps) or eval_epoch_interval: N")
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
        scale, update = steps.build_loss_scale(wrapper.get("scale_sense", 1.0))
        clip = float(wrapper.get("max_grad_norm", 1.0))
        use_clip = bool(wrapper.get("use_clip_grad", False))
        from petrun.parallel.context import grad_reducer
        reducer = grad_reducer(self.optimizer.parameters)  # None unless data parallel
        self.model.set_train(True)
        net = steps.PackedInputs(self.model) if self.data.packed is not None else self.model
        from petrun.parallel.context import pipeline_wrap
        net, pipeline_reducer = pipeline_wrap(cfg, net, self.optimizer.parameters)
        reducer = pipeline_reducer or reducer
        if self.accum == 1:
            self.step_cell = steps.TrainStep(net, self.optimizer, scale, update, clip, use_clip,
                                             grad_reducer=reducer)
            self.step_cell.set_train(True)
            self.skips_overflow = self.step_cell.skip_on_overflow
            self.train_cell = self.step_cell
        else:
            buffers = steps.make_buffers(self.trainable)
            self.acc_cell = steps.AccumulateStep(net, self.optimizer.parameters, buffers, scale, update)
            self.apply_cell = steps.ApplyAccumulated(self.acc_cell, self.optimizer, self.accum, clip, use_clip,
                                                     grad_reducer=reducer)
            self.acc_cell.set_train(True)
            self.skips_overflow = self.apply_cell.skip_on_overflow
            self.train_cell = self.apply_cell

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
        rates = sorted({float(c.p) for _, c in self.model.cells_and_names()
                        if type(c).__name__ == "Dropout" and getattr(c, "p", None)})
        if rates:
            self.warn(f"the model uses dropout (p={', '.join(map(str, rates))}): MindSpore 2.10 "
                      "cannot save the random state of its CPU dropout kernels, so the masks from "
                      "here on differ from an uninterrupted run's (everything else is restored "
                      "exactly)")

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
    def one_step(self, batches) -> tuple[float, bool, float, float]:
        """One optimizer step over `accum` micro-batches → (loss, overflow, loss_scale, grad_norm)."""
        if self.accum == 1:
            loss, overflow, scale, norm = self.step_cell(*batches[0])
            return float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy()), float(norm.asnumpy())
        losses = [float(self.acc_cell(*batch)[0].asnumpy()) for batch in batches]
        overflow, scale, norm = self.apply_cell()
        return float(np.mean(losses)), bool(overflow.asnumpy()), float(scale.asnumpy()), float(norm.asnumpy())

    def train(self) -> None:
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
        metrics = MetricsLog(self.log_dir / layout.METRICS_NAME, run_id=self.run_id,
                             resume_step=self.start_step if self.resume_from else None,
                             mirrors=mirrors)
        if self.resume_from is not None:
            metrics.write({"event": "resume", "step": self.start_step,
                           "checkpoint": str(self.resume_from.adapter)})
        zero_norm_since = None   # first step of a run of steps with gradient norm exactly 0
        token_counts: list[int] = []
        step, times, start = self.start_step, [], time.perf_counter()
        epoch = step_in_epoch = 0
        try:
            with resume.StopOnSignal(self.say) as stop:
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
                        token_counts.append(step_tokens)
                        for b in group:
                            self.data.check_batch(b, f"a batch of step {step + 1}")
                        t0 = time.perf_counter()
                        stop.in_step = True
                        loss, overflow, scale, norm = self.one_step(group)
                        dt = time.perf_counter() - t0
                        group = []
                        step += 1
                        step_in_epoch += 1
                        stop.reclaim()   # between steps, Ctrl-C reaches us as SIGINT
                        stop.in_step = False
                        times.append(dt)
                        self.scale = scale
                        if not np.isfinite(loss) or (overflow and not self.skips_overflow):
                            before = self.summary["losses"][-1:] or [None]
                            since = (f" (step {step - 1}: loss {before[0]:.4f})"
                                     if before[0] is not None else "")
                            raise UserError(f"loss {loss}, gradient norm {norm} at step {step}{since}: "
                                            f"training diverged (no checkpoint written for this step); "
                                            f"{self._step_back_from(step - 1)}",
                                            key="lr_schedule.learning_rate",
                                            fix="lower the learning rate, enable use_clip_grad, or use "
                                                "a dynamic loss scale for float16; --resume continues "
                                                "from `latest`. If the loss was normal up to here, the "
                                                f"data of step {step} may be bad instead (a sample "
                                                "that no finite loss can come from): the same data "
                                                "order meets it again at that step")
                        lr = float(self.lr[min(step - 1, len(self.lr) - 1)])
                        self.summary["losses"].append(loss)
                        progress.update(step, epoch, loss, lr, step_tokens / dt, norm, overflow)
                        metrics.write({"step": step, "total_steps": self.total_steps, "epoch": epoch,
                                       "loss": loss, "lr": lr, "grad_norm": norm, "overflow": overflow,
                                       "loss_scale": scale, "step_time_s": round(dt, 4),
                                       "tokens": step_tokens,
                                       "tokens_per_second": round(step_tokens / dt, 1),
                                       "elapsed_s": round(time.perf_counter() - start, 2)})
                        zero_norm_since = (zero_norm_since or step) if norm == 0.0 else None
                        if zero_norm_since is not None and step - zero_norm_since + 1 >= COLLAPSE_STEPS:
                            self._collapsed(zero_norm_since, step, loss)
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
                            path = self.summary["checkpoints"][-1]["path"]
                            self.say(f"stopped by {signal.Signals(stop.signum).name} after step "
                                     f"{step}/{self.total_steps}; checkpoint: {path}\nContinue with the "
                                     "same command plus --resume.")
                            raise Interrupted(stop.signum, step, path, self.summary)
                        if step >= self.total_steps:
                            break
                    if step >= self.total_steps:
                        break
                if self.last_saved_step != step:
                    self.save(epoch, step_in_epoch, step)
            memory = self._memory(metrics)
        finally:
            progress.close()
            metrics.close()
        steady = times[1:] or times
        median = statistics.median(steady) if steady else 0.0
        self.summary.update(steps=step, wall_s=time.perf_counter() - start,
                            first_step_s=times[0] if times else 0.0, median_step_s=median,
                            tokens_per_second=(float(np.mean(token_counts)) / median
                                               if median and token_counts else 0.0))
        last = self.summary["checkpoints"][-1]["path"] if self.summary["checkpoints"] else "-"
        what = "adapter" if self.cfg.get("model.model_config.pet_config") else "checkpoint"
        losses = self.summary["losses"]
        # Single-batch losses are noisy; compare means over the first and last few steps.
        k = max(1, min(10, len(losses) // 5))
        self.say(f"done: {step} steps, mean loss of the first/last {k} steps "
                 f"{np.mean(losses[:k]):.4f} → {np.mean(losses[-k:]):.4f}, "
                 f"{self.summary['tokens_per_second']:,.0f} tok/s "
                 f"(median step {median * 1000:.0f} ms, first step {self.summary['first_step_s']:.1f} s "
                 f"incl. compile); {what}: {last}")
        if memory:
            from petrun.plan.measure import describe
            self.say(describe(memory))
        self._ending(last)

    def _ending(self, last: str) -> None:
        """Where the outputs are and what to run next, with the real paths."""
        if self.rank != 0:
            return
        metrics = self.log_dir / layout.METRICS_NAME
        png = self.log_dir / "training.png"
        try:
            from petrun.train.plot import plot, read_series
            plot([read_series(metrics, "this run")], png)
        except Exception as e:   # noqa: BLE001  a plot never fails a finished run
            self.warn(f"no plot written ({type(e).__name__}: {e})")
            png = None
        tb = self.cfg.get("tensorboard.tensorboard_dir")
        config = self.ckpt_dir / layout.CONFIG_NAME   # the resolved config, overrides included
        lines = [f"metrics: {metrics}" + (f"; plot: {png}" if png else "")
                 + (f"; TensorBoard: tensorboard --logdir {tb}" if tb else "")]
        if self.cfg.get("model.model_config.pet_config") and last != "-":
            lines += ["next:",
                      f"  petrun predict --config {config} --adapter {self.ckpt_dir} "
                      "--prompt \"...\"",
                      f"  petrun eval --config {config} --adapter {self.ckpt_dir} "
                      "--eval_dataset_dir DATA",
                      f"  petrun ckpt export-peft --help   # or merge: petrun ckpt merge --help"]
        self.say("\n".join(lines))

    def _memory(self, metrics) -> dict:
        """Measured peak memory beside the planner's estimate, into metrics.jsonl and the summary
        (on an accelerator this is the measurement that calibrates the planner there)."""
        import mindspore as ms
        from petrun.plan.measure import memory_record
        try:
            rec = memory_record(self.cfg, ms.get_context("device_target"))
        except Exception as e:   # noqa: BLE001  a report never fails a finished run
            self.say(f"memory: not measured ({type(e).__name__}: {e})")
            return {}
        metrics.write(rec)
        self.summary["memory"] = rec
        return rec

    def _step_back_from(self, bad_step: int) -> str:
        """The parameters after `bad_step` are poisoned (the next forward pass was non-finite,
        or they hold inf/NaN): point `latest` at the newest checkpoint of this run saved before
        them, so --resume, predict and eval never pick them up. Returns what was done, in words."""
        mine = [c for c in self.store.checkpoints() if c.manifest.get("run_id") == self.run_id]
        good = [c for c in mine if c.step < bad_step]
        if not any(c.step >= bad_step for c in mine):
            return (f"the newest checkpoint (step {good[0].step}) is intact and stays `latest`"
                    if good else "no checkpoint was saved yet")
        if not good:
            return (f"the checkpoints of steps >= {bad_step} hold the diverged parameters and no "
                    "checkpoint of this run predates them")
        self.store.point_latest(good[0].stem)
        return (f"the checkpoints of steps >= {bad_step} hold the diverged parameters, so `latest` "
                f"now points at step {good[0].step}: {good[0].adapter}")

    def _collapsed(self, since: int, step: int, loss: float) -> None:
        """Gradients exactly zero step after step: the update saturated the model (e.g. an lr
        far too high) and nothing trains any more, while the loss and exit code look normal.
        Stop, and point `latest` back at the newest checkpoint saved before the collapse."""
        # The zero gradients of step `since` were computed on the parameters after step
        # since - 1: those are already collapsed.
        raise self._lr_error(f"training collapsed: the gradient norm is exactly 0 at every step "
                             f"since step {since} (now {step}) and the loss is stuck at "
                             f"{loss:.4f}; nothing trains any more; "
                             f"{self._step_back_from(since - 1)}",
                             "then start again or --resume from a checkpoint before the collapse")

    def _lr_error(self, message: str, then: str) -> UserError:
        """Diverged or saturated parameters: the learning rate is the key to change."""
        return UserError(message, key="lr_schedule.learning_rate",
                         file=self.cfg.origin("lr_schedule.learning_rate"),
                         fix=f"lower the learning rate (and keep use_clip_grad on), {then}")

    # ------------------------------------------------------------------ save
    def save(self, epoch: int, step_in_epoch: int, step: int) -> Path:
        """One checkpoint (ckpt/store.py): <prefix>_rank_<r>-<epoch>_<step>.ckpt with the adapter in
        MindFormers' layout, its training state and manifest; then keep_checkpoint_max."""
        from petrun.ckpt.io import save_params
        from petrun.ckpt.store import checkpoint_stem
        from petrun.ckpt.run_manifest import versions
        stem = checkpoint_stem(self.prefix, self.rank, epoch, step_in_epoch)
        kept = (f"the newest checkpoint (step {self.last_saved_step}) is intact"
                if self.last_saved_step is not None else "no checkpoint was saved yet")
        bad = nonfinite_count(self.trainable)
        if bad:
            raise self._lr_error(f"after step {step} the trained parameters hold {bad} inf/NaN "
                                 "values: the last update diverged, so this checkpoint was not "
                                 f"saved; {self._step_back_from(step)}",
                                 "then --resume continues from the intact checkpoint")
        if not self.ckpt_dir.is_dir():
            self.warn(f"the checkpoint folder {self.ckpt_dir} was deleted while this run was "
                      "writing into it: its earlier checkpoints and config.yaml are gone. "
                      "Recreating it (with config.yaml) for the checkpoints from step "
                      f"{step} on.")
            from petrun.atomic import write_text_atomic
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.ckpt_dir / layout.CONFIG_NAME, self.cfg.to_yaml())
        manifest = {
            "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "batches_in_epoch": step_in_epoch * self.accum,
            "consumed_samples": step * self.accum * self.batch_size * self.num_shards,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            "rank": self.rank, "world_size": self.world_size, "run_id": self.run_id,
            "loss_scale": self.scale,
            "data": {"files": self.data_files, "num_samples": self.data.num_samples,
                     "seed": self.data.seed, "shuffle": self.data.shuffle,
                     "order_sha256": self._order_digest(epoch)},
            "rng": resume.capture_rng(), "versions": versions(),
            "config_hash": self.cfg.hash(), "config": json.loads(json.dumps(self.cfg.data, default=str)),
            "finite": True,
        }
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
