"""``python -m sdlib`` is the ``sdlib`` command (``sdlib.cli``)."""

import sys

from sdlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
