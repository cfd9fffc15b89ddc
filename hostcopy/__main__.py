import sys

from hostcopy.cli import main

sys.exit(main())
