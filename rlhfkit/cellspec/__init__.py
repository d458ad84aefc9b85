"""What one grid cell is made of, described once and read by the cell builder and the memory planner.

- :mod:`rlhfkit.cellspec.modelset`: plain data (no torch, no registry): the memory plan a composed strategy
  produces, and the :class:`~rlhfkit.cellspec.modelset.ModelSet` derived from it: policy, reference, reward
  model and critic, each with what it starts from, how it is trained, stored, sharded and placed.
- :mod:`rlhfkit.cellspec.arch`: the architecture numbers of a recipe row's models, and ``cell_model_set``
  (recipe + cell -> model set), the one entry point both the cell process and the planner call.
- :mod:`rlhfkit.cellspec.build`: torch: build exactly the model set, prepare it, and the cell's context.
- :mod:`rlhfkit.cellspec.result`: the typed ``result.json`` of a cell.

The package is not called ``cell`` so that ``python -m rlhfkit.cell SPEC.json`` (the cell process) keeps working.
"""
