"""Writes openapi.yaml (the HTTP contract at the repository root) from the app itself.

python -m service.gateway.openapi            # regenerate openapi.yaml at the repository root
python -m service.gateway.openapi --check    # exit 1 when the file differs from the app
python -m service.gateway.openapi PATH       # write (or --check) another file

tests/service/gateway/test_openapi.py holds the file equal to what a running gateway serves at /openapi.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from service.gateway.app import create_app
from service.settings import Settings

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


def openapi_document() -> dict[str, Any]:
    # The document depends on no setting; defaults keep it the same whatever UNCLIP_* says.
    return create_app(Settings.model_construct()).openapi()


class ContractDumper(yaml.SafeDumper):
    """Multi-line strings (descriptions) as `|` blocks, so the file reads like the docstrings it holds."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)


ContractDumper.add_representer(str, ContractDumper.represent_str)


def render(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=ContractDumper, sort_keys=False, allow_unicode=True, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.gateway.openapi", description=__doc__.splitlines()[0]
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if yaml.safe_load(current) != yaml.safe_load(text):
            print(f"{args.path} is out of date; run `python -m service.gateway.openapi`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
