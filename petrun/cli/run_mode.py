"""Which run modes each verb runs, and which verb a run mode names (no MindSpore, no typer).

MindFormers picks the entry point from `run_mode`, with the `--run_mode` flag overriding the
YAML key (run_mindformer.py r1.0-r1.3). petrun's verbs name the mode themselves, so:

* A verb refuses a `--run_mode` (or `run_mode=` override) of another verb: `petrun finetune
  --run_mode predict` would otherwise train when predicting was asked for.
* finetune and train accept each other's mode. From r1.1.0 on, run_mindformer.py sends both to
  the same `Trainer.train()`; only r1.0 differed (its finetune refused a run without
  load_checkpoint). petrun follows r1.1+: one recipe, either name.
* The YAML's own `run_mode:` key yields to the verb, as the YAML yields to MindFormers' flag:
  the verb is what the user typed last. The resolved config then says the verb's mode, so
  `config show`, the planner and the run manifest agree with what ran.
* `petrun run` (run_mindformer.py's entry) runs the verb the effective run mode names: the last
  of --run_mode / run_mode= / --options run_mode=, else the YAML's key; neither is an error, as
  in MindFormers (whose flag has no default).
"""
from __future__ import annotations

from petrun.config.overrides import Override
from petrun.errors import UserError

RUN_MODES = ("train", "finetune", "eval", "predict")
ACCEPTS = {"finetune": ("finetune", "train"), "train": ("train", "finetune"),
           "eval": ("eval",), "predict": ("predict",)}


def check_value(mode, key: str = "--run_mode", file: str | None = None) -> str:
    """`mode` if it is a run mode petrun runs; otherwise a UserError naming what is."""
    text = str(mode)
    if text in RUN_MODES:
        return text
    if text == "export":
        # run_mindformer.py r1.0 only: export a MindIR graph for MindSpore Lite serving.
        raise UserError("run_mode export (MindFormers r1.0: a MindIR graph for serving) is not "
                        "supported", key=key, file=file,
                        fix="petrun ckpt merge folds an adapter into a checkpoint other tools "
                            "load; petrun predict generates text")
    raise UserError(f"run_mode '{text}' is not one of {', '.join(RUN_MODES)}", key=key, file=file,
                    fix="write --run_mode finetune (or train, eval, predict)")


def requested(overrides: list[Override]) -> Override | None:
    """The override that decides run_mode (the last one), if any."""
    found = [o for o in overrides if o.key == "run_mode" and not o.delete]
    return found[-1] if found else None


def for_verb(verb: str, overrides: list[Override]) -> list[Override]:
    """Check the run mode the command line asks for against `verb`; returns the override that
    sets run_mode to the verb's when the command line names none (the YAML's key yields)."""
    asked = requested(overrides)
    if asked is None:
        return [Override("run_mode", verb, text=f"petrun {verb}")]
    key = asked.text.split(" ")[0].split("=")[0] if asked.text.startswith("--") else "run_mode"
    mode = check_value(asked.value, key)
    if mode not in ACCEPTS[verb]:
        raise UserError(f"`{asked.text}` asks for {mode}, but this is petrun {verb}", key=key,
                        fix=f"run petrun {mode} with the same arguments (or petrun run "
                            f"--run_mode {mode} …), or drop {key}")
    return []
