"""The project's own tests run under the harness's Hypothesis profiles, asked for the way a
user asks: ``$HARNESS_PROFILE``, set here (before the plugin configures) to ``ci`` when
``$CI`` is set and ``dev`` otherwise, unless it is set already; ``--hypothesis-profile``
still overrides it.

All three profiles are registered too, because some tests run the suite under a profile
named ``ci`` (the harness's, not Hypothesis's built-in one).
"""

from __future__ import annotations

import os

from harness import profiles

if not os.environ.get(profiles.ENVIRONMENT_VARIABLE):
    os.environ[profiles.ENVIRONMENT_VARIABLE] = profiles.choose_profile()[0]
profiles.register_profiles()
