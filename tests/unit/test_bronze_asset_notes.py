"""The bronze asset's materialization shows each file's notes (the PII detector reports only there)."""

from datamaster_assets.defs.bronze import bronze_metadata
from datamaster_assets.defs.compute import ItemOutcome


def test_notes_of_processed_files_reach_the_materialization():
    pii = "possible PII: untagged column 'profile_name' looks like email address (20 of 20 sampled values)"
    outcomes = [
        ItemOutcome("b-1", "inprocess", "success", {"control_id": "b-1", "records_read": 20, "accepted": 20,
                                                    "notes": pii + "\nextra fields ignored: x"}),
        ItemOutcome("b-2", "lambda", "success", {"control_id": "b-2", "records_read": 1, "accepted": 1}),
    ]
    md = bronze_metadata(outcomes)
    text = md["notes"].value
    assert f"`b-1`: {pii}" in text and "`b-1`: extra fields ignored: x" in text and "b-2" not in text
    assert "notes" not in bronze_metadata(outcomes[1:])
