"""The operational values a login negotiated, as the connection and session read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SessionParams:
    """RFC 7143 defaults until a login (or a Text renegotiation) says otherwise."""

    header_digest: bool = False
    data_digest: bool = False
    # What the initiator declared: the most data we may put in one PDU we send.
    initiator_max_recv_data_segment_length: int = 8192
    # What we declared: the most data the initiator may send us in one PDU.
    target_max_recv_data_segment_length: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = True
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    max_connections: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    initiator_name: str = ""
    initiator_alias: str = ""
    target_name: str = ""
    session_type: str = "Normal"

    @property
    def discovery(self) -> bool:
        return self.session_type == "Discovery"
