"""Old path of `suite.commands.cli`, kept for one release (see CHANGELOG.md): `python -m
suite.cli` still runs the CLI (torchrun scripts name it); `python -m suite` is the new form."""

from suite.commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
