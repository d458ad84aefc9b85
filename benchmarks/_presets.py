"""Model shapes the benchmarks use beyond the families' own presets, registered in each benchmark process.

``llama:h256l4`` is the compute-bound model of issue 17 (hidden 256 x 4 layers, ~3M non-embedding parameters;
matrix multiplies are most of its op time on one CPU thread), ``llama:h512l8`` the next size up.  Both keep the
``small`` preset's head size (32) and MLP ratio (2.75).  They exist only inside benchmark processes: a recipe
naming them is refused anywhere else.
"""

from __future__ import annotations

SHAPES = {
    "h256l4": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4),
    "h512l8": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=8),
}


def register() -> None:
    """Add the benchmark shapes to the llama family's presets (in this process)."""
    from rlhfkit.plugins import get_registry

    adapter = get_registry().get("model_adapter", "llama")
    base = adapter.presets["small"]
    for name, shape in SHAPES.items():
        adapter.presets.setdefault(name, {**base, **shape})
