"""Model families (Llama2, ChatGLM2, GPT2) behind a name → builder registry.

Kept free of MindSpore imports: the families are imported only when a model is built.
"""
from petrun.models.registry import (arch_entry, build_base_model, build_config, known_archs,
                                    register_arch)

__all__ = ["arch_entry", "build_base_model", "build_config", "known_archs", "register_arch"]
