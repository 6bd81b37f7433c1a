"""`python -m edgeinfer.cli`: the same as the `edgeinfer` command."""

import sys

from . import main

sys.exit(main())
