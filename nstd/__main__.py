"""`python -m nstd` is the `nstd` command."""

import sys

from nstd.cli import main

sys.exit(main())
