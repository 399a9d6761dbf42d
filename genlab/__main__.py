"""``python -m genlab`` (and ``torchrun ... -m genlab train ...``)."""

from genlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
