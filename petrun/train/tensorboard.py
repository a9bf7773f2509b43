"""TensorBoard event files of a run, as MindFormers writes them (its `tensorboard:` section,
tensorboardX's SummaryWriter with `tensorboard_queue_size` as the queue).

Fed from the same records as metrics.jsonl, so the two never disagree. Per rank, under
`<tensorboard_dir>/rank_<r>`, like the rest of petrun's per-rank output. Tags follow the
Megatron-style names MindFormers uses: loss, lr, grad-norm, loss-scale (with
log_loss_scale_to_tensorboard), throughput and step-time (with log_timers_to_tensorboard), and
eval/loss, eval/perplexity; the resolved config is stored as text.
"""
from __future__ import annotations

from pathlib import Path


class TensorBoardLog:
    def __init__(self, section: dict, rank: int, config_yaml: str, run_id: str | None = None):
        from tensorboardX import SummaryWriter   # only when the section asks for it
        self.dir = Path(section["tensorboard_dir"]) / f"rank_{rank}"
        self.loss_scale = bool(section.get("log_loss_scale_to_tensorboard", False))
        self.timers = bool(section.get("log_timers_to_tensorboard", False))
        self.writer = SummaryWriter(logdir=str(self.dir),
                                    max_queue=int(section.get("tensorboard_queue_size") or 10))
        # Markdown text: indent four spaces so TensorBoard shows the YAML as a code block.
        self.writer.add_text("config", "\n".join("    " + line for line in config_yaml.splitlines()))
        if run_id:
            self.writer.add_text("run_id", run_id)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int):
            return
        if record.get("event") == "eval":
            for key, tag in (("eval_loss", "eval/loss"), ("eval_perplexity", "eval/perplexity")):
                if key in record:
                    self.writer.add_scalar(tag, record[key], step)
            return
        if "loss" not in record:
            return
        self.writer.add_scalar("loss", record["loss"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("grad-norm", record["grad_norm"], step)
        if self.loss_scale:
            self.writer.add_scalar("loss-scale", record["loss_scale"], step)
        if self.timers:
            self.writer.add_scalar("throughput", record["tokens_per_second"], step)
            self.writer.add_scalar("step-time", record["step_time_s"], step)

    def close(self) -> None:
        self.writer.close()
