"""Every PET method trains through the real CLI (issue 5): P-Tuning v2 on the tiny ChatGLM2
config (arch ChatGLM2WithPtuning2, as MindFormers' GLM2 recipe), and — marked slow — each
method's tiny Llama2 config for two epochs on the bundled data and pretrained demo base."""

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli, step_records
from tests.integration.test_lora_families_cli import _write_base

GLM2_PTUNING2 = "configs/glm2/ptuning2_glm2_tiny.yaml"
PREFIX = "prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table"


def _losses(out) -> list[float]:
    return [r["loss"] for r in step_records(out)]


def test_ptuning2_glm2_tiny_trains_only_the_prefix(tmp_path):
    import mindspore as ms

    import petrun
    base = _write_base(GLM2_PTUNING2, tmp_path / "base.ckpt")
    r = run_cli("finetune", "--config", GLM2_PTUNING2, "--output_dir", tmp_path / "out",
                "--load_checkpoint", tmp_path / "base.ckpt", "runner_config.stop_step=10",
                "lr_schedule.learning_rate=5e-2", "callbacks.1.save_network_params=True")
    assert r.returncode == 0, r.stdout + r.stderr
    # 16 prefix tokens × (2 layers × 2 × kv_channels 16 × 2 groups) = 16 × 128
    assert "ptuning2: trainable params: 2,048 ||" in r.stdout
    losses = _losses(tmp_path / "out")
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02, losses

    adapter = sorted((tmp_path / "out" / "checkpoint" / "rank_0").glob("*.ckpt"))[-1]
    saved = ms.load_checkpoint(str(adapter))
    assert set(saved) - {"epoch_num", "step_num"} == {PREFIX}
    assert tuple(saved[PREFIX].shape) == (16, 128)
    network = ms.load_checkpoint(str(next((tmp_path / "out" / "checkpoint_network" / "rank_0")
                                          .glob("*.ckpt"))))
    for name, value in base.items():   # the base is bit-identical after training
        assert np.array_equal(network[name].asnumpy(), value), name

    # base + adapter reload to the trained network's logits
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    cfg = petrun.load_config(str(ROOT / GLM2_PTUNING2), ["context.mode=1"])
    model = petrun.build_model(cfg)
    petrun.load_checkpoint(model, tmp_path / "base.ckpt")
    petrun.load_checkpoint(model, adapter)
    reference = petrun.build_model(cfg)
    petrun.load_checkpoint(reference, next((tmp_path / "out" / "checkpoint_network" / "rank_0")
                                           .glob("*.ckpt")))
    ids = np.random.default_rng(0).integers(3, 512, (2, 24))
    np.testing.assert_array_equal(petrun.logits(model, ids), petrun.logits(reference, ids))


LLAMA_METHODS = {"ptuning2": "2,048", "prefixtuning": "10,400", "prompt_tuning": "512",
                 "ptuning": "12,992", "ia3": "512", "adapter": "8,512"}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LLAMA_METHODS))
def test_llama2_tiny_method_config_trains(method, tmp_path):
    config = f"configs/llama2/{method}_llama2_tiny.yaml"
    r = run_cli("finetune", "--config", config, "--output_dir", tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{method}: trainable params: {LLAMA_METHODS[method]} ||" in r.stdout
    losses = _losses(tmp_path / "out")
    assert len(losses) == 74
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.02, losses
