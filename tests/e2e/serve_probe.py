"""Run `regtune serve` and, at exit, record which heavy packages the API process loaded."""

import atexit
import json
import os
import sys


def _dump() -> None:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "ray", "workers"})
    with open(os.environ["REGTUNE_PROBE_OUT"], "w") as handle:
        json.dump(heavy, handle)


atexit.register(_dump)

from service.cli import main  # noqa: E402

sys.argv = ["regtune", "serve", *sys.argv[1:]]
main()
