"""MindFormers' Trainer, for the three families petrun runs: same arguments, same verbs.

    from petrun import Trainer            # MindFormers: from mindformers.trainer.trainer import Trainer
    Trainer(task='text_generation', model='gpt2', pet_method='lora',
            train_dataset='/data/wikitext-2/train').finetune()
    Trainer(task='text_generation', model='glm2_6b', pet_method='ptuning2',
            train_dataset='AdvertiseGen/train.json').finetune(finetune_checkpoint='glm2_6b')

The signature is MindFormers r1.1.0–r1.3.0's (r1.0 ordered train_dataset/eval_dataset before
tokenizer; pass them by keyword). How the config is found, as in MindFormers:

* `model` a model-book name (`gpt2`, `llama2_7b`, `glm2_6b`, `glm2_6b_lora`, ...): MindFormers
  runs the YAML its book lists for `<model>_<pet_method>`; petrun runs its copy of that YAML
  (petrun/store/recipes.py) with the model's sizes, weights and tokenizer from the local model
  store (petrun/store: `petrun models add NAME --from ...`; nothing is downloaded).
* `args` (or petrun's `config`, or `model` given as a YAML path / Config): that YAML is the run.
  With `model` also a name, the store still supplies weights, sizes and tokenizer.

petrun's own keyword: `overrides=[...]`, dotted `key=value` words applied last, exactly as on the
command line (e.g. `overrides=["runner_config.stop_step=100", "output_dir=./out"]`: MindFormers
r1.0–r1.3 has no step cap in its Trainer arguments; its configs carry runner_config.stop_step from
r1.4 on). The verbs run the same code as `petrun finetune|train|eval|predict`, pre-flight checks
included, and return its summary.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from petrun.config import Config, load_config, with_overrides
from petrun.config.overrides import Override
from petrun.errors import UserError
from petrun.models.registry import family_of_arch

# MindFormers' task names (MindFormerBook r1.0–r1.3); petrun runs the causal-LM ones.
SUPPORTED_TASKS = ("text_generation", "general")
MINDFORMERS_TASKS = ("general", "masked_image_modeling", "image_classification", "fill_mask",
                     "contrastive_language_image_pretrain", "image_to_text_retrieval",
                     "zero_shot_image_classification", "image_to_text_generation",
                     "multi_modal_to_text_generation", "translation", "text_classification",
                     "token_classification", "question_answering", "text_generation",
                     "segment_anything")
_DTYPE_KEYS = ("compute_dtype", "param_init_type", "layernorm_compute_type",
               "softmax_compute_type", "rotary_dtype", "residual_dtype", "embedding_init_type")
_TOKENIZER_FILES = ("vocab_file", "merges_file", "tokenizer_file")


def _check_task(task: str) -> None:
    if task in SUPPORTED_TASKS:
        return
    known = "a MindFormers task petrun does not run" if task in MINDFORMERS_TASKS else \
        "not a MindFormers task"
    raise UserError(f"task={task!r} is {known}; petrun supports {', '.join(SUPPORTED_TASKS)} "
                    "(causal language models: Llama2, ChatGLM2, GPT-2)", key="task",
                    fix="use task='text_generation'")


def _refuse_objects(**given) -> None:
    """MindFormers arguments that hand in Python objects petrun does not take: each has a YAML
    section that does the job."""
    instead = {"data_collator": "the dataset's YAML (train_dataset)",
               "optimizers": "the optimizer and lr_schedule sections",
               "compute_metrics": "the metric section (petrun eval reports loss and perplexity)",
               "callbacks": "the callbacks section", "eval_callbacks": "the eval_callbacks section",
               "image_processor": "nothing: petrun runs text models",
               "audio_processor": "nothing: petrun runs text models"}
    for name, value in given.items():
        if value is not None:
            raise UserError(f"{name}= is not supported by petrun's Trainer", key=name,
                            fix=f"leave it out and set {instead[name]} (args=YAML or "
                                "overrides=[...])")


def _is_yaml_path(value) -> bool:
    return isinstance(value, (str, Path)) and str(value).endswith((".yaml", ".yml"))


def _split_name(name: str, pet_method: str | None) -> tuple[str, str | None]:
    """('glm2_6b', 'lora') for 'glm2_6b_lora' unless the store has that exact name; MindFormers
    itself appends _<pet_method> to the name."""
    from petrun import store
    from petrun.pet.config import PET_CONFIGS
    if store.exists(name):
        return name, pet_method
    for method in PET_CONFIGS:
        suffix = f"_{method}"
        if name.endswith(suffix) and len(name) > len(suffix):
            if pet_method and pet_method != method:
                raise UserError(f"model={name!r} names {method} but pet_method={pet_method!r}",
                                key="pet_method", fix="give one of them")
            return name[:-len(suffix)], method
    return name, pet_method


class Trainer:
    """MindFormers-style entry point; see the module docstring."""

    def __init__(self, args: str | Path | Config | None = None, task: str = "general",
                 model: str | Path | Config | None = None, model_name: str | None = None,
                 tokenizer: str | Path | None = None,
                 train_dataset: str | Path | None = None, eval_dataset: str | Path | None = None,
                 data_collator=None, optimizers=None, compute_metrics=None, callbacks=None,
                 eval_callbacks=None, pet_method: str | None = "", image_processor=None,
                 audio_processor=None, save_config: bool = False, reset_model: bool = False,
                 *, config: str | Path | Config | None = None, overrides: Iterable[str] = (),
                 console=None):
        # As the CLI does: MindSpore's C++ INFO/WARNING lines (e.g. "parameters not loaded",
        # which petrun checks itself) stay off unless the user set GLOG_v. Read at its import.
        os.environ.setdefault("GLOG_v", "3")
        _check_task(task)
        _refuse_objects(data_collator=data_collator, optimizers=optimizers,
                        compute_metrics=compute_metrics, callbacks=callbacks,
                        eval_callbacks=eval_callbacks, image_processor=image_processor,
                        audio_processor=audio_processor)
        if console is None:  # library users see the same progress and summary as CLI users
            from rich.console import Console
            console = Console()
        self.console = console
        self.task = task
        self.pet_method = pet_method or None
        self.user_overrides = list(overrides)
        source, name = self._sources(args, config, model, model_name)
        self.entry, self.recipe = None, None
        method = self.pet_method
        if name is not None:
            from petrun import store
            name, method = _split_name(name, method)
            self.entry = store.get(name, key="model")
        self.pet_method = method
        base, pet = self._base(source, method)
        extra = []
        if self.entry is not None:
            extra += self._store_overlay(base)
        extra += self._pet_overlay(base, pet, method)
        if tokenizer is not None:
            extra += self._tokenizer_overlay(base, tokenizer)
        for value, section in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            if value is not None:
                extra.append(self._dataset(value, section))
        cfg = with_overrides(base, extra)
        if self.entry is not None and source is None:
            cfg = self._device_fallback(cfg)
        self.config = with_overrides(cfg, self.user_overrides) if self.user_overrides else cfg
        self._last_checkpoint_dir = None
        if save_config:
            out = Path(str(self.config.get("output_dir") or "./output"))
            out.mkdir(parents=True, exist_ok=True)
            stem = str(self.config.get("trainer.model_name") or "petrun").lower()
            (out / f"{stem}_new.yaml").write_text(self.config.to_yaml(), encoding="utf-8")

    # ------------------------------------------------------------------ config assembly

    def _sources(self, args, config, model, model_name) -> tuple[Any, str | None]:
        """(YAML path or Config or None, store name or None) from the ways MindFormers allows."""
        given = [(n, v) for n, v in (("args", args), ("config", config)) if v is not None]
        if isinstance(model, Config) or _is_yaml_path(model):
            given.append(("model", model))
            model = None
        if len(given) > 1:
            raise UserError(f"{' and '.join(n for n, _ in given)} both give the run's config",
                            key=given[1][0], fix="pass the YAML once")
        if model is not None and not isinstance(model, (str, Path)):
            raise UserError(f"model= got a {type(model).__name__}; petrun builds its models from "
                            "the config", key="model",
                            fix="pass a model name from the store (e.g. model='gpt2'), a YAML "
                                "path or a Config")
        name = str(model) if model is not None else model_name
        source = given[0][1] if given else None
        if source is None and name is None:
            raise UserError("no model: give model='<name>' (from `petrun models list`) or "
                            "args='<YAML>'", key="model",
                            fix="e.g. Trainer(task='text_generation', model='gpt2', "
                                "pet_method='lora', train_dataset=...)")
        if isinstance(source, (str, Path)) and not _is_yaml_path(source):
            raise UserError("the config must be a .yaml/.yml file", file=str(source), key="args",
                            fix="pass the YAML path, or a petrun Config")
        return source, name

    def _base(self, source, method) -> tuple[Config, dict | None]:
        """The run's YAML before overlays, and the pet_config to add (None: keep the YAML's)."""
        if source is not None:
            cfg = source if isinstance(source, Config) else load_config(source)
            return cfg, None
        from petrun.store import recipes
        path, pet = recipes.recipe(self.entry.family, self.entry.name, method)
        self.recipe = path
        return load_config(path), pet

    def _store_overlay(self, base: Config) -> list[Override]:
        """The store entry's model sizes, weights and tokenizer on top of the recipe."""
        entry = self.entry
        family = family_of_arch(base.get("model.arch.type"))
        if family != entry.family:
            raise UserError(f"model {entry.name!r} is a {entry.family} model but the config's "
                            f"model.arch.type is {base.get('model.arch.type')!r}", key="model",
                            fix="pass a config of the same family, or another model")
        doc = entry.model_yaml()
        out = [Override(f"model.model_config.{k}", v, text=f"model {entry.name}")
               for k, v in doc["model"]["model_config"].items() if k != "type"]
        out.append(Override("load_checkpoint", doc["load_checkpoint"], text=f"model {entry.name}"))
        cap = entry.max_positions
        seq = int(base.get("model.model_config.seq_length") or 0)
        if entry.family == "gpt2" and cap and seq > cap:
            # learned positions: the table has `cap` rows; MindFormers sizes gpt2 data to seq+1
            out.append(Override("model.model_config.seq_length", cap, text=f"model {entry.name}"))
        tok = (doc.get("processor") or {}).get("tokenizer")
        if tok:
            out += self._tokenizer_sections(base, tok, f"model {entry.name}")
        return out

    @staticmethod
    def _tokenizer_sections(base: Config, tok: dict, text: str) -> list[Override]:
        """processor.tokenizer (and a dataset's own tokenizer, GLM2 style) with these files."""
        out = []
        for key in ("processor.tokenizer", "train_dataset.tokenizer", "eval_dataset.tokenizer"):
            current = base.get(key)
            if key != "processor.tokenizer" and not isinstance(current, dict):
                continue
            merged = {k: v for k, v in dict(current or {}).items() if k not in _TOKENIZER_FILES}
            merged.update(tok)
            out.append(Override(key, merged, text=text))
        return out

    def _tokenizer_overlay(self, base: Config, tokenizer) -> list[Override]:
        if not isinstance(tokenizer, (str, Path)):
            raise UserError(f"tokenizer= got a {type(tokenizer).__name__}; petrun reads tokenizer "
                            "files", key="tokenizer",
                            fix="pass the path of a tokenizer.model, tokenizer.json or vocab.json")
        from petrun.data.tokenizer import tokenizer_config_for_path
        kind = base.get("processor.tokenizer.type")
        section = tokenizer_config_for_path(tokenizer, kind)
        return self._tokenizer_sections(base, section, "tokenizer=")

    def _pet_overlay(self, base: Config, pet: dict | None, method: str | None) -> list[Override]:
        current = base.get("model.model_config.pet_config.pet_type")
        if method is None:
            return []
        if current is not None and pet is None:
            if current != method:
                raise UserError(f"pet_method={method!r} but the config's pet_type is {current!r}",
                                key="model.model_config.pet_config.pet_type",
                                fix="make them agree (or leave pet_method out)")
            return []
        if pet is None:   # a user YAML without pet_config: the family's default
            from petrun.store import recipes
            family = family_of_arch(base.get("model.arch.type"))
            if family is None:
                raise UserError(f"pet_method={method!r} but the config has no pet_config",
                                key="model.model_config.pet_config",
                                fix="add a pet_config section to the YAML")
            pet = recipes.default_pet_config(family, method)
        out = [Override("model.model_config.pet_config", pet, text=f"pet_method={method}")]
        if pet.get("pet_type") == "ptuning2" and base.get("model.arch.type", "").startswith(
                "ChatGLM2"):
            # MindFormers' GLM2 P-Tuning v2 is an arch of its own with the prefix length on the
            # model config too (run_glm2_6b_ptuning2.yaml)
            out += [Override("model.arch.type", "ChatGLM2WithPtuning2", text="pet_method"),
                    Override("model.model_config.pre_seq_len", pet["pre_seq_len"],
                             text="pet_method")]
        return out

    @staticmethod
    def _dataset(value, section: str) -> Override:
        if not isinstance(value, (str, Path)):
            raise UserError(f"{section}= got a {type(value).__name__}; petrun reads datasets from "
                            "files", key=section,
                            fix="pass a path: MindRecord (file or folder), JSON/JSONL, raw "
                                "alpaca/AdvertiseGen JSON or a wikitext folder")
        path = os.path.abspath(os.path.expanduser(str(value)))
        if not os.path.exists(path):   # as MindFormers' Trainer asserts
            raise UserError(f"{section} path does not exist", file=path, key=section,
                            fix="check the path (relative paths are resolved against the current "
                                "directory)")
        return Override(f"{section}.data_loader.dataset_dir", path, text=f"{section}=")

    def _device_fallback(self, cfg: Config) -> Config:
        """A model name comes with a recipe written for Ascend. Where this MindSpore cannot run
        Ascend (the PyPI CPU wheel), run on CPU in float32 and say so, unless the user's
        overrides chose the device or a dtype."""
        from petrun.parallel.context import target_available
        target = cfg.get("context.device_target") or "CPU"
        mine = {o.split("=", 1)[0].lstrip("-") for o in self.user_overrides if isinstance(o, str)}
        if target == "CPU" or "context.device_target" in mine or target_available(target):
            return cfg
        out = [Override("context.device_target", "CPU", text="device fallback")]
        for key in _DTYPE_KEYS:
            full = f"model.model_config.{key}"
            if cfg.get(full) in ("float16", "bfloat16") and full not in mine:
                out.append(Override(full, "float32", text="device fallback"))
        self.console.print(f"[dim]{target} is not available in this MindSpore build: running on "
                           "CPU in float32 (set overrides=['context.device_target=...'] to "
                           "choose)[/dim]", highlight=False, soft_wrap=True)
        return with_overrides(cfg, out)

    # ------------------------------------------------------------------ weights

    def _weights(self, value, key: str) -> tuple[str | None, str | None]:
        """(load_checkpoint, adapter) for a *_checkpoint argument: a store name, a path to base
        weights (file/folder), or to an adapter only (a finetune's output)."""
        if value is None or value is False:
            return None, None
        if value is True:
            folder = self._checkpoint_dir()
            return None, str(folder)
        if not isinstance(value, (str, Path)):
            raise UserError(f"{key}= got a {type(value).__name__}", key=key,
                            fix="pass a path, a model name from the store, or True")
        from petrun import store
        text = str(value)
        if store.exists(text):
            entry = store.get(text, key=key)
            family = family_of_arch(self.config.get("model.arch.type"))
            if entry.family != family:
                raise UserError(f"{key}={text!r} is a {entry.family} model, this run is {family}",
                                key=key, fix="pass weights of this model")
            return str(entry.checkpoint), None
        path = os.path.expanduser(text)
        if not os.path.exists(path):
            raise UserError(f"{key}={text!r} is neither a path nor a model in the store "
                            f"({store.root()})", key=key,
                            fix=f"give a checkpoint file or folder, or add the model: "
                                f"{store.add_command(text)}")
        from petrun.ckpt.index import checkpoint_index
        from petrun.ckpt.io import ADAPTER_PATTERN
        import fnmatch
        names = list(checkpoint_index(path, key=key)[0])
        if names and all(fnmatch.fnmatchcase(n, ADAPTER_PATTERN) or n.startswith(
                ("adam_", "global_step", "loss_scale", "scale_sense")) for n in names):
            return None, path
        return path, None

    def _checkpoint_dir(self) -> Path:
        from petrun.ckpt.layout import checkpoint_dir
        out = checkpoint_dir(str(self.config.get("output_dir") or "./output"), 0)
        if not out.is_dir():
            raise UserError("no checkpoint from an earlier run of this config", file=str(out),
                            key="checkpoint", fix="finetune first, or pass the checkpoint path")
        return out

    # ------------------------------------------------------------------ verbs

    def _run(self, verb: str, extra: list[Override], options: dict | None = None):
        from petrun.jobs import run_job
        cfg = with_overrides(self.config, extra) if extra else self.config
        return run_job(cfg, verb, self.console, options=options)

    def _train_overrides(self, checkpoint, key: str, resume_from_checkpoint, resume_training,
                         ignore_data_skip, data_skip_steps, auto_trans_ckpt, src_strategy,
                         transform_process_num, do_eval) -> list[Override]:
        if ignore_data_skip or data_skip_steps is not None:
            raise UserError("petrun resumes step-exactly and always skips the consumed data",
                            key="data_skip_steps" if data_skip_steps is not None
                            else "ignore_data_skip", fix="leave it out")
        # MindFormers r1.1+: finetune_checkpoint is resume_from_checkpoint's old name; True means
        # "the last checkpoint of this output_dir", which petrun continues step-exactly.
        ckpt = resume_from_checkpoint if resume_from_checkpoint not in (None, False) else checkpoint
        out = []
        if ckpt is True or resume_training is True and isinstance(ckpt, (str, Path)):
            out.append(Override("resume_training", True if ckpt is True else str(ckpt), text=key))
        elif ckpt not in (None, False):
            weights, adapter = self._weights(ckpt, key)
            if adapter is not None:
                raise UserError(f"{key} holds only adapter tensors; the base weights come from "
                                "the model", file=str(adapter), key=key,
                                fix="to continue that run pass resume_training=True with it")
            out.append(Override("load_checkpoint", weights, text=key))
        elif resume_training is True:
            out.append(Override("resume_training", True, text="resume_training"))
        if isinstance(resume_training, str):
            out.append(Override("resume_training", resume_training, text="resume_training"))
        for name, value in (("auto_trans_ckpt", auto_trans_ckpt),
                            ("src_strategy_path_or_dir", src_strategy),
                            ("transform_process_num", transform_process_num)):
            if value is not None:
                out.append(Override(name, value, text=name))
        if do_eval:
            out.append(Override("do_eval", True, text="do_eval"))
        return out

    def finetune(self, finetune_checkpoint: str | Path | bool | None = False,
                 resume_from_checkpoint: str | Path | bool | None = None,
                 resume_training: bool | str | None = None, ignore_data_skip: bool | None = None,
                 data_skip_steps: int | None = None, auto_trans_ckpt: bool | None = None,
                 src_strategy: str | None = None, transform_process_num: int | None = None,
                 do_eval: bool = False) -> dict:
        """Run the finetune recipe; returns its summary (losses, checkpoint paths, timing).

        finetune_checkpoint: a model name from the store (MindFormers ≤ r1.2 accepted 'glm2_6b'
        there), base weights (file or folder), or True to continue this output_dir's last run.
        Without it, a model from the store starts from its stored weights.
        """
        return self._run("finetune", self._train_overrides(
            finetune_checkpoint, "finetune_checkpoint", resume_from_checkpoint, resume_training,
            ignore_data_skip, data_skip_steps, auto_trans_ckpt, src_strategy,
            transform_process_num, do_eval))

    def train(self, train_checkpoint: str | Path | bool | None = False,
              resume_from_checkpoint: str | Path | bool | None = None,
              resume_training: bool | str | None = None, ignore_data_skip: bool | None = None,
              data_skip_steps: int | None = None, auto_trans_ckpt: bool | None = None,
              src_strategy: str | None = None, transform_process_num: int | None = None,
              do_eval: bool = False) -> dict:
        """Same recipe as finetune (MindFormers' run_mode train); train_checkpoint as
        finetune_checkpoint."""
        return self._run("train", self._train_overrides(
            train_checkpoint, "train_checkpoint", resume_from_checkpoint, resume_training,
            ignore_data_skip, data_skip_steps, auto_trans_ckpt, src_strategy,
            transform_process_num, do_eval))

    def _infer_overrides(self, checkpoint, key, auto_trans_ckpt, src_strategy,
                         transform_process_num) -> tuple[list[Override], str | None]:
        weights, adapter = self._weights(checkpoint, key)
        out = [Override("load_checkpoint", weights, text=key)] if weights else []
        for name, value in (("auto_trans_ckpt", auto_trans_ckpt),
                            ("src_strategy_path_or_dir", src_strategy),
                            ("transform_process_num", transform_process_num)):
            if value is not None:
                out.append(Override(name, value, text=name))
        return out, adapter

    def evaluate(self, eval_dataset: str | Path | None = None,
                 eval_checkpoint: str | Path | bool | None = False,
                 auto_trans_ckpt: bool | None = None, src_strategy: str | None = None,
                 transform_process_num: int | None = None, **kwargs) -> dict:
        """Loss and perplexity on eval_dataset; eval_checkpoint: True (this output_dir's last
        adapter), an adapter or base-weights path, or a model name from the store."""
        if kwargs:
            raise UserError(f"evaluate() does not take {', '.join(sorted(kwargs))}",
                            key=sorted(kwargs)[0], fix="set it in the YAML or overrides=[...]")
        extra, adapter = self._infer_overrides(eval_checkpoint, "eval_checkpoint",
                                               auto_trans_ckpt, src_strategy,
                                               transform_process_num)
        if eval_dataset is not None:
            extra.append(self._dataset(eval_dataset, "eval_dataset"))
        return self._run("eval", extra, {"adapter": adapter})

    def predict(self, predict_checkpoint: str | Path | bool | None = None,
                auto_trans_ckpt: bool | None = None, src_strategy: str | None = None,
                transform_process_num: int | None = None,
                input_data: str | list[str] | None = None, batch_size: int | None = None,
                **kwargs) -> dict:
        """Generate from input_data (a prompt, a list of prompts, or a prompt file). kwargs as
        MindFormers' generate: max_length (prompt + new tokens), max_new_tokens, do_sample,
        top_k, top_p, repetition_penalty, temperature. Returns petrun predict's summary
        (results: prompt, ids, text per input)."""
        extra, adapter = self._infer_overrides(predict_checkpoint, "predict_checkpoint",
                                               auto_trans_ckpt, src_strategy,
                                               transform_process_num)
        options: dict[str, Any] = {"adapter": adapter}
        if isinstance(input_data, (str, Path)) and os.path.isfile(os.path.expanduser(str(input_data))):
            options["prompt_file"] = os.path.expanduser(str(input_data))
        elif isinstance(input_data, str):
            options["prompt"] = [input_data]
        elif isinstance(input_data, (list, tuple)) and input_data and all(
                isinstance(x, str) for x in input_data):
            options["prompt"] = list(input_data)
        else:
            raise UserError("input_data must be a prompt, a list of prompts or a prompt file",
                            key="input_data", fix="e.g. predict(input_data='I love Beijing, "
                                                  "because')")
        if batch_size is not None:
            extra.append(Override("model.model_config.batch_size", int(batch_size),
                                  text="batch_size"))
        max_length = kwargs.pop("max_length", None)
        if max_length is not None:
            extra.append(Override("model.model_config.max_decode_length", int(max_length),
                                  text="max_length"))
        for name in ("max_new_tokens", "do_sample", "top_k", "top_p", "repetition_penalty",
                     "temperature"):
            if name in kwargs:
                options[name] = kwargs.pop(name)
        if kwargs:
            raise UserError(f"predict() does not take {', '.join(sorted(kwargs))}",
                            key=sorted(kwargs)[0],
                            fix="use max_length, max_new_tokens, do_sample, top_k, top_p, "
                                "repetition_penalty or temperature")
        return self._run("predict", extra, options)
