"""Sum test results of every suite: meson's testlog.json and pytest junit xml."""
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

results = sys.argv[1]
passed = failed = 0
lines = []
for path in sorted(glob.glob(os.path.join(results, '*.json'))):
    p = f = 0
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get('result') in ('OK', 'EXPECTEDFAIL'):
                p += 1
            else:
                f += 1
    lines.append(f"{os.path.basename(path)[:-5]}: {p} passed, {f} failed")
    passed += p
    failed += f
for path in sorted(glob.glob(os.path.join(results, '*.xml'))):
    p = f = 0
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        lines.append(f"{os.path.basename(path)[:-4]}: no result file (suite crashed)")
        failed += 1
        continue
    for case in root.iter('testcase'):
        bad = [c for c in case if c.tag in ('failure', 'error', 'skipped')]
        if bad:
            f += 1
        else:
            p += 1
    # a skipped test counts as failed unless it says why; pytest always says
    # why, but we still count it as failed so skips never hide
    lines.append(f"{os.path.basename(path)[:-4]}: {p} passed, {f} failed")
    passed += p
    failed += f
expected_file = os.path.join(results, 'expected')
expected = open(expected_file).read().split() if os.path.exists(expected_file) else []
for name in expected:
    if not os.path.exists(os.path.join(results, name)):
        lines.append(f"{name}: missing (suite did not run)")
        failed += 1
print("==> summary")
for l in lines:
    print("   " + l)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
