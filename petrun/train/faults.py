"""What goes wrong while a run trains, and what the finetune recipe does about each, so that no run
mixes with another and nothing a later --resume, predict or eval picks up holds broken parameters.

The output folder
  claim_output      a new run into a folder that holds another run's checkpoints or metrics is
                    refused, unless --resume (continue it) or --overwrite (replace it)
  replace_earlier   --overwrite removes the earlier run as a set, only once every check of this
                    run has passed: a refused run removes nothing

The numbers (Watch, one per run)
  A step whose loss or gradient norm is not finite: the step cell has skipped its update
  (train/step.py, as MindFormers' MFTrainOneStepCell does), so the parameters are still those
  after the previous update. A non-finite loss alone cannot say whether the batch or those
  parameters are bad; a forward pass of the last batch that gave a finite loss, on the same
  parameters, can:
    finite      a bad batch: its update was skipped; the run goes on and names the batch's samples.
                MAX_BAD_BATCHES of them in a row stop the run (that is the data, not one sample).
    not finite  a bad update (the last one applied): the run stops, and `latest` steps back to the
                newest checkpoint saved before that update.
  Parameters that hold inf/NaN after an update are never saved (the run stops, `latest` steps
  back). A collapse (gradient norm exactly 0 for COLLAPSE_STEPS steps: the update saturated the
  model) stops the run the same way. Multi-process runs cannot compare one rank's probe with the
  others', so there every non-finite step stops the run as a bad update would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from petrun.ckpt import layout
from petrun.errors import UserError

COLLAPSE_STEPS = 3     # steps in a row with a gradient norm of exactly 0 that mean a collapse
MAX_BAD_BATCHES = 3    # skipped bad batches in a row that stop the run


def nonfinite_count(params) -> int:
    """inf/NaN values in MindSpore Parameters (cast to fp32 first: numpy has no bfloat16)."""
    import mindspore as ms
    bad = 0
    for p in params:
        value = p.value() if p.dtype in (ms.float32, ms.float64) else p.value().astype(ms.float32)
        bad += int(np.count_nonzero(~np.isfinite(value.asnumpy())))
    return bad


def lr_error(cfg, message: str, then: str) -> UserError:
    """Diverged or saturated parameters: the learning rate is the key to change."""
    return UserError(message, key="lr_schedule.learning_rate",
                     file=cfg.origin("lr_schedule.learning_rate"),
                     fix=f"lower the learning rate (and keep use_clip_grad on), {then}")


# ---------------------------------------------------------------------------- the output folder
def claim_output(cfg, store, output_dir: Path, log_dir: Path, rank: int) -> list[Path] | None:
    """A new run into a folder that holds another run's checkpoints or metrics would mix with
    them (the metrics of both in one file, `latest` of either): refused unless --overwrite.
    Returns the earlier run's log files for replace_earlier, or None when there is no earlier run."""
    earlier = store.checkpoints()
    logs = [log_dir / name for name in (layout.METRICS_NAME, "training.png", "info.log",
                                        "error.log")]
    tb = cfg.get("tensorboard.tensorboard_dir")
    if tb:
        logs += sorted((Path(tb) / f"rank_{rank}").glob("events.out.tfevents.*"))
    metrics = logs[0]
    if not earlier and not (metrics.is_file() and metrics.stat().st_size):
        return None
    what = (f"{len(earlier)} checkpoint(s), the newest of step {earlier[0].step}" if earlier
            else f"the metrics {metrics}")
    if not cfg.get("overwrite_output_dir"):
        raise UserError(f"{output_dir} holds another run ({what}); a new run into it "
                        "would mix its checkpoints and metrics with that run's",
                        key="output_dir", file=cfg.origin("output_dir"),
                        fix="add --resume to continue that run, --overwrite to replace it, or "
                            "choose another --output_dir")
    return logs


def replace_earlier(store, files: list[Path], output_dir: Path) -> str:
    """--overwrite, once every check passed: the earlier run's checkpoints and logs go, as a set."""
    removed = store.remove_all()
    for f in files:
        f.unlink(missing_ok=True)
    return (f"--overwrite: removed the earlier run from {output_dir} ({removed} checkpoint(s) "
            "and its metrics)")


def recreate_checkpoint_dir(cfg, ckpt_dir: Path, step: int, warn: Callable[[str], None]) -> None:
    """The checkpoint folder vanished under a running job: say so, and put it back with the
    resolved config so the checkpoints from here on are usable."""
    if ckpt_dir.is_dir():
        return
    from petrun.atomic import write_text_atomic
    warn(f"the checkpoint folder {ckpt_dir} was deleted while this run was writing into it: its "
         "earlier checkpoints and config.yaml are gone. Recreating it (with config.yaml) for the "
         f"checkpoints from step {step} on.")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ckpt_dir / layout.CONFIG_NAME, cfg.to_yaml())


# ---------------------------------------------------------------------------- the numbers
def batch_rows(data, epoch: int, first_batch: int, batches: int, batch_size: int) -> str:
    """Which dataset rows (0-based, in file order) batches first_batch.. of `epoch` hold on this
    rank, in words: the same order function the loader reads them by (data/loader.py)."""
    if data.bucketing:
        rows = [int(i) for b in data.bucketed_batches(epoch)[first_batch:first_batch + batches]
                for i in b]
    else:
        rows = [int(i) for i in data.order(epoch)[first_batch * batch_size:
                                                  (first_batch + batches) * batch_size]]
    what = "packed rows" if data.packed is not None else "samples"
    return f"{what} {', '.join(map(str, rows))} of epoch {epoch}"


