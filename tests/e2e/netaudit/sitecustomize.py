"""Put on PYTHONPATH by the E2E suite: every Python child process records its outside connections."""

import os

if os.environ.get("TRACELET_NET_AUDIT_FILE"):
    import tracelet_netaudit

    tracelet_netaudit.install()
