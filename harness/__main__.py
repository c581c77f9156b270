"""``python -m harness``: see :mod:`harness.cli`.

This project's ``strategies`` package is imported from beside this one, so a user's
``strategies.py`` in the working directory (first on ``sys.path`` under ``python -m``) does
not shadow it. A ``harness`` module or folder in the working directory is one thing no code
here can help with: Python imports it instead of this package before this file runs. Run the
installed ``torch-persistence-harness`` command from such a folder.
"""

import sys

from harness.cli import main

sys.exit(main())
