"""No code path may use an API that TensorRT 11 removed (weak typing, calibrators, binding indices)."""

from __future__ import annotations

import re
from pathlib import Path

import resnet_deploy

#: Removed in TensorRT 11 (or, for the binding-index API, in 10.0); see docs/tensorrt.md.
REMOVED = re.compile(r"execute_async_v2|get_binding_|EXPLICIT_BATCH|int8_calibrator|IInt8|"
                     r"BuilderFlag\.(FP16|INT8|BF16)|platform_has_fast")
SRC = Path(resnet_deploy.__file__).parent


def scan(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if REMOVED.search(line):
                hits.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return hits


def test_src_uses_no_api_that_tensorrt_11_removed():
    assert SRC.name == "resnet_deploy" and len(list(SRC.rglob("*.py"))) > 10
    hits = scan(SRC)
    assert not hits, "TensorRT 11 removed these APIs:\n" + "\n".join(hits)


def test_the_scan_finds_them(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "old.py").write_text("config.set_flag(trt.BuilderFlag.FP16)\nok = True\nctx.execute_async_v2(b, s)\n")
    assert [h.split(":")[1] for h in scan(pkg)] == ["1", "3"]
