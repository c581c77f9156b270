"""The cross-version matrix: every torch of :data:`matrix.versions.VERSIONS` writes a corpus
of checkpoints, every one reads every other's, and the outcomes land in
``matrix/results.json``, rendered as ``matrix/grid.md`` and ``matrix/grid.png``.

Run it with ``python -m matrix run`` (see ``matrix/README.md``).
"""
