"""pytest plugin of torch-persistence-harness (registered through the ``pytest11`` entry point)."""
