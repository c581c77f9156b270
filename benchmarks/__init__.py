"""Save/load speed benchmarks, measured against the machine's own limit for the same bytes.

``payloads`` builds what is saved, ``operations`` holds the timed operations (torch, safetensors,
the harness, and the limits), ``report`` turns a run into a table of throughput and fractions of
the limit, ``regression`` compares a run with a stored baseline. ``test_save_load.py`` holds the
pytest-benchmark benchmarks and ``conftest.py`` only the pytest hooks.
"""
