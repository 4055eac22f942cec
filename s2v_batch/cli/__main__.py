"""``python -m s2v_batch.cli``: the ``s2v`` command."""

import sys

from s2v_batch.cli.main import main

sys.exit(main())
