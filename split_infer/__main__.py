import sys

from split_infer.cli import main

sys.exit(main())
