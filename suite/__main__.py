"""`python -m suite ...` is `diffscale ...` (torchrun's `-m suite run CONFIG`)."""

from suite.commands.cli import main

raise SystemExit(main())
