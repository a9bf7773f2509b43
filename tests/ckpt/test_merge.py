"""`petrun ckpt merge`: the scaling comes from the config, the merged file equals base + the
adapter's delta exactly, loads into the plain model with the unmerged logits, and the probe
reports the difference. LoRA and IA3 (GPT-2's in×out layers included); others are refused."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from petrun.api import build_model, load_checkpoint
from petrun.ckpt.io import save_params
from petrun.ckpt.merge import merge_checkpoint
from petrun.errors import UserError

from tests.pet.pet_helpers import cpu_device
from tests.ckpt.test_peft_format import read_ckpt, trained_adapter, write_yaml

LORA = {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 6, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wv|.*w2"}


@pytest.fixture(autouse=True)
def pynative():
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)


def base_and_adapter(tmp_path, family, pet_config):
    path, net, adapter = trained_adapter(tmp_path, family, pet_config)
    rng = np.random.default_rng(9)
    base = [p for p in net.get_parameters() if "mindpet_delta_" not in p.name]
    for p in base:   # base weights far from init, so a wrong merge shows in the logits
        p.set_data(Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    save_params(base, tmp_path / "base.ckpt")
    return path, net, adapter


def test_lora_merge_is_base_plus_scaled_delta(tmp_path):
    path, net, adapter = base_and_adapter(tmp_path, "llama2", LORA)
    result = merge_checkpoint(path, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                              tmp_path / "merged.ckpt")
    assert result.pet_type == "lora" and result.merged_layers == 6
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    base, merged = read_ckpt(tmp_path / "base.ckpt"), read_ckpt(tmp_path / "merged.ckpt")
    assert sorted(merged) == sorted(base)            # no adapter tensors in the merged file
    layer = "model.layers.1.attention.wv"
    want = base[f"{layer}.weight"] + (6 / 2) * (adapter[f"{layer}.mindpet_delta_lora_b"]
                                                @ adapter[f"{layer}.mindpet_delta_lora_a"])
    np.testing.assert_allclose(merged[f"{layer}.weight"], want, atol=1e-6)
    np.testing.assert_array_equal(merged["model.layers.1.attention.wk.weight"],
                                  base["model.layers.1.attention.wk.weight"])
    # The scaling is read from the config: another lora_alpha gives another merge.
    other = write_yaml(tmp_path / "alpha.yaml", "llama2", {**LORA, "lora_alpha": 2})
    merge_checkpoint(other, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                     tmp_path / "merged1.ckpt", run_probe=False)
    delta = read_ckpt(tmp_path / "merged1.ckpt")[f"{layer}.weight"] - base[f"{layer}.weight"]
    np.testing.assert_allclose(delta * 3, want - base[f"{layer}.weight"], atol=1e-5)


def test_lora_merge_transposes_the_delta_for_in_out_weights(tmp_path):
    """GPT-2's attention.projection and output.mapping/projection store [in, out]: the streaming
    merge adds (s·B·A)ᵀ there and s·B·A to dense1 ([out, in]); the plain model with the merged
    file gives the unmerged logits (the probe)."""
    pet = {**LORA, "target_modules": ".*dense1|.*projection|.*mapping"}
    path, _, adapter = base_and_adapter(tmp_path, "gpt2", pet)
    result = merge_checkpoint(path, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                              tmp_path / "merged.ckpt")
    assert result.merged_layers == 8 and result.max_abs_diff <= 1e-5
    base, merged = read_ckpt(tmp_path / "base.ckpt"), read_ckpt(tmp_path / "merged.ckpt")
    for layer, in_out in (("backbone.blocks.1.output.mapping", True),
                          ("backbone.blocks.0.attention.dense1", False)):
        delta = 3.0 * (adapter[f"{layer}.mindpet_delta_lora_b"]
                       @ adapter[f"{layer}.mindpet_delta_lora_a"])   # [out, in]
        want = base[f"{layer}.weight"] + (delta.T if in_out else delta)
        np.testing.assert_allclose(merged[f"{layer}.weight"], want, atol=1e-6)
    assert merged["backbone.blocks.1.output.mapping.weight"].shape == (32, 128)


@pytest.mark.parametrize("family, pet_config", [
    ("gpt2", {"pet_type": "ia3", "target_modules": ".*dense1|.*projection|.*mapping",
              "feedforward_modules": ".*mapping"}),
    ("glm2", {"pet_type": "ia3", "target_modules": ".*query_key_value|.*dense_4h_to_h",
              "feedforward_modules": ".*dense_4h_to_h"}),
], ids=["ia3-gpt2", "ia3-glm2"])
def test_ia3_merge_gives_the_unmerged_logits(tmp_path, family, pet_config):
    path, _, _ = base_and_adapter(tmp_path, family, pet_config)
    result = merge_checkpoint(path, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                              tmp_path / "merged.ckpt")
    assert result.max_abs_diff <= 1e-5 and result.merged_layers > 0
    # and independently of the probe: the plain model with the merged file
    plain = write_yaml(tmp_path / "plain.yaml", family, None)
    unmerged = build_model(str(path), device_target="CPU")
    load_checkpoint(unmerged, tmp_path / "base.ckpt")
    load_checkpoint(unmerged, tmp_path / "adapter.ckpt")
    merged = build_model(str(plain), device_target="CPU")
    load_checkpoint(merged, tmp_path / "merged.ckpt")
    x = Tensor(np.random.default_rng(4).integers(1, 128, (2, 10)).astype(np.int32))
    unmerged.set_train(False)
    merged.set_train(False)
    want, got = unmerged(x).asnumpy(), merged(x).asnumpy()
    plain_base = build_model(str(plain), device_target="CPU")
    load_checkpoint(plain_base, tmp_path / "base.ckpt")
    plain_base.set_train(False)
    assert np.abs(plain_base(x).asnumpy() - want).max() > 1e-2, "the adapter must matter"
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_merge_refuses_what_cannot_merge_and_bad_inputs(tmp_path):
    (tmp_path / "p").mkdir()
    prompt, _, _ = base_and_adapter(tmp_path / "p", "llama2", {"pet_type": "prompt_tuning",
                                                               "num_virtual_tokens": 3})
    with pytest.raises(UserError, match="cannot be merged"):
        merge_checkpoint(prompt, tmp_path / "p" / "base.ckpt", tmp_path / "p" / "adapter.ckpt",
                         tmp_path / "merged.ckpt")
    lora = write_yaml(tmp_path / "lora.yaml", "llama2", LORA)
    with pytest.raises(UserError, match="does not fit the model"):   # a prompt is no LoRA
        merge_checkpoint(lora, tmp_path / "p" / "base.ckpt", tmp_path / "p" / "adapter.ckpt",
                         tmp_path / "merged.ckpt")
    with pytest.raises(UserError, match="overwrite an input"):
        merge_checkpoint(lora, tmp_path / "p" / "base.ckpt", tmp_path / "p" / "adapter.ckpt",
                         tmp_path / "p" / "base.ckpt")
    assert not (tmp_path / "merged.ckpt").exists()


def test_cli_merge_reports_the_probe_difference(tmp_path, cli):
    path, _, _ = base_and_adapter(tmp_path, "llama2", LORA)
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", tmp_path / "adapter.ckpt", "--dst", tmp_path / "merged.ckpt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 with the lora adapter folded in" in r.stdout
    assert "max |merged − unmerged| logit difference = " in r.stdout
    diff = float(r.stdout.split("logit difference = ")[1].split()[0])
    assert diff <= 1e-5


def run_folder(tmp_path, net):
    """checkpoint/rank_0/ as finetune leaves it: an older checkpoint, then the newest (`net`'s
    adapter), `latest` naming it, manifests and train_state/ beside them."""
    from petrun.ckpt.store import CheckpointFolder
    folder = CheckpointFolder(tmp_path / "run" / "checkpoint" / "rank_0")
    delta = [p for p in net.get_parameters() if "mindpet_delta_" in p.name]
    older = [{"name": p.name, "data": Tensor(np.zeros(p.shape, np.float32))} for p in delta]
    folder.save("lora_rank_0-1_1", adapter=older, state=[], append={}, manifest={"step": 1})
    folder.save("lora_rank_0-1_2", adapter=delta, state=[], append={}, manifest={"step": 2})
    return folder.path


def leftovers(folder):
    from petrun.atomic import is_leftover_tmp
    return [p.name for p in folder.rglob("*") if is_leftover_tmp(p.name) or p.suffix == ".tmp"]


def test_cli_merge_takes_an_adapter_folder_as_predict_does(tmp_path, cli):
    path, net, _ = base_and_adapter(tmp_path, "llama2", LORA)
    folder = run_folder(tmp_path, net)
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", f"{folder}/", "--dst", tmp_path / "from_folder.ckpt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 with the lora adapter folded in" in r.stdout
    merge_checkpoint(path, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                     tmp_path / "from_file.ckpt", run_probe=False)
    got, want = read_ckpt(tmp_path / "from_folder.ckpt"), read_ckpt(tmp_path / "from_file.ckpt")
    assert sorted(got) == sorted(want)
    for name, value in want.items():   # the newest checkpoint, not the older all-zero one
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    # errors name --adapter (the option given), never an option merge does not have
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", folder.parent, "--dst", tmp_path / "x.ckpt")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "key '--adapter': this folder holds rank_N/ folders of a run, not a checkpoint" in r.stderr
    assert f"Fix: pass one rank's folder, e.g. --adapter {folder}" in r.stderr
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", tmp_path / "nope", "--dst", tmp_path / "x.ckpt")
    assert r.returncode == 2 and "key '--adapter': checkpoint path does not exist" in r.stderr
    assert "Fix: check the path" in r.stderr
    assert "--src" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.ckpt").exists() and not leftovers(tmp_path)


def test_cli_merge_refuses_an_existing_dst_without_overwrite(tmp_path, cli):
    path, _, _ = base_and_adapter(tmp_path, "llama2", LORA)
    dst = tmp_path / "merged.ckpt"
    dst.write_bytes(b"an earlier merge")
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", tmp_path / "adapter.ckpt", "--dst", dst)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "merged.ckpt: key '--dst': the output already exists" in r.stderr
    assert "Fix: pass --overwrite or choose another --dst" in r.stderr and "Traceback" not in r.stderr
    assert dst.read_bytes() == b"an earlier merge" and not leftovers(tmp_path)
    # --overwrite replaces it; it never lets --dst replace an input
    r = cli("ckpt", "merge", "--config", path, "--base", tmp_path / "base.ckpt",
            "--adapter", tmp_path / "adapter.ckpt", "--dst", dst, "--overwrite", "--no-probe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(read_ckpt(dst)) == sorted(read_ckpt(tmp_path / "base.ckpt"))
    with pytest.raises(UserError, match="overwrite an input"):
        merge_checkpoint(path, tmp_path / "base.ckpt", tmp_path / "adapter.ckpt",
                         tmp_path / "adapter.ckpt", overwrite=True)


def test_every_mergeable_method_has_a_streaming_merge_rule():
    """`petrun ckpt merge` takes each method's rule from its registry entry
    (PetMethod.merge_tensors); a method that merges live must also merge a checkpoint file."""
    from petrun.pet.config import methods, resolve
    assert [m.pet_type for m in methods() if m.mergeable and not m.merge_tensors] == []
    assert all(callable(resolve(m.merge_tensors)) for m in methods() if m.merge_tensors)
