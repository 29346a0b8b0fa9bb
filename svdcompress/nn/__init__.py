"""The models: SVDO training layers, the paper's architectures, and where a checkpoint's architecture comes from.

- :mod:`~svdcompress.nn.layers`: ``LinearSVDO``, ``Conv2dSVDO``, the KL term, ``ELBOLoss``, ``sparsify()``.
- :mod:`~svdcompress.nn.sequence`: ``Conv1dSVDO``, ``EmbeddingSVDO``, ``LSTMSVDO``.
- :mod:`~svdcompress.nn.zoo`: LeNet-300-100 and LeNet-5, plain and SVDO (``--model svdcompress.nn.zoo:lenet5``).
- :mod:`~svdcompress.nn.architecture`: rebuild the ``nn.Module`` of a checkpoint (``load_model``).
"""
