from __future__ import annotations

import sys

from quantviz.cli import main

sys.exit(main())
