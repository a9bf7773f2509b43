#!/usr/bin/env bash
# Build .venv-mf: mindformers==1.3.2 with its own pins (tokenizers 0.15, datasets 2.18, pyarrow 12,
# which petrun's .venv cannot hold), for the parameter-name oracle tests/oracle/mf_names.py.
# MindSpore is not installed twice: a .pth line, read after the venv's own site-packages, points at
# a folder holding only a link to .venv's mindspore package (not its dist-info, so pip here never
# sees, upgrades or uninstalls it, and nothing else of .venv leaks in).
# Quiet on success; the stamp is written only once mindformers imports. Usage: bash scripts/_mf_oracle_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MF_ORACLE_VENV:-.venv-mf}"
main_py="${PETRUN_PYTHON:-.venv/bin/python}"
constraints=tests/oracle/mf_constraints.txt
stamp="$venv/.mf-oracle-ok"

if [ -f "$stamp" ] && [ "$stamp" -nt scripts/_mf_oracle_venv.sh ] && [ "$stamp" -nt "$constraints" ] \
   && [ "$stamp" -nt "$venv/ms-link/mindspore/__init__.py" ]; then   # .venv's MindSpore unchanged
  exit 0
fi
[ -x "$main_py" ] || { echo "mf oracle: $main_py not found (run scripts/_venv.sh first)" >&2; exit 1; }
ms_dir="$("$main_py" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("mindspore").origin))')"
ms_reqs="$("$main_py" -c 'import importlib.metadata as m; print("\n".join(m.requires("mindspore")))')"
base_py="$("$main_py" -c 'import sys; print(sys._base_executable)')"

rm -rf "$venv"
"$base_py" -m venv "$venv"
log="$venv/install.log"
# shellcheck disable=SC2086  # one requirement per line
if ! (IFS=$'\n'; "$venv/bin/python" -m pip install --no-compile --disable-pip-version-check \
        -c "$constraints" mindformers==1.3.2 $ms_reqs) >"$log" 2>&1; then
  echo "mf oracle: pip install into $venv failed:" >&2
  grep -v "^WARNING: Location" "$log" | tail -40 >&2
  exit 1
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
mkdir -p "$venv/ms-link"
ln -sfn "$ms_dir" "$venv/ms-link/mindspore"
# zz_: .pth files are read in name order, all after site-packages itself is on sys.path.
echo "$(cd "$venv/ms-link" && pwd)" > "$site/zz_petrun_mindspore.pth"
if ! "$venv/bin/python" tests/oracle/mf_names.py --check >>"$log" 2>&1; then
  echo "mf oracle: mindformers does not import in $venv:" >&2
  tail -40 "$log" >&2
  exit 1
fi
date -u +"%F %T mindformers 1.3.2, mindspore from $ms_dir" > "$stamp"
