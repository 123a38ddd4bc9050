"""Correctness: inputs (``inputs``), the comparison with the float64 reference and the kernel checks
(``correctness``), and hypothesis strategies (``strategies``).  Users import them through
``layerbench.testing``."""
