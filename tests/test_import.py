"""`import fastrnn` stays light: what only some uses need (Dynamo, triton) is imported when first needed."""

from __future__ import annotations

import subprocess
import sys


HEAVY = ("torch._dynamo", "triton")  # about 1 s and 0.1 s on top of `import torch` on a 2-core machine


def _imported_after(statement: str) -> list[str]:
    probe = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_import_torch_alone_imports_neither():
    assert _imported_after("import torch") == []  # else the check below would prove nothing


def test_import_fastrnn_imports_neither_dynamo_nor_triton():
    assert _imported_after("import fastrnn") == []
