"""``python -m fastrader COMMAND``: the same as the ``fastrader`` command."""

from fastrader.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
