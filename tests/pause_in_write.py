"""Run the mnistdiff command line, pausing inside the K-th write of a named file, so that a test
can kill the process in the middle of that write (tests/test_faults.py).

    python tests/pause_in_write.py NAME:K train ...

Every crash-safe write (``mnist_diffusion.io.atomic_open``) renames its finished temporary file
into place with ``os.replace``; this script wraps ``os.replace`` so that the K-th rename onto a
file called NAME first prints ``paused in the write of NAME`` to stderr and sleeps: the bytes are
written, the file under its real name is not yet replaced."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, as `python -m` would


def pause_in_write(name: str, count: int) -> None:
    """Wrap ``os.replace`` to pause before the ``count``-th rename onto a file called ``name``."""
    real_replace = os.replace
    seen = 0

    def replace(src, dst, **kwargs):
        nonlocal seen
        if Path(dst).name == name:
            seen += 1
            if seen == count:
                print(f"paused in the write of {name}", file=sys.stderr, flush=True)
                time.sleep(3600)
        return real_replace(src, dst, **kwargs)

    os.replace = replace


def main() -> None:
    spec, *args = sys.argv[1:]
    name, _, count = spec.partition(":")
    pause_in_write(name, int(count or 1))
    from mnist_diffusion.cli import app

    app(args, prog_name="mnistdiff")


if __name__ == "__main__":
    main()
