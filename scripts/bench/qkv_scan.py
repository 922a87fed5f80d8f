#!/usr/bin/env python3
"""Prints "<count> <sum of versions>" of the benchmark keys (prefix bench/) of the
quorum-kv node at the address given: versions count the writes each key has had, so
their sum counts the writes applied.

Usage: qkv_scan.py HOST:PORT
With QKV_CACERT (a CA file) it speaks https trusting that CA; with QKV_TOKEN it sends
that bearer token.
"""
import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

cacert, token = os.environ.get("QKV_CACERT"), os.environ.get("QKV_TOKEN")
scheme = "https" if cacert else "http"
context = ssl.create_default_context(cafile=cacert) if cacert else None
headers = {"Authorization": f"Bearer {token}"} if token else {}
count, total, after = 0, 0, None
while True:
    url = f"{scheme}://{sys.argv[1]}/v1/kv?prefix=bench/&limit=1000&keys_only=true"
    if after:
        url += "&after=" + urllib.parse.quote(after, safe="")
    request = urllib.request.Request(url, headers=headers)
    page = json.load(urllib.request.urlopen(request, context=context))
    count += len(page["items"])
    total += sum(item["version"] for item in page["items"])
    after = page["next"]
    if not after:
        break
print(count, total)
