"""The configs petrun ships (package data under petrun/configs/, `configs/` in a checkout).

`--config NAME` finds a shipped config when no file NAME exists, so `petrun finetune --config
lora_llama2_7b.yaml` works from any folder after a plain `pip install`: a local file of that name
always wins. Accepted spellings: `lora_llama2_7b.yaml`, `lora_llama2_7b`, `llama2/lora_llama2_7b`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from petrun.errors import UserError


def shipped_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Shipped:
    name: str          # family/file name without .yaml, e.g. llama2/lora_llama2_7b
    path: Path
    family: str
    summary: str       # the file's first comment line

    @property
    def is_base(self) -> bool:
        """Shared bases are inherited, not run (their header says so)."""
        return self.path.stem.endswith("_base")


def shipped() -> list[Shipped]:
    out = []
    for path in sorted(shipped_dir().glob("*/*.yaml")):
        out.append(Shipped(f"{path.parent.name}/{path.stem}", path, path.parent.name,
                           _summary(path)))
    return out


def _summary(path: Path) -> str:
    """The header comment's first sentence (headers wrap; indented lines are commands)."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def find_shipped(name: str) -> Shipped | None:
    """The shipped config `name` names, or None (ambiguity is a UserError)."""
    key = name[:-5] if name.endswith(".yaml") else name[:-4] if name.endswith(".yml") else name
    every = shipped()
    hits = [s for s in every if s.name == key] or [s for s in every if s.path.stem == key]
    if len(hits) > 1:
        raise UserError(f"{name!r} names several shipped configs: "
                        f"{', '.join(s.name for s in hits)}", key="--config",
                        fix="write it with its family folder, e.g. " + hits[0].name)
    return hits[0] if hits else None


def resolve_config_path(path: str | Path) -> Path:
    """A local file if there is one, else the shipped config of that name, else `path` as given
    (reading it then fails with 'config file not found')."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    found = find_shipped(str(path))
    return found.path if found is not None else p
