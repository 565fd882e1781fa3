"""`python -m models.train {train,evaluate,blend} ...`"""

from models.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
