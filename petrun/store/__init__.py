"""The local model store (MindFormers model names without a download) and the recipes that
Trainer(model=NAME, pet_method=...) runs them with. No MindSpore import."""
from petrun.store.store import ENV, Entry, add, add_command, entries, exists, get, human_count, root

__all__ = ["ENV", "Entry", "add", "add_command", "entries", "exists", "get", "human_count", "root"]
