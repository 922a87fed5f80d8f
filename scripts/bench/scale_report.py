#!/usr/bin/env python3
"""Writes the results of `scripts/bench.sh --scale` as OUT_DIR/scale.json and
OUT_DIR/scale.md, and prints the Markdown table.

Usage: scale_report.py OUT_DIR KEYS LOAD_S RSS_LEADER RSS_FOLLOWER RSS_CAUGHT
       RSS_RESTARTED DATA_DIR_MIB READY_S SERVING_S CATCH_UP_S DOWN_LAST PURGED SNAPSHOT
       PEAK_LEADER PEAK_INSTALLER
(RSS and the data directory in MiB, times in seconds, then three log indexes, then the
peak RSS of the leader while it built and sent snapshots and of the node that installed
one, in MiB.)
"""
import json
import sys


def main():
    (out, keys, load_s, rss_leader, rss_follower, rss_caught, rss_restarted, du,
     ready_s, serving_s, catch_s, down_last, purged, snap, peak_leader,
     peak_installer) = sys.argv[1:17]
    d = {"keys": int(keys), "value_bytes": 100, "load_seconds": float(load_s),
         "rss_mib": {"leader": int(rss_leader), "follower": int(rss_follower),
                     "after_snapshot_catch_up": int(rss_caught),
                     "after_restart": int(rss_restarted),
                     "peak_leader_building_and_sending_snapshots": int(peak_leader),
                     "peak_node_installing_snapshot": int(peak_installer)},
         "data_dir_mib": int(du),
         "restart_ready_seconds": float(ready_s),
         "restart_serving_seconds": float(serving_s),
         "snapshot_catch_up_seconds": float(catch_s),
         "down_node_last_index": int(down_last), "leader_purged_index": int(purged),
         "snapshot_index": int(snap)}
    with open(f"{out}/scale.json", "w") as f:
        json.dump(d, f, indent=2)
    md = f"""| {d['keys']:,} keys of 100 bytes | |
| --- | ---: |
| load (64 connections, sequential keys) | {d['load_seconds']} s |
| RSS leader / follower after loading | {d['rss_mib']['leader']} / {d['rss_mib']['follower']} MiB |
| data directory per node | {d['data_dir_mib']} MiB |
| restart until ready / serving reads | {d['restart_ready_seconds']} / {d['restart_serving_seconds']} s |
| RSS after restart | {d['rss_mib']['after_restart']} MiB |
| catch-up by snapshot (log purged past the node) | {d['snapshot_catch_up_seconds']} s |
| RSS after the snapshot catch-up | {d['rss_mib']['after_snapshot_catch_up']} MiB |
| peak RSS: leader building and sending snapshots / node installing one | {d['rss_mib']['peak_leader_building_and_sending_snapshots']} / {d['rss_mib']['peak_node_installing_snapshot']} MiB |
"""
    with open(f"{out}/scale.md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
