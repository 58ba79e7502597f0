import sys

from affectedit.cli import main

sys.exit(main())
