"""The copy manager's limits, named once: OPERATING PARAMETERS, VPD page 8Fh and the
decoder all read them from here, so what is reported is what is enforced.

The descriptor limits are chosen so that libiscsi's ExtendedCopy.DescrLimits can tell the
three errors apart: ``MAX_DESCRIPTOR_LIST_LENGTH`` admits one CSCD descriptor too many
(with a segment) and one segment descriptor too many (with a CSCD), but not both at once.
"""

from __future__ import annotations

MiB = 1 << 20

MAX_CSCD_DESCRIPTORS = 16
MAX_SEGMENT_DESCRIPTORS = 256
# (16+1)*32 + 28 <= 32 + (256+1)*28 = 7228 <= 7680 < (16+1)*32 + (256+1)*28 = 7740
MAX_DESCRIPTOR_LIST_LENGTH = 7680
# Bytes one segment may move: a 16-bit block count of 4096-byte blocks, rounded up.
MAX_SEGMENT_LENGTH = 256 * MiB
# Inline data (segment 04h writes it to a stream device: a tape label, say).
MAX_INLINE_DATA_LENGTH = 64 * 1024
# Nothing is held for RECEIVE COPY RESULTS / RECEIVE DATA (no CAT=1 hold segments).
HELD_DATA_LIMIT = 0
# The longest record the tape LU takes (scsi.ssc.MAX_BLOCK_LENGTH).
MAX_STREAM_TRANSFER = 8 * MiB
# Copies running at once, over the whole target, and per I_T nexus.
MAX_CONCURRENT_COPIES = 16
# log2 of the byte granularity of a segment's data (stream and byte-offset segments).
DATA_SEGMENT_GRANULARITY = 9
INLINE_DATA_GRANULARITY = 2
HELD_DATA_GRANULARITY = 0
# Results of finished copies kept per I_T nexus for RECEIVE COPY RESULTS (oldest go first).
MAX_RETAINED_RESULTS = 64

# How much one copy holds in memory: chunks of CHUNK bytes, at most QUEUE_DEPTH read ahead.
CHUNK = 1 * MiB
QUEUE_DEPTH = 2

LID1_HEADER = 16
LID4_HEADER = 48
CSCD_LENGTH = 32
