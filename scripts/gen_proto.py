"""Generate agent/_proto from proto/workload.proto with grpc_tools.protoc.

Run ``python scripts/gen_proto.py`` after editing the .proto file and commit the
result; tests/test_proto_generated.py fails while the committed files are stale.
``--out DIR`` writes somewhere else, which is how that test compares. Needs the
grpcio-tools package (part of the test extras).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUT = REPO_ROOT / "agent" / "_proto"
PROTO_FILE = "workload.proto"

# protoc writes `import workload_pb2` for a top-level module; the generated package
# lives at agent._proto, so the service module must import it from there.
_SERVICE_IMPORT = "import workload_pb2 as workload__pb2"
_PACKAGE_IMPORT = "from agent._proto import workload_pb2 as workload__pb2"

# The stubs import google.protobuf, which has no type information unless types-protobuf
# is installed; mypy then reads the generated stub as untyped instead of failing.
_STUB_HEADER = "# mypy: ignore-errors\n"

INIT_TEXT = '"""Generated SPIFFE Workload API code; regenerate with scripts/gen_proto.py."""\n'


def generate(out_dir: Path) -> None:
    """Write workload_pb2.py, workload_pb2.pyi and workload_pb2_grpc.py into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / PROTO_FILE),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status} on {PROTO_DIR / PROTO_FILE}")

    service_module = out_dir / "workload_pb2_grpc.py"
    text = service_module.read_text()
    if _SERVICE_IMPORT not in text:
        raise SystemExit(f"expected the line {_SERVICE_IMPORT!r} in {service_module}")
    service_module.write_text(text.replace(_SERVICE_IMPORT, _PACKAGE_IMPORT))
    stub = out_dir / "workload_pb2.pyi"
    stub.write_text(_STUB_HEADER + stub.read_text())
    (out_dir / "__init__.py").write_text(INIT_TEXT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: agent/_proto)"
    )
    args = parser.parse_args(argv)
    generate(args.out)
    print(f"generated Workload API code in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
