"""Hostile inputs across the CLI: each must exit 2 with a message that names the file or key and
says how to fix it, print no traceback, and leave the checkpoints already in output_dir intact.

Every case runs the real `petrun finetune` in a subprocess against a copy of a small finished run
(checkpoints at steps 2 and 4), so "intact" is checked against real files. Whichever layer
catches the problem (config schema, pre-flight, data loader, checkpoint store, recipe) is free to
change; what the user sees is the contract.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "llama2" / "lora_llama2_tiny.yaml"
DEMO = ROOT / "data" / "demo"
BASE = DEMO / "llama2_tiny_base.ckpt"
PREFIX = "llama2_tiny_lora_rank_0"
RUN = ["runner_config.stop_step=4", "callbacks.1.save_checkpoint_steps=2", "runner_config.epochs=1"]


# MindSpore's compile cache, shared by runs of one config (it saves ~7 s of compile per run).
# Not for runs whose shapes differ: the cache then hands back a stale graph (a longer lr
# schedule fails with "Gather ... out of range"), so the disk-full resumes go without it.
CACHE = {"MS_COMPILER_CACHE_ENABLE": "1"}


def _run(argv, *, preexec_fn=None, timeout=300, cache=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(CACHE if cache else {})}
    return subprocess.run([sys.executable, "-m", "petrun", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def _snapshot(out: Path) -> dict[str, str]:
    root = out / "checkpoint"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data32(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train32.jsonl"
    lines = (DEMO / "alpaca_demo_seq256.jsonl").read_text().splitlines()[:32]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data32) -> Path:
    CACHE["MS_COMPILER_CACHE_PATH"] = str(tmp_path_factory.mktemp("compile_cache"))
    out = tmp_path_factory.mktemp("finished")
    r = _run(["finetune", "--config", CONFIG, "--output_dir", out, "--train_dataset_dir", data32, *RUN])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "checkpoint" / "rank_0" / "latest").read_text().strip() == f"{PREFIX}-1_4"
    return out


class H:
    """What a case may use: a private copy of the finished run, the data, a scratch folder."""

    def __init__(self, tmp: Path, out: Path, data32: Path):
        self.tmp, self.out, self.data32 = tmp, out, data32
        self.rank_dir = out / "checkpoint" / "rank_0"

    def finetune(self, *extra, config=CONFIG, data=None):
        # --overwrite: the hostile input must be refused before the earlier run in self.out is
        # replaced, so the snapshot check below also proves a refused run removes nothing.
        return ["finetune", "--config", config, "--output_dir", self.out,
                "--train_dataset_dir", data or self.data32, *RUN, "--overwrite", *extra]

    def file(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    def yaml(self, name: str, text: str) -> Path:
        return self.file(name, f"base_config: {CONFIG}\n{text}")

    def ckpt(self, step: int, role: str = "adapter") -> Path:
        stem = f"{PREFIX}-1_{step}"
        return self.rank_dir / (f"train_state/{stem}.ckpt" if role == "state" else f"{stem}.ckpt")

    def damage(self, path: Path, how: str = "truncate") -> Path:
        """Damage a file of the copy (the check for "intact" covers the files left alone)."""
        data = bytearray(path.read_bytes())
        os.chmod(path, 0o600)
        if how == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        return path


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ----------------------------------------------------------------- YAML files and the config
@case
def yaml_syntax_error(h):
    bad = h.file("broken.yaml", "model:\n  model_config: [unclosed\nseed: 1\n")
    return ["finetune", "--config", bad], [str(bad)]


@case
def yaml_tab_indentation(h):
    bad = h.file("tabs.yaml", f"base_config: {CONFIG}\nrunner_config:\n\tepochs: 1\n")
    return ["finetune", "--config", bad], [str(bad)]


@case
def yaml_top_level_is_a_list(h):
    bad = h.file("list.yaml", "- seed: 1\n- epochs: 2\n")
    return ["finetune", "--config", bad], [str(bad)]


@case
def config_file_missing(h):
    return ["finetune", "--config", h.tmp / "nope.yaml"], [str(h.tmp / "nope.yaml")]


@case
def config_path_is_a_directory(h):
    return ["finetune", "--config", h.tmp], [str(h.tmp)]


@case
def config_file_is_binary(h):
    bad = h.file("binary.yaml", bytes(range(256)) * 4)
    return ["finetune", "--config", bad], [str(bad)]


@case
def base_config_missing(h):
    bad = h.file("child.yaml", "base_config: not_there.yaml\nseed: 1\n")
    return ["finetune", "--config", bad], ["not_there.yaml"]


@case
def base_config_cycle(h):
    cyc = ROOT / "tests" / "assets" / "configs" / "chain" / "cycle_a.yaml"
    return ["finetune", "--config", cyc], ["cycle_a.yaml", "cycle_b.yaml"]


@case
def misspelt_top_level_key(h):
    return h.finetune("runer_config.epochs=1"), ["runer_config", "did you mean 'runner_config'"]


@case
def misspelt_key_in_yaml(h):
    bad = h.yaml("typo.yaml", "model:\n  model_config:\n    pet_config:\n      lora_rnak: 4\n")
    return h.finetune(config=bad), [str(bad), "lora_rnak", "lora_rank"]


@case
def wrong_type_in_override(h):
    return h.finetune("runner_config.batch_size=eight"), ["runner_config.batch_size", "integer"]


@case
def wrong_type_in_yaml(h):
    bad = h.yaml("types.yaml", "runner_config:\n  gradient_accumulation_steps: two\n")
    return h.finetune(config=bad), [str(bad), "runner_config.gradient_accumulation_steps"]


@case
def value_out_of_range(h):
    return h.finetune("model.model_config.pet_config.lora_dropout=1.5"), ["lora_dropout"]


@case
def zero_batch_size(h):
    return h.finetune("runner_config.batch_size=0"), ["runner_config.batch_size", "positive"]


@case
def override_without_value(h):
    return h.finetune("runner_config.epochs"), ["runner_config.epochs", "key=value"]


@case
def override_with_a_malformed_key(h):
    return h.finetune("runner_config..epochs=1"), ["runner_config..epochs", "dotted key"]


@case
def unknown_command_line_flag(h):
    return h.finetune("--learning_rate", "0.1"), ["--learning_rate", "unknown option"]


@case
def flag_with_a_non_boolean(h):
    return h.finetune("--use_parallel", "maybe"), ["--use_parallel", "True or False"]


@case
def unknown_pet_type(h):
    return h.finetune("model.model_config.pet_config.pet_type=lorra"), ["pet_type", "lora"]


@case
def target_regex_matching_nothing(h):
    return h.finetune("model.model_config.pet_config.target_modules=.*wq|.*nonexistent"), \
        ["target_modules", ".*nonexistent"]


@case
def target_regex_that_does_not_compile(h):
    return h.finetune("model.model_config.pet_config.target_modules=.*wq("), ["target_modules"]


@case
def device_this_machine_lacks(h):
    return h.finetune("context.device_target=Ascend"), ["device_target"]


# ----------------------------------------------------------------- data
@case
def dataset_missing(h):
    return h.finetune(data=h.tmp / "nope.jsonl"), [str(h.tmp / "nope.jsonl"), "dataset_dir"]


@case
def dataset_empty(h):
    empty = h.file("empty.jsonl", "")
    return h.finetune(data=empty), [str(empty), "no samples"]


@case
def raw_dataset_in_no_known_format(h):
    # raw alpaca JSON is tokenized on the fly; records that are neither that nor tokenized are not
    bad = h.file("notes.json", '[{"title": "a", "body": "b"}, {"title": "c", "body": "d"}]')
    return h.finetune(data=bad), [str(bad), "neither token-id columns"]


@case
def dataset_with_a_broken_json_line(h):
    lines = h.data32.read_text().splitlines()
    bad = h.file("broken.jsonl", "\n".join(lines[:3] + ['{"input_ids": [1, 2'] + lines[3:]) + "\n")
    return h.finetune(data=bad), [str(bad), "line 4"]


@case
def dataset_tokenized_for_another_seq_length(h):
    return h.finetune("model.model_config.seq_length=128",
                      "model.model_config.max_position_embedding=128"), ["train32.jsonl", "seq_length"]


@case
def dataset_smaller_than_one_batch(h):
    lines = h.data32.read_text().splitlines()[:3]
    small = h.file("three.jsonl", "\n".join(lines) + "\n")
    return h.finetune(data=small), [str(small), "batch"]


@case
def mindrecord_with_wrong_columns(h):
    from petrun.data import mindrecord as mr
    path = h.tmp / "wrong.mindrecord"
    samples = [{"text_ids": np.arange(257, dtype=np.int32)} for _ in range(16)]
    mr.write_mindrecord(path, samples, columns=["text_ids"])
    return h.finetune(data=path), [str(path), "input_ids"]


def _damage_mindrecord_page(path: Path, nbytes: int = 1024) -> None:
    """Overwrite `nbytes` in the middle of the first data page (after the header), where neither
    the header nor the .db index notice it."""
    import json
    import struct
    with open(path, "r+b") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        page = header["page"][0]
        assert page["page_size"] > 4 * nbytes, page
        f.seek(header["header_size"] + page["page_size"] // 2)
        f.write(b"\xa5" * nbytes)


@case
def mindrecord_with_a_damaged_page(h):
    # Was: pre-flight fine, then exit 139 (SIGSEGV in MindSpore's reader) at the damaged step.
    path = h.tmp / "prepared.mindrecord"
    r = _run(["data", "prepare", "alpaca", "-i", DEMO / "alpaca_demo.json", "-o", path,
              "--config", CONFIG])
    assert r.returncode == 0, r.stdout + r.stderr
    _damage_mindrecord_page(path)
    return h.finetune(data=path), [str(path), "damaged", "re-create"]


@case
def directory_without_data_files(h):
    empty = h.tmp / "nodata"
    empty.mkdir()
    return h.finetune(data=empty), [str(empty), "dataset_dir"]


# ----------------------------------------------------------------- checkpoints to load
@case
def load_checkpoint_missing(h):
    return h.finetune(f"load_checkpoint={h.tmp / 'base.ckpt'}"), [str(h.tmp / "base.ckpt"), "load_checkpoint"]


@case
def load_checkpoint_truncated(h):
    bad = h.file("base_truncated.ckpt", BASE.read_bytes()[:200_000])
    return h.finetune(f"load_checkpoint={bad}"), [str(bad), "load_checkpoint"]


@case
def load_checkpoint_is_not_a_checkpoint(h):
    bad = h.file("notes.ckpt", "these are my notes, not weights\n" * 50)
    return h.finetune(f"load_checkpoint={bad}"), [str(bad), "load_checkpoint"]


@case
def checkpoint_from_another_model_size(h):
    return h.finetune("model.model_config.hidden_size=128"), ["llama2_tiny_base.ckpt", "hidden_size"]


@case
def adapter_for_another_pet_type(h):
    import mindspore as ms
    folder = h.tmp / "base_plus_ptuning2"
    folder.mkdir()
    shutil.copy(BASE, folder / "base.ckpt")
    prefix = ms.Parameter(ms.Tensor(np.zeros((16, 256), np.float32)),
                          name="model.prefix_encoder.embedding.embedding_table")
    ms.save_checkpoint([prefix], str(folder / "ptuning2_adapter.ckpt"))
    return h.finetune(f"load_checkpoint={folder}"), ["prefix_encoder", "load_checkpoint"]


@case
def strategy_file_for_a_checkpoint_transform(h):
    # a checkpoint saved as rank_N/ shards needs its strategy file to be merged; this one is garbage
    shards = h.tmp / "sharded"
    (shards / "rank_0").mkdir(parents=True)
    shutil.copy(BASE, shards / "rank_0" / "checkpoint_0.ckpt")
    strategy = h.file("ckpt_strategy_rank_0.ckpt", b"\x08\x01garbage")
    return h.finetune("--auto_trans_ckpt", "True", "--load_checkpoint", shards,
                      "--src_strategy_path_or_dir", strategy), [str(strategy), "src_strategy_path_or_dir"]


@case
def strategy_file_of_another_layout(h):
    # Shards cut model-parallel 2, merged with a data-parallel 2 strategy: was exit 0 with a
    # "complete" checkpoint of half-size tensors. The output would land in the checked folder.
    semi = ["parallel.parallel_mode=1", "parallel_config.data_parallel=1"]
    for name, layout in (("mp2", ["parallel_config.model_parallel=2"]),
                         ("dp2", ["parallel_config.data_parallel=2",
                                  "parallel_config.model_parallel=1"])):
        r = _run(["ckpt", "strategy", "--config", CONFIG, "--out", h.tmp / name, *semi, *layout])
        assert r.returncode == 0, r.stdout + r.stderr
    r = _run(["ckpt", "shard", "--src", BASE, "--strategy", h.tmp / "mp2", "--dst", h.tmp / "shards"])
    assert r.returncode == 0, r.stdout + r.stderr
    return (["ckpt", "transform", "--src", h.tmp / "shards", "--src-strategy", h.tmp / "dp2",
             "--dst", h.out / "checkpoint" / "merged"], ["--src-strategy", "another layout"])


# ----------------------------------------------------------------- untrusted and foreign files
def _torch_save_like(path: Path) -> Path:
    """The layout of torch.save's zip (archive/data.pkl holding a pickle), made without torch."""
    import pickle
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": [0.0, 1.0]}, protocol=2))
        z.writestr("archive/version", "3\n")
    return path


