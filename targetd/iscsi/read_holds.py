"""READs answered from a file (sendfile) and held in their task set until the initiator
acknowledges their status (docs/performance.md, "Third round")."""

from __future__ import annotations

from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import Phase
from targetd.iscsi.pdu import Op, put_u32
from targetd.iscsi.replies import Replies


class ReadHolds(Replies):
    @property
    def holding(self) -> bool:
        """READs sent from a file still wait for the initiator's acknowledgement."""
        return bool(self._holds)

    def _acknowledged(self, exp_stat_sn: int) -> None:
        """The initiator has every status below ``exp_stat_sn`` (so every byte before them):
        the READs sent from a file that those end are complete. A value further past what
        was sent than one (an initiator that counts a ping's StatSN, which the ping does not
        consume) is not believed."""
        if not P.serial_le(exp_stat_sn, (self.stat_sn + 1) & 0xFFFFFFFF):
            return
        holds = self._holds
        while holds and P.serial_lt(holds[0][0], exp_stat_sn):
            holds.popleft()[1].release()

    def _ping_for_holds(self) -> None:
        """A task waits for our READs sent from a file: ask the initiator for its ExpStatSN
        now (a NOP-In ping, after their statuses), instead of whenever it next sends
        something. One ping covers every status sent before it."""
        if self.phase is not Phase.FULL_FEATURE or not self._holds:
            return
        if self._pinged_at_sn == self.stat_sn:
            return  # already pinged after the last of them
        self._pinged_at_sn = self.stat_sn
        self._ping_ttt = self._new_ttt()
        hdr = P.new_header(Op.NOP_IN, 0x80, lun=bytes(8))
        put_u32(hdr, 20, self._ping_ttt)
        # Not armed as a keepalive (``_ping_sent_at``): an initiator slow to read the data
        # before the ping is alive; it must not be dropped for that.
        self._send(hdr, advance_statsn=False)
        self.wake()
