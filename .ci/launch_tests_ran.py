"""CI check: the `ros2 launch` tests ran in a pytest run, none skipped.

  python .ci/launch_tests_ran.py JUNIT_XML LABEL

Reads pytest's JUnit XML (--junitxml), prints how many tests of tests/ros/test_ros_launch.py
ran, were skipped and failed, and exits 1 when none ran or any was skipped (a launch test skips
where `ros2 launch` is not installed; CI must run them).
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

MODULE = "tests.ros.test_ros_launch"


def main() -> int:
    path, label = sys.argv[1], sys.argv[2]
    cases = [case for case in ET.parse(path).getroot().iter("testcase") if case.get("classname") == MODULE]
    skipped = [case for case in cases if case.find("skipped") is not None]
    failed = [case for case in cases if case.find("failure") is not None or case.find("error") is not None]
    ran = len(cases) - len(skipped)
    print(f"launch tests ({label}): {ran} ran, {len(skipped)} skipped, {len(failed)} failed")
    for case in skipped:
        print(f"  skipped: {case.get('name')}: {case.find('skipped').get('message')}")
    return 0 if ran > 0 and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
