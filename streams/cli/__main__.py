"""``python -m driftline.streams.cli``: the ``driftline`` command without its installed script."""

import sys

from driftline.streams.cli.main import main

sys.exit(main())
