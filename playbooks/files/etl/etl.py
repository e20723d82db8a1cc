"""A batch ETL step for flex: make an input file, aggregate it, write the result, exit 0.

Extract: writes ROWS synthetic sales rows to input.csv (deterministic). Transform: totals per region.
Load: writes report.json next to it. Python 3.8+ stdlib only.
"""

import csv
import json
import os
import random
import sys

REGIONS = ["emea", "amer", "apac"]


def generate(path, rows):
    rng = random.Random(42)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order", "region", "amount"])
        for order in range(rows):
            writer.writerow([order, rng.choice(REGIONS), "%.2f" % rng.uniform(1, 500)])


def aggregate(path):
    totals = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            region = totals.setdefault(row["region"], {"orders": 0, "amount": 0.0})
            region["orders"] += 1
            region["amount"] = round(region["amount"] + float(row["amount"]), 2)
    return totals


def main():
    rows = int(os.environ.get("ROWS", "10000"))
    generate("input.csv", rows)
    totals = aggregate("input.csv")
    with open("report.json", "w") as handle:
        json.dump(totals, handle, indent=2, sort_keys=True)
    for region, total in sorted(totals.items()):
        print("%-5s %6d orders %12.2f" % (region, total["orders"], total["amount"]))
    if sum(t["orders"] for t in totals.values()) != rows:
        sys.exit("row count mismatch")


if __name__ == "__main__":
    main()
