"""The layering of DESIGN §2, checked on the code: the gateway process never loads torch, the gateway and
the shared jobs layer take only `models.contract` from `models`, `models` never imports `service`, and
the three service folders do not reach into each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def reaches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# folder → module prefixes it must not import (anything under them), except the allowed ones
RULES = {
    "service/gateway": (("models", "service.worker"), ("models.contract",)),
    "service/jobs": (("models", "service.worker", "service.gateway"), ("models.contract",)),
    "service/worker": (("service.gateway",), ()),
    "models": (("service",), ()),
}


@pytest.mark.parametrize("folder", RULES)
def test_imports_follow_the_layers(folder: str) -> None:
    forbidden, allowed = RULES[folder]
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}"
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if any(reaches(module, prefix) for prefix in forbidden)
        and not any(reaches(module, prefix) for prefix in allowed)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_gateway_process_never_imports_torch() -> None:
    # A fresh interpreter (this one may have torch loaded by other tests), through the gateway's own way in:
    # `unclip gateway` = service.cli → service.serve → service.gateway.app.
    code = (
        "import sys\n"
        "import service.cli, service.serve\n"
        "from service.gateway.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=True)
    assert done.stdout.strip() == "['models', 'models.contract']", done.stdout + done.stderr
