"""`python -m llamalogue.corpus`: see llamalogue/corpus/build.py."""

import sys

from llamalogue.corpus.build import main

sys.exit(main())
