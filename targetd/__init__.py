"""targetd: an iSCSI target daemon."""

__version__ = "0.1.0"
