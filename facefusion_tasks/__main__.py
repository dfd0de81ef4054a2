"""`python -m facefusion_tasks` = the facefusion-tasks command."""

from __future__ import annotations

import sys

from facefusion_tasks.cli import main

sys.exit(main())
