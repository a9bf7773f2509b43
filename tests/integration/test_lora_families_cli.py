"""LoRA trains on every family's tiny config through the real CLI (issue 4's acceptance):
`petrun finetune --config configs/<family>/lora_<family>_tiny.yaml`, a few steps, from a base
checkpoint written here; the loss falls and only the LoRA parameters change."""

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli, step_records

FAMILIES = {
    # config, LoRA layers per transformer layer, the pattern (for the record)
    "llama2": ("configs/llama2/lora_llama2_tiny.yaml", 4, ".*wq|.*wk|.*wv|.*wo"),
    "glm2": ("configs/glm2/lora_glm2_tiny.yaml", 1, ".*query_key_value"),
    "gpt2": ("configs/gpt2/lora_gpt2_tiny.yaml", 3, ".*dense1|.*dense2|.*dense3"),
}
STEPS = 8


def _write_base(config: str, path) -> dict:
    """The family's base model (random init, seed 0) saved as a MindFormers-named checkpoint."""
    import mindspore as ms

    import petrun
    from petrun.models import build_base_model
    ms.set_seed(0)
    cfg = petrun.load_config(str(ROOT / config))
    net = build_base_model(cfg.get("model"), device_target="CPU")
    ms.save_checkpoint(net, str(path))
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_trains_only_adapters(family, tmp_path):
    import mindspore as ms

    config, per_layer, pattern = FAMILIES[family]
    base = _write_base(config, tmp_path / "base.ckpt")
    r = run_cli("finetune", "--config", config, "--output_dir", tmp_path / "out",
                "--load_checkpoint", tmp_path / "base.ckpt", f"runner_config.stop_step={STEPS}",
                "lr_schedule.learning_rate=1e-2", "callbacks.1.save_network_params=True")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"loaded {len(base)} tensors" in r.stdout

    losses = [r["loss"] for r in step_records(tmp_path / "out")]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses

    network = ms.load_checkpoint(str(next((tmp_path / "out" / "checkpoint_network" / "rank_0")
                                          .glob("*.ckpt"))))
    lora = sorted(n for n in network if "mindpet_delta_lora" in n)
    assert len(lora) == 2 * 2 * per_layer, (pattern, lora)   # A and B, 2 layers
    for name, value in base.items():   # every base weight is bit-identical after training
        assert np.array_equal(network[name].asnumpy(), value), name
    assert all(np.abs(network[n].asnumpy()).max() > 0 for n in lora if n.endswith("lora_b"))
