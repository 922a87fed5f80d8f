#!/usr/bin/env python3
"""Prints "<count> <sum of versions>" of the benchmark keys (prefix bench/) of the
quorum-kv node at the address given: versions count the writes each key has had, so
their sum counts the writes applied.

Usage: qkv_scan.py HOST:PORT
"""
import json
import sys
import urllib.parse
import urllib.request

count, total, after = 0, 0, None
while True:
    url = f"http://{sys.argv[1]}/v1/kv?prefix=bench/&limit=1000&keys_only=true"
    if after:
        url += "&after=" + urllib.parse.quote(after, safe="")
    page = json.load(urllib.request.urlopen(url))
    count += len(page["items"])
    total += sum(item["version"] for item in page["items"])
    after = page["next"]
    if not after:
        break
print(count, total)
