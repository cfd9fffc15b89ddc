"""Bounds of the asyncio shell's output, shared by the shell (targetd.server) and the fast
paths that write without it (targetd.fast_read)."""

from __future__ import annotations

# Replies waiting unsent in a connection's transport beyond this: stop reading the
# initiator's commands until they have gone (it does not read as fast as it asks).
WRITE_BUFFER_HIGH = 16 << 20
