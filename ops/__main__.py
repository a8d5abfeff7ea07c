"""`python -m ops …` is the `mapo-ops` command."""

import sys

from ops.cli import main

sys.exit(main())
