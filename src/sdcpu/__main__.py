import sys

from sdcpu.cli import main

sys.exit(main())
