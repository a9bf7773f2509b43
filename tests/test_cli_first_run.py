"""What a first-time user meets at the prompt: shell completion is there to install."""
from tests.conftest import run_cli


def test_shell_completion_is_available():
    r = run_cli("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert r.returncode == 0, r.stderr
    assert "_petrun_completion" in r.stdout
    assert "--install-completion" in run_cli("--help").stdout
