"""Inference: generation with a KV cache (generate.py), token choice (sampling.py), prompt
templates (chat.py), and loss/perplexity evaluation (eval.py).

Importing this package does not import MindSpore; the functions that run a model do.
"""
from petrun.infer.eval import EvalResult, Evaluator, evaluate
from petrun.infer.generate import GenerationConfig, GenerationResult, generate
from petrun.infer.sampling import SamplingConfig

__all__ = ["EvalResult", "Evaluator", "GenerationConfig", "GenerationResult", "SamplingConfig",
           "evaluate", "generate"]
