"""``python -m tracelet.delivery``: the delivery agent (see :mod:`tracelet.delivery.agent_side`)."""

import sys

from tracelet.delivery.agent_side import main

if __name__ == "__main__":
    sys.exit(main())
