"""`python -m client …` is the `mapo` command."""

import sys

from client.cli import main

sys.exit(main())
