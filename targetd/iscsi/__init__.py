"""The iSCSI protocol (RFC 7143) as sans-I/O state machines: bytes in, events and bytes out.

Nothing in this package may import asyncio or socket; ``targetd.server`` drives it.
"""
