"""Storage that knows nothing of SCSI: the sparse-file block store (and, later, tape images
and the pair/mirror engine)."""

from backing.sparse_file import Extent, SparseFile

__all__ = ["Extent", "SparseFile"]
