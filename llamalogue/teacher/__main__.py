"""`python -m llamalogue.teacher`: see llamalogue/teacher/llm.py."""

import sys

from llamalogue.teacher.llm import main

sys.exit(main())
