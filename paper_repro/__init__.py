"""paper_repro: post-training weight quantization by correlation maximization, in JAX.

Modules (one concept each):

- :mod:`paper_repro.core.quantize`    level sets, nearest-level coding, fitting, pytree mapping.
- :mod:`paper_repro.core.correlation` sample and analytic correlations, Sheppard's formula.
- :mod:`paper_repro.results`     ``run_or_load`` and ``save_figure`` with provenance.
- :mod:`paper_repro.cli`         the ``paper-repro`` command line.

Later acts add the Hopfield simulator, the Flax model ports, ImageNet data and evaluation.
"""

__version__ = "0.1.0"
