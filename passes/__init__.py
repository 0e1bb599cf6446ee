"""Passes over the IR and the machinery that runs them: the pass manager, the pipeline syntax and the
pattern rewriter. Importing this package registers every pass."""

from ttc.passes import (
    allocate,
    canonicalize,
    channels_last,
    decompose,
    fuse,
    grid,
    kv_cache,
    layout,
    lower_to_kernels,
    tilize,
)
from ttc.passes.manager import (
    Pass,
    PassManager,
    parse_pipeline,
    pipeline_text,
    register_pass,
    registered_passes,
)
from ttc.passes.rewriter import PatternRewriter, RewriteError, RewritePattern, apply_patterns_greedily

__all__ = [
    "Pass",
    "PassManager",
    "PatternRewriter",
    "RewriteError",
    "RewritePattern",
    "allocate",
    "apply_patterns_greedily",
    "canonicalize",
    "channels_last",
    "decompose",
    "fuse",
    "grid",
    "kv_cache",
    "layout",
    "lower_to_kernels",
    "parse_pipeline",
    "pipeline_text",
    "register_pass",
    "registered_passes",
    "tilize",
]

