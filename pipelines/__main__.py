"""``python -m pipelines`` is the ``pipelines`` command."""

import sys

from pipelines.cli.main import main

sys.exit(main())
