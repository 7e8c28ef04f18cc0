"""The experiments: one declaration per figure or table, apart from the library.

Each module declares its experiments (:class:`~paper_repro.experiments.base.Experiment`) and
registers them; :func:`run` runs one (the notebooks call it), :func:`run_many` several
(``paper-repro figures`` and ``make figures`` call it). ``paper-repro figures --list`` lists
them with their notebooks and runtimes.

- ``quantizers``                  level sets and r vs bits on Gaussian and Laplace weights
- ``hopfield/*``                  act 1: r, overlaps, capacity, basins, field agreement, theory
- ``storage``                     bit-packed file sizes of a real MobileNet
- ``explorer``, ``explorer/*``    per-layer statistics and r; does r predict accuracy; qwix
- ``digits``, ``imagenet/*``      act 2 sweeps: the papers' recipe on the digits CNN and MobileNet
- ``datafree/*``                  data-free repairs and the named recipes (``recipes``)
"""

from paper_repro.experiments.base import (  # noqa: F401
    Context,
    Experiment,
    Outcome,
    all_experiments,
    get,
    register,
    run,
    run_many,
    select,
)
