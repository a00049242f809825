import sys

from modelmarket.cli import main

sys.exit(main())
