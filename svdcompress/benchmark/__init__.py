"""Time every way of running a model side by side (``svdcompress bench``). No torch at import.

- :mod:`~svdcompress.benchmark.config`: what a run times (``BenchConfig``, the contender names).
- :mod:`~svdcompress.benchmark.contenders`: how each contender is built, checked and called.
- :mod:`~svdcompress.benchmark.harness`: the interleaved timing loop and its report (``bench``).
- :mod:`~svdcompress.benchmark.machine`: the CPU, its copy bandwidth and fp32 peak.
"""
