"""``/metrics``: the whole deployment's figures in the Prometheus text format.

Any process answers for all of them: it refreshes its own snapshot, then
renders every live snapshot of the runtime directory (each process writes its
own every two seconds, see rtbus.metrics.snapshots). An application without a
snapshot writer (library use, tests) renders its own figures only.

The route has no authentication: expose it to the monitoring host only
(nginx ``allow``/``deny``, see docs/operations.md).
"""

from __future__ import annotations

import os
import time

from werkzeug.wrappers import Request, Response

from rtbus.metrics import exposition, snapshots


def metrics(app, request: Request) -> Response:
    writer = app.snapshots
    if writer is not None:
        writer.write()
        found = snapshots.read_all(writer.directory)
    else:
        found = [{"kind": app.role, "pid": os.getpid(), "started": None, "written": time.time(),
                  "metrics": app.services.figures()}]
    response = Response(exposition.render(found), mimetype="text/plain")
    response.headers["Content-Type"] = exposition.CONTENT_TYPE
    response.headers["Cache-Control"] = "no-store"
    return response
