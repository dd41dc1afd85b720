"""`python -m instructsam_ros.demo` (also how the demo starts its camera process)."""
import sys

from instructsam_ros.demo import main

sys.exit(main())