class Probe:
    """A forward pass of a step's micro-batches on the current parameters, no update: the mean
    loss. `stop` (resume.StopOnSignal) is told a graph runs, as around a training step."""

    def __init__(self, net, stop):
        self.net, self.stop = net, stop

    def __call__(self, group) -> float:
        self.stop.in_step = True
        try:
            return float(np.mean([float(self.net(*b).asnumpy()) for b in group]))
        finally:
            self.stop.reclaim()
            self.stop.in_step = False


class Watch:
    """One run's checks on its numbers, called by the recipe after each step and before each save.

    probe(group) -> loss: a forward pass of a group of micro-batches on the current parameters,
    no update (the recipe's). samples(epoch, step_in_epoch) -> the dataset rows of that step.
    """

    def __init__(self, cfg, store, run_id: str, *, probe: Probe | None,
                 samples: Callable[[int, int], str], warn: Callable[[str], None], start_step: int):
        self.cfg, self.store, self.run_id = cfg, store, run_id
        self.probe, self.samples, self.warn = probe, samples, warn
        self.start_step = start_step
        self.good: tuple[int, list] | None = None   # (step, batches) of the last finite loss
        self.bad_in_a_row = 0
        self.zero_norm_since: int | None = None

    def step_back_from(self, bad_step: int) -> str:
        """The parameters after `bad_step` are poisoned: point `latest` at the newest checkpoint of
        this run saved before them, so --resume, predict and eval never pick them up. Returns
        what was done, in words."""
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

    def after_step(self, step: int, epoch: int, step_in_epoch: int, group: list, loss: float,
                   norm: float, overflow: bool, loss_scaled: bool, params) -> bool:
        """Check one finished step. Returns True for a good step, False for a bad batch whose
        update was skipped (the run goes on); raises UserError when the run must stop."""
        if np.isfinite(loss) and not (overflow and not loss_scaled):
            # A finite loss with an overflow under a loss scale is routine: the scale adapts.
            self.good, self.bad_in_a_row = (step, group), 0
            return True
        self.zero_norm_since = None
        what = f"loss {loss}, gradient norm {norm} at step {step}"
        if self.probe is None:          # several processes: they could not agree on a verdict
            self._diverged(what, step - 1, "this multi-process run cannot tell a bad batch from "
                           "a bad update, so it stops")
        bad = nonfinite_count(params)
        if bad:   # they come from the last update applied (bad batches apply none)
            self._diverged(what, self.good[0] if self.good else self.start_step,
                           f"the parameters before it hold {bad} inf/NaN values")
        if self.good is not None:
            check_step, batches = self.good
            again = self.probe(batches)
            if not np.isfinite(again):
                # The parameters cannot even process a batch they handled before: the updates
                # since then were bad; skipped steps applied none, so it was step check_step's.
                self._diverged(what, check_step, f"the batch of step {check_step}, which gave a "
                               f"finite loss before, now gives {again}")
        elif self.bad_in_a_row + 1 >= MAX_BAD_BATCHES:
            self._diverged(what, self.start_step, f"no step of this run had a finite loss "
                           f"({MAX_BAD_BATCHES} in a row): the parameters it started from are bad")
        self.bad_in_a_row += 1
        rows = self.samples(epoch, step_in_epoch)
        if self.bad_in_a_row >= MAX_BAD_BATCHES:
            raise UserError(f"{what}: {MAX_BAD_BATCHES} bad batches in a row (the last: {rows}); "
                            "the parameters are fine (a batch that trained before still gives a "
                            "finite loss), so the data is bad here",
                            key="train_dataset.data_loader.dataset_dir",
                            file=self.cfg.origin("train_dataset.data_loader.dataset_dir"),
                            fix="find what in those samples gives an infinite loss (token ids, "
                                "lengths, labels), fix or drop them and start again; "
                                f"{self.step_back_from(step)}")
        checked = ("the parameters still give a finite loss on the batch of step "
                   f"{self.good[0]}" if self.good else "no earlier step of this run to check the "
                   "parameters against yet")
        self.warn(f"{what}: a bad batch ({rows}); its update was skipped and training goes on "
                  f"({checked})")
        return False

    def _diverged(self, what: str, bad_step: int, why: str) -> None:
        """The update of `bad_step` poisoned the parameters: stop, `latest` steps back."""
        raise lr_error(self.cfg, f"{what}: training diverged ({why}; no checkpoint written for "
                       f"this step); {self.step_back_from(bad_step)}",
                       "or use a dynamic loss scale for float16; --resume continues from `latest`")

    def collapse(self, step: int, loss: float, norm: float) -> None:
        """After a good step's record: gradients exactly zero step after step mean the update
        saturated the model (e.g. an lr far too high) and nothing trains any more, while the loss
        and exit code look normal. Stops the run, `latest` steps back before the collapse."""
        self.zero_norm_since = (self.zero_norm_since or step) if norm == 0.0 else None
        since = self.zero_norm_since
        if since is None or step - since + 1 < COLLAPSE_STEPS:
            return
        # The zero gradients of step `since` were computed on the parameters after step
        # since - 1: those are already collapsed.
        raise lr_error(self.cfg, f"training collapsed: the gradient norm is exactly 0 at every "
                       f"step since step {since} (now {step}) and the loss is stuck at "
                       f"{loss:.4f}; nothing trains any more; {self.step_back_from(since - 1)}",
                       "then start again or --resume from a checkpoint before the collapse")

    def before_save(self, step: int, params) -> None:
        """inf/NaN parameters are never saved, and `latest` steps back from them."""
        bad = nonfinite_count(params)
        if bad:
            raise lr_error(self.cfg, f"after step {step} the trained parameters hold {bad} inf/NaN "
                           "values: the last update diverged, so this checkpoint was not saved; "
                           f"{self.step_back_from(step)}",
                           "then --resume continues from the intact checkpoint")
