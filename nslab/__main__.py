import sys

from nslab.cli import main

sys.exit(main())
