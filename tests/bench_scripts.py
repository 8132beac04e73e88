"""A script of bench/ imported as a module, for tests of its pure parts."""

import contextlib
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


@contextlib.contextmanager
def bench_script(name: str):
    """bench/<name>.py as module `name`, registered in sys.modules while in use (its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