@case
def load_checkpoint_is_a_pytorch_pickle(h):
    pt = _torch_save_like(h.tmp / "model.pt")
    return h.finetune(f"load_checkpoint={pt}"), [str(pt), "never loads pickles"]


@case
def adapter_folder_holding_only_a_pickle(h):
    import pickle
    folder = h.tmp / "peft_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"w": [0.0]}, protocol=4))
    return (["predict", "--config", CONFIG, "--adapter", folder, "--prompt", "hi",
             "--max-new-tokens", "2"], [str(folder / "adapter_model.bin"), "never loads pickles"])


@case
def peft_import_of_a_pickled_adapter(h):
    folder = h.tmp / "peft_bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    _torch_save_like(folder / "adapter_model.bin")
    return (["ckpt", "import-peft", "--config", CONFIG, "--src", folder, "--dst",
             h.out / "checkpoint" / "imported.ckpt"], [str(folder), "pickle", "safe_serialization"])


@case
def convert_of_a_truncated_safetensors(h):
    import json
    import struct
    folder = h.tmp / "hf"
    folder.mkdir()
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [512, 64],
                                                       "data_offsets": [0, 512 * 64 * 4]}}).encode()
    whole = struct.pack("<Q", len(header)) + header + np.ones(512 * 64, np.float32).tobytes()
    (folder / "model.safetensors").write_bytes(whole[: len(whole) // 2])   # a cut download
    return (["ckpt", "convert", "--model", "llama2", "--src", folder, "--dst",
             h.out / "checkpoint" / "converted.ckpt"], [str(folder / "model.safetensors"),
                                                       "truncated", "re-download"])


@case
def tokenizer_file_of_another_family(h):
    # GPT-2's vocab.json given to the Llama config's SentencePiece tokenizer (raw alpaca data is
    # tokenized on the fly with it). Before: with merges_file set it trained, at loss 0.
    vocab = h.file("gpt2/vocab.json", '{"<|endoftext|>": 0, "a": 1, "b": 2}')
    h.file("gpt2/merges.txt", "#version: 0.2\na b\n")
    return (h.finetune(f"processor.tokenizer.vocab_file={vocab}",
                       f"processor.tokenizer.merges_file={h.tmp / 'gpt2' / 'merges.txt'}",
                       data=DEMO / "alpaca_demo.json"),
            [str(vocab), "processor.tokenizer.vocab_file", "another model family"])


# ----------------------------------------------------------------- output_dir
@case
def output_dir_below_a_regular_file(h):
    blocker = h.file("not_a_folder", "x")
    argv = h.finetune()
    argv[argv.index("--output_dir") + 1] = blocker / "out"
    return argv, [str(blocker / "out"), "output_dir"]


# ----------------------------------------------------------------- resuming
@case
def resume_from_a_path_that_does_not_exist(h):
    return h.finetune("--resume", h.tmp / "elsewhere"), [str(h.tmp / "elsewhere"), "resume_training"]


@case
def resume_from_a_checkpoint_petrun_did_not_write(h):
    return h.finetune("--resume", BASE), [str(BASE), "not a checkpoint written by petrun"]


@case
def resume_from_a_named_checkpoint_with_a_flipped_byte(h):
    bad = h.damage(h.ckpt(4), "flip")
    return h.finetune("--resume", bad), [str(bad), "SHA-256"]


@case
def resume_when_every_checkpoint_is_damaged(h):
    h.damage(h.ckpt(4, "state"))
    h.damage(h.ckpt(2))
    return h.finetune("--resume"), [str(h.rank_dir), "no intact checkpoint", f"{PREFIX}-1_4",
                                    f"{PREFIX}-1_2", "resume_training"]


@case
def resume_with_an_unreadable_manifest(h):
    manifest = h.rank_dir / f"{PREFIX}-1_4.json"
    manifest.write_text('{"format": "petrun.checkpoint/1", "step": ')
    return h.finetune("--resume", h.ckpt(4)), [str(manifest), "no readable manifest"]


@case
def resume_with_another_lora_rank(h):
    return h.finetune("--resume", "model.model_config.pet_config.lora_rank=4"), \
        ["model.model_config.pet_config.lora_rank", "resume"]


@case
def resume_with_another_batch_size(h):
    return h.finetune("--resume", "runner_config.batch_size=4"), ["runner_config.batch_size"]


@case
def resume_on_different_data(h):
    lines = h.data32.read_text().splitlines()
    other = h.file("other32.jsonl", "\n".join(reversed(lines)) + "\n")
    return h.finetune("--resume", data=other), ["train_dataset.data_loader.dataset_dir", "differs"]


@pytest.fixture
def h(tmp_path, finished_run, data32):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return H(scratch, out, data32)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_with_a_fix(name, h):
    argv, expected = CASES[name](h)
    before = _snapshot(h.out)
    r = _run(argv)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text, text
    assert "Fix:" in r.stderr or "did you mean" in r.stderr, r.stderr
    for fragment in expected:
        assert fragment in r.stderr, f"{fragment!r} not in:\n{r.stderr}"
    after = _snapshot(h.out)
    # Files a case damaged on purpose are part of `before`; nothing may change, appear or vanish.
    assert after == before


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


# ----------------------------------------------------------------- a full disk
def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # fail the write with EFBIG, don't kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _assert_disk_full_refusal(r, h, before, words):
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert "Fix:" in r.stderr and "--resume" in r.stderr
    assert any(w in r.stderr for w in words), r.stderr
    # MindSpore's own "[CRITICAL] ... Maybe don't have the permission" no longer precedes it
    assert "CRITICAL" not in text and "Maybe don't have the permission" not in text, text
    assert str(h.rank_dir) in r.stderr                   # names the file it could not write
    after = _snapshot(h.out)
    for name, digest in before.items():                  # every old file is still there, unchanged
        if name != "rank_0/config.yaml":
            assert after.get(name) == digest, name
    assert not [p for p in h.out.rglob("*") if ".partial-" in p.name]
    assert (h.rank_dir / "latest").read_text().strip() == f"{PREFIX}-1_4"


def test_file_size_limit_during_a_save_keeps_the_old_checkpoints(h):
    """RLIMIT_FSIZE (ulimit -f): the step-6 checkpoint cannot be written; the run must stop with a
    clear message and leave steps 2 and 4 untouched (MindSpore alone deletes before writing)."""
    # (training.png is left out: it is drawn after the last save, which this run never reaches)
    small = max(p.stat().st_size for p in h.out.rglob("*")
                if p.is_file() and p.suffix not in (".ckpt", ".png"))
    adapter = h.ckpt(4).stat().st_size
    limit = small + 8192   # room for logs and manifests, not for a checkpoint
    assert limit < adapter, (limit, adapter)
    before = _snapshot(h.out)
    argv = h.finetune("--resume", "runner_config.stop_step=6", "runner_config.epochs=2")
    r = _run(argv, preexec_fn=_limit_file_size(limit), cache=False)
    _assert_disk_full_refusal(r, h, before, ["File too large"])


def test_no_space_left_during_a_save_keeps_the_old_checkpoints(h, tiny_tmpfs):
    """A real ENOSPC: the run lives on a 1 MiB tmpfs that is filled up to the last few KiB."""
    out = tiny_tmpfs / "out"
    shutil.copytree(h.out, out)
    h = H(h.tmp, out, h.data32)
    before = _snapshot(out)
    free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
    (tiny_tmpfs / "filler").write_bytes(b"\0" * max(0, free - 24 * 1024))
    r = _run(h.finetune("--resume", "runner_config.stop_step=6", "runner_config.epochs=2"), cache=False)
    _assert_disk_full_refusal(r, h, before, ["No space left on device"])
