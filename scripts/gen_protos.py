"""Regenerate the committed Python code of protos/xpu/v1 from the .proto files.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: the repository's protos/ folder)

The generated modules import each other as `xpu.v1.*`; we rewrite that to `xpuctl.protos.xpu.v1.*` so the
code is importable from the installed distribution. tests/test_protos.py runs this into a temp dir
and fails when the committed files differ.
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "protos"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir/xpu/v1."""
    protos = sorted(str(p.relative_to(SRC)) for p in (SRC / "xpu" / "v1").glob("*.proto"))
    (out_dir / "xpu" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{SRC}",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        msg = f"protoc failed: {' '.join(args)}"
        raise SystemExit(msg)
    written = sorted((out_dir / "xpu" / "v1").glob("*_pb2*.py*"))
    for path in written:
        text = path.read_text()
        text = re.sub(r"^from xpu\.v1 import", "from xpuctl.protos.xpu.v1 import", text, flags=re.MULTILINE)
        path.write_text(text)
    return written


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else SRC
    for p in generate(target):
        print(p)
