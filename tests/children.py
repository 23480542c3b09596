"""What the Python children that a test signals start with.

A shell without job control starts background commands (``cmd &``, a CI step run that way)
with SIGINT ignored, and every child inherits it: Python then installs no KeyboardInterrupt
handler, tracelet rightly leaves an ignored signal alone, and a test of what Ctrl-C does waits
for its timeout. The children start as an interactive Python does, however the suite was started.
"""

from __future__ import annotations

#: prepended to the source of a child script (before anything else it runs)
INTERACTIVE_SIGINT = "import signal as _signal\n_signal.signal(_signal.SIGINT, _signal.default_int_handler)\n"
