"""``python -m dclszoo``: the ``dclszoo`` command line (:mod:`dclszoo.cli`)."""

import sys

from .cli import main

sys.exit(main())
