"""Pre-flight: the checks every run makes before it builds anything, in well under a second.

A config can be valid and still doomed: a checkpoint of another model size, a target_modules
alternative that adapts nothing, data tokenized for another seq_length, a model that does not fit
the device. On an 8-card Ascend job each of those surfaces only after a long graph compile, and on
a laptop a too-big model is simply killed by the kernel. Here they are found from the config,
file headers and the planner alone — no MindSpore import, no model — and reported together, each
with its key and fix (exit 2). `--skip-preflight` bypasses it for experts.

`petrun config validate` runs the same checks through the same function (`preflight_checks`),
with two differences, both because a config is often checked on another machine than the one it
runs on (MindFormers' own files name `/path/to/...`):
  - memory is not checked (it depends on the devices of the machine that runs it: `petrun plan`);
  - a path missing or unusable here is a warning, not an error. A path that does exist here is
    read, and its checkpoint and dataset checks are errors as in the run.

Checks, in the order they are reported:
  memory      the planner's per-device peak against context.max_device_memory (accelerators) or
              the RAM available now (CPU); a configured device this machine lacks is explained in
              the same message, with what the run would need on this machine's CPU instead
  model       the family's own build checks (models.configs ...Config.check), model_config vs
              pet_config (pet.check_model_pet), target_modules: every `|` alternative adapts at
              least one layer (from the analytic parameter names, same rules as petrun.pet); the
              pet_type is built; run settings the recipe refuses (packing with prompt methods or
              semi-auto parallel, do_eval that never evaluates)
  paths       load_checkpoint, the dataset of the verb, output_dir (creatable and writable)
  checkpoint  tensor names and shapes from the file's index against the model's
  dataset     columns and sample length against the config (petrun.data.loader.check_dataset)
"""
from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from petrun.errors import UserError

GiB = 2 ** 30
_DATASET_KEYS = {"finetune": "train_dataset.data_loader.dataset_dir",
                 "train": "train_dataset.data_loader.dataset_dir",
                 "eval": "eval_dataset.data_loader.dataset_dir"}
_ORDER = ("memory", "model", "paths", "checkpoint", "dataset")


