#!/usr/bin/env python3
"""Checks the receiver's line: local time with zone, equipment name, previous → new state,
the deciding group(s) and the values. Run by scripts/test.sh."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webhook_receiver as w  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


class Describe(unittest.TestCase):
    def setUp(self):
        os.environ["TZ"] = "Europe/Berlin"
        import time
        time.tzset()

    def event(self, prev):
        return {"id": "0d3c…", "time": "2024-11-21T09:06:40Z", "detail": {
            "ruleId": "filler-local", "equipmentId": "84068f2f-3f39-4b9c-a995-d2a84d878689",
            "previousState": prev, "state": "WARNING", "eventTime": 1732180000123,
            "groups": [
                {"name": "thermal", "state": "WARNING", "weight": 3, "since": 1732179700123},
                {"name": "production", "state": "ACTIVE", "weight": 1, "since": 1732170000000}],
            "values": {"water_temperature": 84.2, "pressure": 2.61}}}

    def test_line_is_readable(self):
        names = w.load_names(os.path.join(ROOT, "firmware-config/examples/filling-machine.toml"))
        line = w.describe(self.event("ACTIVE"), names)
        self.assertEqual(
            line,
            "10:06:40 CET  filler-local  filling_machine: ACTIVE → WARNING  "
            "(thermal=WARNING w3 since 10:01:40; pressure=2.61 water_temperature=84.2)")
        self.assertNotIn("None", w.describe(self.event(None), names))
        self.assertIn("(first state) → WARNING", w.describe(self.event(None), names))

    def test_names_from_a_config_do_not_take_other_keys(self):
        names = w.load_names(os.path.join(ROOT, "firmware-config/examples/filling-machine.toml"))
        self.assertEqual(names, {"84068f2f-3f39-4b9c-a995-d2a84d878689": "filling_machine"})

    def test_unknown_equipment_keeps_its_id(self):
        self.assertIn("84068f2f-3f39-4b9c-a995-d2a84d878689: ACTIVE",
                      w.describe(self.event("ACTIVE"), {}))


if __name__ == "__main__":
    unittest.main()
