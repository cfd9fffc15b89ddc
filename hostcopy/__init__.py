"""targetd-copy: the backup engineer's host-side command.

It runs on an initiator host (no daemon there) and drives a targetd copy manager with
standard SCSI commands: EXTENDED COPY(LID4) lists it builds from what the devices report
(VPD 83h designators, the copy manager's limits), RECEIVE COPY STATUS to follow them, tape
commands to position and read labels, and the vendor pair commands of docs/pairs.md.

Two transports behind one :class:`hostcopy.device.Device`: SG_IO on ``/dev/sgN`` or
``/dev/sdX`` (as sg3_utils), and libiscsi for ``iscsi://`` URLs. Nothing here imports the
daemon's packages except the pure sense table of ``scsi.sense``.
"""
