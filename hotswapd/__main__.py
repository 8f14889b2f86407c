"""`python -m hotswapd`."""

import sys

from hotswapd.cli import main

sys.exit(main())
