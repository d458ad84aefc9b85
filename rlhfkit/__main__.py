import sys

from rlhfkit.cli import main

sys.exit(main())
