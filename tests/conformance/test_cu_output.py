"""The iscsi-test-cu transcript reader: verdicts, skips told apart from passes, odd layouts."""

from __future__ import annotations

from cu_output import Verdict, parse, parse_listing

# Shapes taken from a real run against tgt 1.0.85.
TRANSCRIPT = """\


     CUnit - A unit testing framework for C - Version 2.1-3

Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
  Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
Suite: Reserve6
  Test: TargetColdReset ...    [SKIPPED] Task Management functionfor ColdReset is not working

passed
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. UNIT_ATTENTION(6)

Suite: Sanitize
  Test: ExitFailureMode ...    [SKIPPED] --allow-sanitize flag is not set. Skipping test.
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
    2. test_iscsi_datasn_invalid.c:116  - CU_ASSERT_NOT_EQUAL(ret,0)
Suite: iSCSIResiduals
  Test: Read10Invalid ...passed
  Test: Read10Residuals ...    Send READ10 with a residual
"""


def test_verdicts_and_details() -> None:
    got = parse(TRANSCRIPT)
    assert {n: o.verdict for n, o in got.items()} == {
        "GetLBAStatus.Simple": Verdict.PASS,
        "GetLBAStatus.BeyondEol": Verdict.FAIL,
        "GetLBAStatus.UnmapSingle": Verdict.SKIP,
        "Reserve6.TargetColdReset": Verdict.SKIP,
        # the [FAILED] after "passed" belongs to the suite's teardown, not to LUNReset
        "Reserve6.LUNReset": Verdict.PASS,
        # the tool printed no verdict but went on: not a failure, and it said why it skipped
        "Sanitize.ExitFailureMode": Verdict.SKIP,
        "iSCSIdatasn.iSCSIDataSnInvalid": Verdict.FAIL,
        "iSCSIResiduals.Read10Invalid": Verdict.PASS,
        # Read10Residuals never finished (tool killed): no verdict at all
    }
    assert got["GetLBAStatus.BeyondEol"].detail == (
        "GET_LBA_STATUS successful but should have failed"
    )
    assert got["GetLBAStatus.UnmapSingle"].detail == (
        "Logical unit is fully provisioned. Skipping test"
    )
    assert got["iSCSIdatasn.iSCSIDataSnInvalid"].detail == (
        "test_iscsi_datasn_invalid.c:98 CU_ASSERT_NOT_EQUAL(ret,0)"
    )
    assert got["GetLBAStatus.Simple"].detail == ""


def test_listing() -> None:
    listing = "ALL\nALL.Read6\nALL.Read6.Simple\nALL.Read6.BeyondEol\nSCSI.Read6.Simple\n"
    assert parse_listing(listing) == ["Read6.Simple", "Read6.BeyondEol"]
