import sys

from ap_core.cli import main

sys.exit(main())