@dataclass
class Finding:
    check: str                 # one of _ORDER
    message: str
    fix: str | None = None
    key: str | None = None
    file: str | None = None

    def render(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key:
            where.append(f"key '{self.key}'")
        head = f"{': '.join(where)}: " if where else ""
        text = f"[{self.check}] {head}{self.message}"
        if self.fix:
            text += f"\n     Fix: {self.fix}"
        return text


class PreflightError(UserError):
    """Every problem the pre-flight found; the CLI prints it and exits 2."""
    key_in_message = False

    def __init__(self, findings: list[Finding], seconds: float, head: str | None = None):
        self.findings = sorted(findings, key=lambda f: _ORDER.index(f.check))
        n = len(self.findings)
        head = head or (f"pre-flight found {n} problem{'s' if n > 1 else ''} in {seconds:.2f} s, "
                        "before building anything (--skip-preflight runs anyway):")
        body = "\n".join(f"  {i}. {f.render()}" for i, f in enumerate(self.findings, 1))
        first = self.findings[0]
        super().__init__(f"{head}\n{body}", key=first.key, file=None)


@dataclass
class PreflightReport:
    seconds: float
    estimate: object = None            # petrun.plan.Estimate, when the model is known
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        est = self.estimate
        text = f"pre-flight ok ({', '.join(self.checked)}) in {self.seconds:.2f} s"
        if est is not None:
            text += f"; planned peak ~{_gib(est.peak)} per device"
            if est.budget is not None:
                text += f" of {_gib(est.budget)} ({est.budget_source})"
        if self.skipped:
            text += f"; not checked: {'; '.join(self.skipped)}"
        for warning in self.warnings:
            text += f"\nwarning: {warning}"
        return text


def _gib(n: float) -> str:
    return f"{n / GiB:,.1f} GiB" if n >= 0.1 * GiB else f"{n / 2 ** 20:,.0f} MiB"


def _finding(check: str, e: UserError, cfg=None) -> Finding:
    file = e.file
    if file is None and e.key and cfg is not None and e.key.split(".")[0] in cfg.data:
        file = cfg.origin(e.key)
    return Finding(check, e.message, e.fix, e.key, file)


def _mode(verb: str) -> str:
    """The planner's run mode: train and finetune run the same recipe."""
    return "finetune" if verb in ("finetune", "train") else verb


# ------------------------------------------------------------------------------------ checks
def _check_model(cfg, verb: str, out: list[Finding]):
    """(arch, specs, dims, pet shapes) from the analytic tables, or None after a finding."""
    from petrun.plan.estimator import model_of, pet_of
    from petrun.pet import METHODS, check_model_pet
    target = cfg.get("context.device_target") or "CPU"
    try:
        arch, mc, specs, dims = model_of(cfg, target)
        mc.check()                     # what the family's model refuses to build
        from petrun.models.kernel_choice import flash_attention_errors
        from petrun.plan.layout import recompute_plan
        recompute_plan(cfg, target)      # recompute_config as build_model will apply it
        fa_errors = flash_attention_errors(mc, target)   # FlashAttentionScore's limits
        if fa_errors:
            out.extend(_finding("model", e, cfg) for e in fa_errors)
            return None
        pet_cfg = cfg.get("model.model_config.pet_config")
        if pet_cfg:
            check_model_pet(arch, cfg.get("model.model_config"), pet_cfg)
        if pet_cfg and isinstance(pet_cfg, dict) and pet_cfg.get("pet_type") not in METHODS:
            built = ", ".join(sorted(METHODS))
            out.append(Finding("model", f"pet_type {pet_cfg.get('pet_type')!r} is not built yet "
                               f"(built: {built})", f"use one of: {built}",
                               "model.model_config.pet_config.pet_type",
                               cfg.origin("model.model_config.pet_config.pet_type")))
            return None
        pet = pet_of(cfg, specs, dims, arch, target, _mode(verb))
    except UserError as e:
        out.append(_finding("model", e, cfg))
        return None
    return arch, specs, dims, pet


def _check_memory(cfg, verb: str, out: list[Finding], device_memory: int | None = None,
                  out_warnings: list[str] | None = None):
    from petrun.plan import device as dev
    from petrun.plan.estimator import estimate, with_budget
    from petrun.plan.levers import path_to_fit
    mode = _mode(verb)
    target = cfg.get("context.device_target") or "CPU"
    est = with_budget(estimate(cfg, run_mode=mode), cfg, device_memory)
    out_warnings = [] if out_warnings is None else out_warnings
    key = "context.device_target"
    if dev.device_present(target):
        if est.verdict == "tight":
            out_warnings.append(
                f"the run may not fit: ~{_gib(est.peak)} per device against {_gib(est.budget)} "
                f"({est.budget_source}), within the estimate's uncertainty on {target}; if it runs "
                f"out of memory, see `petrun plan --config {cfg.source}` for levers")
        elif est.fits is False:
            fix = _fit_advice(est, path_to_fit(cfg, est, est.budget, **_layout_kwargs(est)))
            where = "this machine" if target == "CPU" else f"one {target} device"
            out.append(Finding(
                "memory", f"the run needs ~{_gib(est.peak)} per device ({est.layout.describe()}; "
                f"{_breakdown(est)}) but {where} has {_gib(est.budget)} ({est.budget_source}). "
                f"Details and levers: petrun plan --config {cfg.source}",
                fix, "context.max_device_memory" if target != "CPU" else None,
                cfg.origin("context.max_device_memory") if target != "CPU" else None))
        return est
    # The configured accelerator is not here: say what it would need there and here.
    cpu = with_budget(estimate(cfg, run_mode=mode, device_target="CPU", devices=1), cfg)
    there = (f"On {target} it needs ~{_gib(est.peak)} per device ({est.layout.describe()})"
             + ("" if est.fits is None else
                f", {'within' if est.fits else 'more than'} the {_gib(est.budget)} of "
                f"{est.budget_source}") + ".")
    here = f"On this machine's CPU it would need ~{_gib(cpu.peak)}"
    if cpu.budget is not None:
        here += f", and {_gib(cpu.budget)} of RAM is available now"
    msg = (f"context.device_target is {target}, but this machine has no {target} device "
           f"(MindSpore would fail at start-up). {there} {here}.")
    if cpu.fits:
        fix = (f"run it here on CPU with the overrides context.device_target=CPU "
               f"use_parallel=False, or on a machine with {target} devices")
    else:
        fix = f"run it on {target} devices (the command is in the config's header)"
        if est.fits is False:
            fix += " with " + _fit_advice(est, path_to_fit(cfg, est, est.budget))
        steps = path_to_fit(cfg, cpu, cpu.budget, devices=1) if cpu.budget else []
        fix += ". To run on this CPU instead: " + _fit_advice(cpu, steps)
        if steps:
            fix += " context.device_target=CPU use_parallel=False"
    out.append(Finding("memory", msg, fix, key, cfg.origin(key)))
    return est


def _layout_kwargs(est) -> dict:
    return {"devices": est.layout.devices} if est.layout.devices > 1 else {}


def _breakdown(est) -> str:
    parts = [("weights", est.weights), ("gradients", est.gradients), ("optimizer", est.optimizer),
             ("activations", est.activations), ("logits", est.head), ("KV cache", est.kv_cache),
             ("runtime", est.runtime)]
    return ", ".join(f"{name} {_gib(v)}" for name, v in parts if v >= 0.01 * est.peak)


def _merge(overrides: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for o in overrides:
        merged[o.split("=", 1)[0]] = o
    return list(merged.values())


def _fit_advice(est, steps) -> str:
    """'A + B → ~X per device: add the overrides …', or why nothing on offer fits."""
    if steps:
        ovr = " ".join(_merge([o for lv in steps for o in lv.overrides]))
        return (f"{' + '.join(lv.what for lv in steps)} → ~{_gib(steps[-1].peak)} per device: "
                f"add the overrides {ovr}")
    if est.budget is not None and est.weights > est.budget:
        return (f"the weights alone take {_gib(est.weights)}: use a smaller model (e.g. "
                "configs/llama2/lora_llama2_tiny.yaml) or more memory")
    return "no lever on offer makes it fit; `petrun plan` shows the breakdown"


def _check_paths(cfg, verb: str, out: list[Finding]) -> dict:
    """Paths the run reads or writes; returns {what: path} for the ones that exist."""
    ok = {}
    ckpt = cfg.get("load_checkpoint")
    if ckpt:
        p = Path(os.path.expanduser(str(ckpt)))
        if not p.exists():
            out.append(Finding("paths", "checkpoint path does not exist",
                               "check the path (relative paths are resolved against the current "
                               "directory)", "load_checkpoint", str(ckpt)))
        elif not os.access(p, os.R_OK):
            out.append(Finding("paths", "checkpoint path is not readable",
                               "fix its permissions", "load_checkpoint", str(ckpt)))
        else:
            ok["checkpoint"] = p
    key = _DATASET_KEYS.get(verb)
    if key:
        data = cfg.get(key)
        if not data:
            what = "training" if verb in ("finetune", "train") else "evaluation"
            flag = "--train_dataset_dir" if what == "training" else "--eval_dataset_dir"
            out.append(Finding("paths", f"no {what} data: the dataset path is empty",
                               f"pass {flag} PATH (a .mindrecord file or folder, or a tokenized "
                               ".jsonl)", key, cfg.origin(key)))
        elif not os.path.exists(os.path.expanduser(str(data))):
            out.append(Finding("paths", "dataset path does not exist",
                               "check the path (relative paths are resolved against the current "
                               "directory)", key, str(data)))
        elif not os.access(os.path.expanduser(str(data)), os.R_OK):
            out.append(Finding("paths", "dataset path is not readable", "fix its permissions",
                               key, str(data)))
        else:
            ok["dataset"] = str(data)
    if verb in ("finetune", "train") and cfg.get("do_eval"):
        ekey = _DATASET_KEYS["eval"]
        edata = cfg.get(ekey)
        if not edata:
            out.append(Finding("paths", "do_eval is True but the evaluation dataset path is empty",
                               "pass --eval_dataset_dir PATH, or --do_eval False", ekey, cfg.origin(ekey)))
        elif not os.path.exists(os.path.expanduser(str(edata))):
            out.append(Finding("paths", "evaluation dataset path does not exist",
                               "check the path, or pass --do_eval False", ekey, str(edata)))
    if verb in ("finetune", "train"):
        outdir = Path(os.path.expanduser(str(cfg.get("output_dir") or "./output")))
        probe = outdir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
            why = "is a file" if not probe.is_dir() else "is not writable"
            out.append(Finding("paths", f"output_dir cannot be created: {probe} {why}",
                               "choose a writable output_dir (--output_dir DIR)", "output_dir",
                               str(outdir)))
    vocab = cfg.get("processor.tokenizer.vocab_file")
    if verb in ("eval", "predict") and vocab and not os.path.exists(os.path.expanduser(str(vocab))):
        out.append(Finding("paths", "tokenizer file does not exist", "check the path",
                           "processor.tokenizer.vocab_file", str(vocab)))
    return ok


def _check_checkpoint(cfg, path: Path, model, out: list[Finding]) -> None:
    """Names and shapes in the checkpoint's index against the model's, as load_into judges them:
    training state is ignored; an adapter-only file must hold exactly the adapters; a base file
    every weight but the adapters."""
    from petrun.ckpt import io as ckpt_io
    from petrun.ckpt.index import checkpoint_index
    from petrun.ckpt.diagnose import mismatch_message, names_fix, shapes_fix
    _, specs, _, pet = model
    key = "load_checkpoint"
    try:
        index, files = checkpoint_index(path, key, cfg.get("load_ckpt_format"))
    except UserError as e:
        out.append(_finding("checkpoint", e))
        return
    adapter_glob = getattr(ckpt_io, "ADAPTER_PATTERN", "*mindpet_delta_*")
    params = pet.params
    weights = {n: t for n, t in index.items() if not ckpt_io._TRAINING_STATE.match(n)}  # noqa: SLF001
    if not pet.exact:   # a method the planner cannot name: judge the base weights only
        params = {n: s for n, s in params.items() if not fnmatch.fnmatchcase(n, adapter_glob)}
        weights = {n: t for n, t in weights.items() if not fnmatch.fnmatchcase(n, adapter_glob)}
        if not weights:
            return
    is_adapter = bool(weights) and all(fnmatch.fnmatchcase(n, adapter_glob) for n in weights)
    if is_adapter:
        required = [n for n in params if fnmatch.fnmatchcase(n, adapter_glob)]
    else:
        required = [n for n in params if not fnmatch.fnmatchcase(n, adapter_glob)]
    missing = [n for n in required if n not in weights]
    unexpected = [n for n in weights if n not in params]
    where = str(files[0]) if len(files) == 1 else str(path)
    if missing or unexpected:
        out.append(Finding("checkpoint", mismatch_message(missing, unexpected, 3),
                           names_fix(list(weights), list(params)), key, where))
        return
    bad = [(n, t.shape, params[n].shape) for n, t in weights.items()
           if tuple(t.shape) != tuple(params[n].shape)]
    if bad:
        n, got, want = bad[0]
        out.append(Finding("checkpoint", f"shape mismatch for {n}: checkpoint {tuple(got)}, model "
                           f"{tuple(want)}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                           shapes_fix([(n, tuple(g), tuple(w)) for n, g, w in bad]), key, where))


def _is_sharded(path: Path) -> bool:
    from petrun.ckpt.transform import is_rank_folder
    return is_rank_folder(path)


def _check_source_strategy(cfg, path: Path, out: list[Finding]) -> None:
    """A rank_N/ source under auto_trans_ckpt is merged through its strategy: the strategy must
    be given (unless the source is one whole rank_0) and parse, before any rank waits on rank 0."""
    from petrun.parallel.strategy_file import read_strategy, strategy_files
    key = "src_strategy_path_or_dir"
    strategy = cfg.get(key)
    ranks = [d for d in path.iterdir() if d.is_dir() and d.name.startswith("rank_")]
    if strategy in (None, "", "None"):
        if len(ranks) > 1:
            out.append(Finding("checkpoint", f"{path} holds {len(ranks)} rank_N/ shards but no "
                               "strategy says how they were cut",
                               "pass --src_strategy_path_or_dir with the strategy file (or folder) "
                               "of the run that saved them", key, str(path)))
        return
    p = Path(os.path.expanduser(str(strategy)))
    if p.is_dir():
        files = strategy_files(p)
        if not files:
            out.append(Finding("checkpoint", "no strategy files (*.ckpt / *.json) in this folder",
                               "point it at output/strategy of the run that saved the checkpoint",
                               key, str(p)))
            return
    elif p.is_file():
        files = [p]
    else:
        out.append(Finding("checkpoint", "strategy file does not exist",
                           "pass a ckpt_strategy_rank_N.ckpt file or the folder holding them", key, str(p)))
        return
    for f in files:
        try:
            read_strategy(f, key)
        except UserError as e:
            out.append(_finding("checkpoint", e))
            return


def _check_dataset(cfg, verb: str, path: str, out: list[Finding], cheap_only: bool) -> str | None:
    """check_dataset on the verb's data; returns a reason when it was skipped."""
    from petrun.data import loader
    from petrun.data import mindrecord as mr
    from petrun.models.registry import arch_entry
    key = _DATASET_KEYS[verb]
    expanded = os.path.expanduser(path)
    mindrecord = os.path.isdir(expanded) or mr.is_mindrecord_name(expanded)
    if mindrecord and cheap_only:
        # Reading a MindRecord header needs MindSpore (3–5 s to import): not worth it when the
        # run is already known to fail.
        return "MindRecord contents (other problems first)"
    seq = int(cfg.get("model.model_config.seq_length") or 0)
    if verb in ("finetune", "train"):
        batch = int(cfg.get("runner_config.batch_size") or cfg.get("train_dataset.batch_size") or 1)
        drop = bool(cfg.get("train_dataset.drop_remainder", True))
    else:
        batch = int(cfg.get("eval_dataset.batch_size") or cfg.get("runner_config.batch_size") or 1)
        drop = bool(cfg.get("eval_dataset.drop_remainder", False))
    from petrun.data.ondemand import RawText
    raw = RawText.from_config(cfg, "train_dataset" if verb in ("finetune", "train") else "eval_dataset")
    try:
        loader.check_dataset(path, seq_length=seq, batch_size=batch,
                             extra_tokens=arch_entry(cfg.get("model.arch.type")).extra_tokens,
                             columns=["input_ids", "labels"], drop_remainder=drop, key=key, raw=raw,
                             vocab_size=_vocab_size(cfg))
    except UserError as e:
        out.append(_finding("dataset", e))
    return None


def _vocab_size(cfg) -> int | None:
    from petrun.models.registry import build_config, embedding_rows
    try:
        return embedding_rows(build_config(cfg.get("model")))
    except UserError:
        return None   # reported by the model check


def _check_parallel(cfg, warnings: list[str]) -> None:
    """A layout written into the config but switched off by use_parallel runs on one device;
    MindFormers says nothing either, and users wonder why one card is busy."""
    if cfg.get("use_parallel"):
        return
    set_ = [f"{k}={cfg.get(f'parallel_config.{k}')}" for k in
            ("data_parallel", "model_parallel", "pipeline_stage")
            if int(cfg.get(f"parallel_config.{k}") or 1) > 1]
    if set_:
        warnings.append(f"parallel_config {', '.join(set_)} has no effect with use_parallel "
                        "False: this runs on one device (launch with `petrun launch` or "
                        "scripts/msrun_launcher.sh and --use_parallel True to use them)")


def run_setting_errors(cfg, verb: str) -> list[UserError]:
    """Settings a training run refuses: packing with a prompt-learning method (the registry's
    PetMethod.packing) or with semi-auto parallel, do_eval that never evaluates. The one copy of
    these rules: the pre-flight reports them (and `config validate` with it), and the finetune
    recipe raises the first at its start, so --skip-preflight and the Python API meet them too."""
    if verb not in ("finetune", "train"):
        return []
    errors = []
    if cfg.get("train_dataset.packing"):
        from petrun.pet.config import method
        pet = (cfg.get("model.model_config.pet_config") or {}).get("pet_type")
        key = "train_dataset.packing"
        if (method(pet) is not None and not method(pet).packing) or \
                "Ptuning2" in str(cfg.get("model.arch.type")):
            errors.append(UserError(
                f"packing is not supported with pet_type {pet}: its virtual tokens or key/value "
                "prefix belong to one sample, not to a packed row", key=key, file=cfg.origin(key),
                fix="set train_dataset.packing: False (or use LoRA, IA3, adapters or a full "
                    "finetune), or train_dataset.bucketing: True instead"))
        elif (cfg.get("model.model_config.use_attn_mask_compression")
              and cfg.get("model.model_config.use_flash_attention")
              and cfg.get("context.device_target") == "Ascend"):
            # FlashAttentionScore sparse_mode 2 is one causal triangle: it cannot hold the
            # block-causal mask of a packed row (kernels.FlashAttentionCore)
            key = "model.model_config.use_attn_mask_compression"
            errors.append(UserError(
                "use_attn_mask_compression replaces the attention mask with one causal "
                "triangle, so it cannot keep packed samples apart (train_dataset.packing)",
                key=key, file=cfg.origin(key),
                fix="set model.model_config.use_attn_mask_compression: False, or "
                    "train_dataset.packing: False"))
        elif cfg.get("use_parallel"):
            from petrun.parallel.context import parallel_mode
            try:
                mode = parallel_mode(cfg)
            except UserError as e:
                errors.append(e)
            else:
                # per-batch rotary tables / position embeddings have no semi-auto strategies yet
                if mode != "DATA_PARALLEL":
                    errors.append(UserError(
                        "packing is not built for semi-auto/auto parallel yet", key=key,
                        file=cfg.origin(key), fix="set train_dataset.packing: False (data "
                                                  "parallel and single-device runs support it)"))
    if cfg.get("do_eval"):
        steps = int(cfg.get("eval_step_interval") or 0)
        epochs = int(cfg.get("eval_epoch_interval") or 0)
        if steps <= 0 and epochs <= 0:
            errors.append(UserError(
                "do_eval is True but neither eval_step_interval nor eval_epoch_interval is "
                "positive, so evaluation would never run", key="eval_step_interval",
                file=cfg.origin("do_eval"),
                fix="set eval_step_interval: N (every N steps) or eval_epoch_interval: N"))
    return errors


def _check_run_settings(cfg, verb: str, out: list[Finding]) -> None:
    out.extend(_finding("model", e, cfg) for e in run_setting_errors(cfg, verb))


def config_verb(cfg) -> str:
    """The verb a config describes for `config validate`: its run_mode (MindFormers' default
    run_mode is train), petrun's verbs by the same names."""
    mode = cfg.get("run_mode")
    return mode if mode in ("train", "finetune", "eval", "predict") else "finetune"


def config_findings(cfg, verb: str | None = None) -> tuple[list[Finding], list[str]]:
    """(problems, warnings) for `petrun config validate`: the pre-flight's checks through
    `preflight_checks`, without memory, and with paths missing on this machine as warnings."""
    verb = verb or config_verb(cfg)
    findings, report = preflight_checks(cfg, verb, memory=False)
    warnings = list(report.warnings)
    problems = []
    for f in findings:
        if f.check == "paths":
            where = f" ({f.file})" if f.file else ""
            warnings.append(f"{f.key}: {f.message}{where} — checked on this machine, so a "
                            f"warning here; `petrun {verb}` refuses to start while it holds"
                            + (f". Fix: {f.fix}" if f.fix else ""))
        else:
            problems.append(f)
    return problems, warnings


# -------------------------------------------------------------------------------------- entry
def run_preflight(cfg, verb: str, *, device_memory: int | None = None,
                  adapter: str | None = None) -> PreflightReport:
    """All checks for `petrun <verb>` on the resolved `cfg`; raises PreflightError listing every
    problem, or returns what was checked and the memory estimate."""
    findings, report = preflight_checks(cfg, verb, device_memory=device_memory, adapter=adapter)
    if findings:
        raise PreflightError(findings, report.seconds)
    return report


def preflight_checks(cfg, verb: str, *, memory: bool = True, device_memory: int | None = None,
                     adapter: str | None = None) -> tuple[list[Finding], PreflightReport]:
    """Every check, in one place: (findings, report). run_preflight and config validate both
    call this, so validate can never pass what a run's pre-flight refuses (apart from the two
    differences in the module docstring)."""
    t0 = time.perf_counter()
    findings: list[Finding] = []
    report = PreflightReport(0.0)
    model = _check_model(cfg, verb, findings)
    _check_run_settings(cfg, verb, findings)
    report.checked.append("model")
    _check_parallel(cfg, report.warnings)
    if model is not None and memory:
        try:
            report.estimate = _check_memory(cfg, verb, findings, device_memory, report.warnings)
            report.checked.append("memory")
        except UserError as e:
            findings.append(_finding("memory", e, cfg))
    elif not memory:
        report.skipped.append("memory (depends on the machine that runs it: petrun plan)")
    paths = _check_paths(cfg, verb, findings)
    if adapter and not os.path.exists(os.path.expanduser(str(adapter))):
        findings.append(Finding("paths", "adapter path does not exist",
                                "pass the adapter .ckpt, or the checkpoint folder a finetune wrote "
                                "(output_dir/checkpoint/rank_0)", "--adapter", str(adapter)))
    report.checked.append("paths")
    if "checkpoint" in paths and model is not None:
        if cfg.get("auto_trans_ckpt") and _is_sharded(paths["checkpoint"]):
            _check_source_strategy(cfg, paths["checkpoint"], findings)
        else:
            _check_checkpoint(cfg, paths["checkpoint"], model, findings)
        report.checked.append("checkpoint")
    if "dataset" in paths:
        skipped = _check_dataset(cfg, verb, paths["dataset"], findings, cheap_only=bool(findings))
        if skipped:
            report.skipped.append(skipped)
        else:
            report.checked.append("dataset")
    report.seconds = time.perf_counter() - t0
    return findings, report
