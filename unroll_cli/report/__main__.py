"""``python -m unroll_cli.report DIR...``: the same as ``unroll-report``."""
import sys

from unroll_cli.report.aggregate import main

sys.exit(main())
