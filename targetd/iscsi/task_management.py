"""Task management requests (ABORT TASK, ABORT/CLEAR TASK SET, the resets) and the driver's
calls that abort a connection's commands."""

from __future__ import annotations

from scsi.target import decode_lun
from targetd.iscsi import pdu as P
from targetd.iscsi.connection_state import Task
from targetd.iscsi.events import AbortTasks, ResetRequested, TaskHandle, TmfFunction, TmfResponse
from targetd.iscsi.nop_text_logout import NopTextLogout
from targetd.iscsi.pdu import Op, Pdu
from targetd.iscsi.scsi_commands import ScsiCommands

_RESETS = (
    TmfFunction.LOGICAL_UNIT_RESET,
    TmfFunction.TARGET_WARM_RESET,
    TmfFunction.TARGET_COLD_RESET,
)


class TaskManagement(ScsiCommands, NopTextLogout):
    def aborts_finished(self, token: int) -> None:
        pending = self._pending_tmf.pop(token, None)
        if pending is not None:
            self._tmf_response(pending[0], pending[1])

    def abort_matching(self, lun: int | None) -> list[TaskHandle]:
        """Abort this connection's commands for ``lun`` (None: all) without responses."""
        victims = [t for t in self.tasks.values() if lun is None or t.lun == lun]
        for t in victims:
            self._forget(t)
        return [t for t in victims if t.started]

    def _on_task_mgmt(self, pdu: Pdu) -> None:
        def deliver() -> None:
            self._task_mgmt(pdu)

        self._sequence(pdu, deliver)

    def _task_mgmt(self, pdu: Pdu) -> None:
        function = pdu.flags & 0x7F
        lun = decode_lun(pdu.lun)
        token = self._next_token
        self._next_token += 1
        if function == TmfFunction.ABORT_TASK:
            rtt = pdu.u32(20)
            task = self.tasks.get(rtt)
            if task is None or task.lun != lun:
                # RFC 7143 11.5.1: a command that has not arrived yet is aborted ("Function
                # complete"); one already answered (its CmdSN below ExpCmdSN, outside the
                # window) or unknown: "Task does not exist".
                found = pdu.u32(32) == pdu.cmdsn
                self._tmf_response(pdu, TmfResponse.COMPLETE if found else TmfResponse.NO_TASK)
                return
            victims = self._abort_task(task)
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            self._events.append(AbortTasks(tuple(victims), token))
        elif function in (TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET):
            victims = [
                t
                for t in self.tasks.values()
                if t.lun == lun and t.itt != pdu.itt and _older(t.cmdsn, pdu.cmdsn)
            ]
            for t in victims:
                self._forget(t)
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            self._events.append(AbortTasks(tuple(t for t in victims if t.started), token))
        elif function in _RESETS:
            if self.is_discovery:
                self._tmf_response(pdu, TmfResponse.REJECTED)
                return
            target_lun = lun if function == TmfFunction.LOGICAL_UNIT_RESET else None
            self._pending_tmf[token] = (pdu, TmfResponse.COMPLETE)
            cold = function == TmfFunction.TARGET_COLD_RESET
            self._events.append(ResetRequested(target_lun, self.nexus, token, cold))  # type: ignore[arg-type]
        else:
            self._tmf_response(pdu, TmfResponse.NOT_SUPPORTED)

    def _abort_task(self, task: Task) -> list[Task]:
        self._forget(task)
        return [task] if task.started else []

    def _tmf_response(self, pdu: Pdu, response: int) -> None:
        hdr = P.new_header(Op.TASK_MGMT_RESPONSE, 0x80, itt=pdu.itt)
        hdr[2] = response
        self._send(hdr)
        self._maybe_finish_logout()


def _older(cmdsn: int, than: int) -> bool:
    return P.serial_lt(cmdsn, than)
