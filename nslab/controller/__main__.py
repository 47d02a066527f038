import sys

from nslab.controller.runner import main

sys.exit(main())
