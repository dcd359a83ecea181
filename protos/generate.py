"""Regenerate the Python code in src/ from the .proto files (the one way to do it)."""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE
PROTO_PACKAGE_DIR = PROTO_ROOT / "prognos" / "api"
OUT_ROOT = HERE / "src"
OUT_PACKAGE_DIR = OUT_ROOT / "prognos" / "api"

# Vendored upstream protos generated beside ours: the protovalidate package validates with a
# native engine and ships no google.protobuf module for its rules, which every generated
# Prognos module imports (``from buf.validate import validate_pb2``). See buf/README.md.
VENDORED_PROTOS = (Path("buf/validate/validate.proto"),)
# The packages below src/ that the generator writes, each compared and synced as a whole.
GENERATED_PACKAGES = (Path("prognos/api"), Path("buf"))

# Generated code embeds the generator's version (gencode checks, stub syntax), so a different
# toolchain would show up as a diff in every file: pin the major.minor that produced the
# committed code, and bump it here on purpose.
PINNED_TOOLS: dict[str, str] = {
    "grpcio-tools": "1.85.",
    "mypy-protobuf": "5.",
}

# Everything the generator writes below prognos/api; other files there are stale.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
MARKER_FILES = ("__init__.py", "py.typed")
ROOT_DOCSTRING = "Generated Prognos API (do not edit)."


class ToolchainError(RuntimeError):
    """The installed code generators are not the pinned versions."""


def check_toolchain_versions() -> None:
    """Fail with a clear message unless the pinned generator versions are installed.

    Raises:
        ToolchainError: a generator is missing or has another version.
    """
    problems: list[str] = []
    for dist, prefix in PINNED_TOOLS.items():
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{dist} is not installed (need {prefix}x)")
            continue
        if not found.startswith(prefix):
            problems.append(f"{dist} is {found}, need {prefix}x")
    if problems:
        raise ToolchainError(
            "proto toolchain mismatch: "
            + "; ".join(problems)
            + ". Run `uv sync --all-packages` in the repository root, "
            "or change PINNED_TOOLS in protos/generate.py on purpose and regenerate."
        )


def _plugin(name: str) -> Path:
    """Find a protoc plugin installed next to this interpreter (the workspace venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"{name} not found next to {sys.executable} or on PATH")
    return Path(found)


def proto_files() -> list[Path]:
    """Return every .proto file below prognos/api, relative to the proto root, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_PACKAGE_DIR.rglob("*.proto"))


def _docstring(package_dir: Path, out_root: Path) -> str:
    rel = package_dir.relative_to(out_root)
    if rel == Path("prognos/api"):
        return ROOT_DOCSTRING
    if rel.parts[0] == "buf":
        name = ".".join(rel.parts)
        return f"Generated code for {name}, vendored from protovalidate (do not edit)."
    return f"Generated code for {'.'.join(rel.parts)} (do not edit)."


def generate_into(out_root: Path) -> None:
    """Run protoc with the Python, gRPC and mypy plugins, writing below out_root.

    Args:
        out_root: the directory that receives prognos/api/... (created if missing).

    Raises:
        ToolchainError: a plugin is missing.
        subprocess.CalledProcessError: protoc failed (its message is on stderr).
    """
    out_root.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *(str(p) for p in proto_files()),
        *(str(p) for p in VENDORED_PROTOS),
    ]
    subprocess.run(args, check=True, cwd=PROTO_ROOT)
    package_dir = out_root / "prognos" / "api"
    package_dir.mkdir(parents=True, exist_ok=True)
    for top in (package_dir, out_root / "buf"):
        for directory in sorted({top, *(p for p in top.rglob("*") if p.is_dir())}):
            (directory / "__init__.py").write_text(f'"""{_docstring(directory, out_root)}"""\n')
    # PEP 561: the .pyi stubs are the package's types.
    (package_dir / "py.typed").write_text("")


def _is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES) or path.name in MARKER_FILES


def _tree(package_dir: Path) -> dict[Path, Path]:
    """Map relative path -> absolute path of the generated files below package_dir."""
    if not package_dir.exists():
        return {}
    return {
        p.relative_to(package_dir): p
        for p in package_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and _is_generated(p)
    }


def stale_files(fresh_dir: Path, committed_dir: Path) -> list[str]:
    """List the files that differ between a fresh generation and the committed one."""
    fresh, committed = _tree(fresh_dir), _tree(committed_dir)
    stale: list[str] = []
    for rel in sorted(fresh.keys() | committed.keys()):
        if rel not in committed:
            stale.append(f"missing: {rel}")
        elif rel not in fresh:
            stale.append(f"obsolete: {rel}")
        elif not filecmp.cmp(fresh[rel], committed[rel], shallow=False):
            stale.append(f"differs: {rel}")
    return stale


def _sync(fresh_dir: Path, committed_dir: Path) -> None:
    fresh, committed = _tree(fresh_dir), _tree(committed_dir)
    for rel, path in committed.items():
        if rel not in fresh:
            path.unlink()
    for rel, path in fresh.items():
        target = committed_dir / rel
        if rel in committed and filecmp.cmp(path, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    # Drop directories left empty by removed protos (ignoring bytecode caches).
    for directory in sorted((p for p in committed_dir.rglob("*") if p.is_dir()), reverse=True):
        if directory.name != "__pycache__" and not any(
            c.name != "__pycache__" for c in directory.iterdir()
        ):
            shutil.rmtree(directory)


def main(argv: list[str] | None = None) -> int:
    """Regenerate src/prognos/api, or with --check report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory; exit 1 listing stale files if the "
        "committed code differs",
    )
    options = parser.parse_args(argv)
    try:
        check_toolchain_versions()
    except ToolchainError as error:
        print(error, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="prognos-protos-") as tmp:
        fresh_root = Path(tmp)
        generate_into(fresh_root)
        if options.check:
            stale = [
                f"{line} (in {package})"
                for package in GENERATED_PACKAGES
                for line in stale_files(fresh_root / package, OUT_ROOT / package)
            ]
            if stale:
                print(
                    "generated code is stale; run `uv run --frozen python protos/generate.py`:",
                    file=sys.stderr,
                )
                for line in stale:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print(f"generated code is up to date ({len(proto_files())} proto files)")
            return 0
        for package in GENERATED_PACKAGES:
            _sync(fresh_root / package, OUT_ROOT / package)
    print(f"generated {len(proto_files())} proto files into {OUT_PACKAGE_DIR.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
