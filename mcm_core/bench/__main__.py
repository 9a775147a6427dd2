"""Entry point: quality benchmark by default, ``--speed`` forwards to mcm_core.bench.speed.main,
``--detection`` to mcm_core.bench.detection.main."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--speed" in argv:
        from . import speed  # lazy: written by the backbones engineer, needs torchvision
        argv.remove("--speed")
        return speed.main(argv) or 0
    if "--detection" in argv:
        from . import detection
        argv.remove("--detection")
        return detection.main(argv) or 0
    from . import quality
    return quality.main(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
