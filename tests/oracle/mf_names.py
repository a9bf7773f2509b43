"""MindFormers oracle: the parameters MindFormers 1.3.2 itself builds for a model config.

Runs inside the oracle venv (.venv-mf, scripts/_mf_oracle_venv.sh), never inside petrun's: it
imports mindformers, which pins tokenizers/datasets/pyarrow that petrun's environment refuses.
stdin: a JSON list of {"arch": "LlamaForCausalLM", "model_config": {..., "pet_config": {...}}}.
stdout (last line): a JSON list, per spec, of [name, shape, requires_grad] for every parameter,
or {"error": "..."} for a spec MindFormers refuses to build.
A spec with "load": "<file>.ckpt" instead loads that checkpoint the way MindFormers' trainer does
(load_checkpoint + non-strict load_param_into_net, trainer/utils.py) and reports
{"not_loaded": [names], "prefix_ids": {name: values}} (the prefix-ids Parameters after the load).
"""
import contextlib
import json
import os
import sys
import traceback
import types

MINDFORMERS = "1.3.2"   # the last release with Llama2, ChatGLM2 and GPT2 together
MINDSPORE = "2.10.0"    # petrun's own, linked in from .venv


def stub_removed_modules():
    """mindformers 1.3.2 imports mindspore.dataset.transforms.py_transforms (removed in MindSpore
    2.x) at package import, only to subclass PyTensorOperation for its vision masks. The models
    read here never touch it, so an empty base class is enough."""
    import mindspore.dataset.transforms as transforms
    name = "mindspore.dataset.transforms.py_transforms"
    if name in sys.modules or hasattr(transforms, "py_transforms"):
        return
    module = types.ModuleType(name)
    module.PyTensorOperation = type("PyTensorOperation", (), {})
    sys.modules[name] = module
    transforms.py_transforms = module


def build(spec):
    """The network MindFormers' own build_network makes for `model: {arch, model_config}`:
    the arch class from its registry (ChatGLM2WithPtuning2 adds its prefix encoder itself), then
    get_pet_model when model_config has a pet_config."""
    from mindformers.models.build_model import build_network
    from mindformers.tools.register import MindFormerConfig
    model_config = dict(spec["model_config"])
    model_config["checkpoint_name_or_path"] = None   # never load or download weights
    config = MindFormerConfig(**{"arch": {"type": spec["arch"]}, "model_config": model_config})
    return build_network(config)


def load(net, path):
    import mindspore as ms
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(path))
    ids = {p.name: p.asnumpy().tolist() for p in net.get_parameters()
           if p.name.endswith(("ptuning2_prefix", "prefixtuning_prefix"))}
    return {"not_loaded": list(not_loaded), "prefix_ids": ids}


def import_mindformers():
    import mindspore
    assert mindspore.__version__ == MINDSPORE, f"mindspore {mindspore.__version__}, not {MINDSPORE}"
    stub_removed_modules()
    import mindformers   # registers the model classes
    assert mindformers.__version__ == MINDFORMERS, f"mindformers {mindformers.__version__}"


def main():
    if sys.argv[1:] == ["--check"]:   # scripts/_mf_oracle_venv.sh: does this venv import it?
        import_mindformers()
        return
    specs = json.load(sys.stdin)
    # MindSpore and MindFormers log to stdout; keep it for the one JSON line.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    results = []
    with contextlib.redirect_stdout(sys.stderr):
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_device("CPU")
        import_mindformers()
        for spec in specs:
            try:
                net = build(spec)
            except Exception as e:  # reported per spec: the caller decides what a refusal means
                traceback.print_exc()
                results.append({"error": f"{type(e).__name__}: {e}"})
                continue
            if spec.get("load"):
                results.append(load(net, spec["load"]))
                continue
            results.append([[p.name, list(p.shape), bool(p.requires_grad)]
                            for p in net.get_parameters()])
    os.dup2(real_stdout, 1)
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
