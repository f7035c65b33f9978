import sys

from fcnkit.cli import main

sys.exit(main())
