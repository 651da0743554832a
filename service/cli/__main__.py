"""``python -m service.cli ARGS`` is ``stlight ARGS``."""

import sys

from service.cli.stlight import main

sys.exit(main())
