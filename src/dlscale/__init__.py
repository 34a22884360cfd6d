"""dlscale: a scaling study of a BigDL LSTM on transient Spark standalone clusters.

Modules by environment:
- trainer environment (Python 3.9, pyspark, BigDL): ``paths``, ``cell``, ``cluster``, ``trainer``;
  these stay Python-3.9 compatible and import nothing outside the standard library at module level.
- driver environment (Python >= 3.11): ``idx``, ``datasets``, ``partition``,
  ``grid``, ``metrics``, ``tables``, ``markdown``, ``aggregate``, ``plots``.
"""

__version__ = "0.1.0"
