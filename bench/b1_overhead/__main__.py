"""B1's internal entry points: the subprocesses the benchmark starts itself.

``python -m bench.b1_overhead bare ...``: the bare Ray Tune run (``bare_tune.bare_main``);
``python -m bench.b1_overhead serve-moved-agent-ports ...``: ``regtune serve`` with its
Ray head's agent ports moved (``service_mode.serve_moved_agent_ports``).
"""

from __future__ import annotations

import sys

from bench.b1_overhead.bare_tune import bare_main
from bench.b1_overhead.service_mode import serve_moved_agent_ports


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        sys.exit(bare_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "serve-moved-agent-ports":
        sys.exit(serve_moved_agent_ports(sys.argv[2:]))
    print("usage: python -m bench --only B1 (this module's own entry point is internal)",
          file=sys.stderr)
    sys.exit(2)
