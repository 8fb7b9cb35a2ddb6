"""Suite-wide settings.

Under CI (CI=true) hypothesis runs derandomized: the same examples every run,
so a red CI is a real regression, not a new random draw. Locally it explores
new examples each run, which is where new bugs are found.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
