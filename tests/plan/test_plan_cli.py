"""`petrun plan` option mistakes through the real CLI: petrun's message with a Fix line, exit 2
(not typer's "Invalid value" usage text), and no value silently replaced by the config's."""
import json

import pytest

from tests.conftest import run_cli

CONFIG = "configs/llama2/lora_llama2_tiny.yaml"


@pytest.mark.parametrize("args,message,fix", [
    (("--devices", "0"), "key '--devices': must be at least 1, got 0", "e.g. --devices 8"),
    (("--devices", "-2"), "key '--devices': must be at least 1, got -2", "e.g. --devices 8"),
    (("--device-memory", "0GB"), "key '--device-memory': '0GB' is not a positive size",
     "e.g. --device-memory 64GB"),
    (("--mfu", "0"), "key '--mfu': must be in (0, 1]", "e.g. --mfu 0.4"),
    (("--mfu", "1.5"), "key '--mfu': must be in (0, 1]", "e.g. --mfu 0.4"),
    (("--peak-tflops", "0"), "key '--peak-tflops': must be positive", "--peak-tflops 256"),
    (("--output", "yaml"), "key '--output': must be table or json", "use --output table"),
    (("--device-target", "TPU"), "key '--device-target': must be CPU, Ascend or GPU",
     "e.g. --device-target Ascend"),
])
def test_bad_options_are_petrun_errors(args, message, fix):
    r = run_cli("plan", "--config", CONFIG, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "\nFix: " in r.stderr and fix in r.stderr, r.stderr
    assert "Invalid value" not in r.stderr and "Traceback" not in r.stderr


def test_device_memory_is_the_budget():
    r = run_cli("plan", "--config", CONFIG, "--device-memory", "3GB", "--output", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["budget"] == 3 * 2 ** 30 and data["budget_source"] == "--device-memory"
