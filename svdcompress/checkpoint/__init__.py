"""Read a checkpoint and find what it holds: the first stage of the pipeline.

- :mod:`~svdcompress.checkpoint.formats`: files on disk (.pt/.pth, safetensors, .npz, Lasagne .npy lists) and
  svdcompress's own checkpoint format.
- :mod:`~svdcompress.checkpoint.conventions`: the SVDO conventions found in the wild, their log α formulas,
  and the discovery of SVDO layers in a state_dict or a module.
- :mod:`~svdcompress.checkpoint.analysis`: the per-layer report of what a threshold keeps (``analyze``).
- :mod:`~svdcompress.checkpoint.bundled`: the trained checkpoints shipped with the package.
"""

__all__ = ["DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 3.0
"""log α above which a weight is noise (the paper's value; α > 20). Here, not in a module that imports torch,
so that the benchmark's configuration can name it without loading torch."""
