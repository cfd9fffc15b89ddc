"""The SCSI command layer: transport-agnostic CDB handling for block and tape logical units."""
