"""The package layout tells the flow: audio → motion / emotion know nothing of a face's identity.

motion/ (audio → rig) and emotion/ (audio or rigs → emotion) must not import avatar/ (photos,
landmarks, the store), render/ (the warp renderer and its basis) or capture/ (face video → rig, which
reads both): identity lives only there. Checked on the source, every import statement, lazy ones too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stream_avatar

ROOT = Path(stream_avatar.__file__).parent
IDENTITY = ("stream_avatar.avatar", "stream_avatar.render", "stream_avatar.capture")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


@pytest.mark.parametrize("package", ["motion", "emotion"])
def test_no_identity_imports(package: str) -> None:
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    bad = [
        f"{f.name}:{line} imports {name}"
        for f in files
        for line, name in _imports(f)
        if any(name == m or name.startswith(m + ".") for m in IDENTITY)
    ]
    assert not bad, bad
