"""`python -m instructsam_ros.benchmark` (see the package docstring and `--help`)."""
import sys

from instructsam_ros.benchmark.cli import main

sys.exit(main())
