"""paper_repro: post-training weight quantization by correlation maximization, in JAX.

Modules (one concept each):

- :mod:`paper_repro.core`         the shared core: level sets, fits and coding (``quantize``),
  correlations (``correlation``), statistics (``stats``), bit-packed files (``storage``).
- :mod:`paper_repro.hopfield`     act 1: the Hebbian network simulator and replica theory.
- :mod:`paper_repro.feedforward`  act 2: Flax model ports, weights, data, evaluation, sweeps,
  data-free repairs.
- :mod:`paper_repro.experiments`  one declaration per figure or table (configs, compute,
  plots, tables), run alike by the notebooks, ``paper-repro figures`` and ``make``.
- :mod:`paper_repro.results`      byte-stable result files keyed by config and numerics version.
- :mod:`paper_repro.cli`          the ``paper-repro`` command line.
"""

__version__ = "0.1.0"

#: The version of the numerics: bumped whenever a change to the code must change results
#: (fitted levels, rounding, evaluation). Saved results and sweep rows record it; a result
#: computed under another version is recomputed, never reused.
NUMERICS_VERSION = 2
