import sys

from vitq.cli import main

sys.exit(main())
