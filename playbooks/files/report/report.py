"""A nightly report for flex: what this node looks like, appended to reports/ in the allocation dir.

Python 3.8+ stdlib only; exits 0 so that each night's run completes.
"""

import datetime
import os
import shutil
import socket


def main():
    now = datetime.datetime.now(datetime.timezone.utc)
    total, used, free = shutil.disk_usage(".")
    load = os.getloadavg()
    lines = [
        "report for %s (%s) at %s" % (os.environ.get("FLEX_NODE", "?"), socket.gethostname(), now.isoformat()),
        "load      %.2f %.2f %.2f" % load,
        "disk      %.1f GiB free of %.1f GiB" % (free / 2**30, total / 2**30),
        "cpus      %d" % (os.cpu_count() or 0),
    ]
    os.makedirs("reports", exist_ok=True)
    with open(os.path.join("reports", now.strftime("%Y-%m-%d") + ".txt"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
