"""Choose the log α threshold on held-out data.

- :mod:`~svdcompress.tuning.threshold`: the sweep and the pick (``tune``).
- :mod:`~svdcompress.tuning.dataspec`: data specs (``fashion-mnist:val``, ``FILE.npz``) and which may choose.
- :mod:`~svdcompress.tuning.datasets`: the real data sets available offline.
"""
