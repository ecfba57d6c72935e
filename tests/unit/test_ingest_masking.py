"""PII masking (keyed HMAC, domain kept) and the untagged-PII detector."""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa

from datamaster_assets.contracts import get_contract, parse_contract
from datamaster_assets.ingest.masking import PiiDetector, mask_array, mask_email_value, mask_table


def test_email_keeps_domain_and_uses_keyed_hmac():
    masked = mask_email_value(b"k1", "charles04@example.org")
    local, domain = masked.split("@")
    assert domain == "example.org"
    assert local == hmac.new(b"k1", b"charles04", hashlib.sha256).hexdigest()
    assert local != hashlib.sha256(b"charles04").hexdigest()  # never unsalted


def test_masking_is_deterministic_and_key_dependent():
    values = pa.array(["a@x.com", None, "b@y.org", "a@x.com", "no-at-sign"])
    one = mask_array(values, "email", b"k1").to_pylist()
    again = mask_array(values, "email", b"k1").to_pylist()
    other = mask_array(values, "email", b"k2").to_pylist()
    assert one == again
    assert one[0] == one[3] and one[1] is None
    assert one[0] != other[0] and one[0].endswith("@x.com") and other[0].endswith("@x.com")
    assert "@" not in one[4] and len(one[4]) == 64


def test_identifier_tag_masks_whole_value():
    contract = parse_contract({
        "name": "t", "primary_key": ["id"],
        "columns": [{"name": "id", "type": "int64", "nullable": False}, {"name": "ssn", "type": "string", "pii": "identifier"}],
    })
    table = pa.table({"id": [1, 2], "ssn": ["123-45-6789", None]})
    out = mask_table(table, contract, b"key").column("ssn").to_pylist()
    assert out == [hmac.new(b"key", b"123-45-6789", hashlib.sha256).hexdigest(), None]
    assert table.column("id").to_pylist() == [1, 2]


def test_detector_flags_lookalikes_only_in_untagged_string_columns():
    contract = parse_contract({
        "name": "t", "primary_key": ["id"],
        "columns": [
            {"name": "id", "type": "int64", "nullable": False},
            {"name": "contact", "type": "string"},
            {"name": "phone", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "email", "type": "string", "pii": "email"},
        ],
    })
    detector = PiiDetector(contract)
    detector.observe(pa.table({
        "id": [1, 2, 3, 4],
        "contact": ["a@b.com", "c@d.org", "e@f.net", None],
        "phone": ["(555) 123-4567", "+1 555 987 6543", "555-222-3333", "n/a"],
        "name": ["Ann", "Bob", "Cy", "Di"],
        "email": ["x@y.com"] * 4,
    }))
    findings = detector.findings()
    assert any("'contact'" in f and "email address" in f for f in findings)
    assert any("'phone'" in f and "phone number" in f for f in findings)
    assert not any("'name'" in f or "'email'" in f for f in findings)


def test_detector_flags_e164_phones_and_bare_card_numbers_but_not_long_ids():
    contract = parse_contract({
        "name": "t", "primary_key": ["id"],
        "columns": [{"name": "id", "type": "int64", "nullable": False}, {"name": "phone", "type": "string"},
                    {"name": "card", "type": "string"}, {"name": "order_ref", "type": "string"}],
    })
    detector = PiiDetector(contract)
    detector.observe(pa.table({
        "id": [1, 2, 3],
        "phone": ["+15551234567", "+442071838750", "+4915123456789"],
        "card": ["4111111111111111", "5500005555555559", "378282246310005"],  # test numbers, Luhn-valid
        "order_ref": ["4111111111111112", "5500005555555550", "378282246310001"],  # same length, no check digit
    }))
    findings = detector.findings()
    assert any("'phone'" in f and "phone number" in f for f in findings)
    assert any("'card'" in f and "payment card number" in f for f in findings)
    assert not any("'order_ref'" in f for f in findings)


def test_profile_contract_email_is_tagged():
    assert get_contract("profile").pii_columns == {"email": "email"}
