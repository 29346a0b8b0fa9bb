"""From an SVDO model to a smaller dense model that computes the same function.

- :mod:`~svdcompress.pruning.masking`: threshold log α; SVDO layers become plain modules with zeroed weights
  (the masked reference every later stage is checked against).
- :mod:`~svdcompress.pruning.tracing`: trace the model with torch.fx and classify each node by the op registry.
- :mod:`~svdcompress.pruning.channels`: the channel-dependency graph of a traced model.
- :mod:`~svdcompress.pruning.structural`: exact structural pruning (``prune``).
- :mod:`~svdcompress.pruning.pt2`: save and load a pruned model as a ``torch.export`` program.
"""
