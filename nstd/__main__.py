"""`python -m nstd` is the `nstd` command."""

import sys

from nstd.cli.main import main

sys.exit(main())
