"""Bounded chaos run on both runtimes (tools/chaos.py): connection cuts, black holes
longer than the keepalive, broker kill -9 + restart with persistence, kill -9 of the
publisher and of the subscriber (flash rings on).  Counted at the subscriber:
QoS 1 lost = 0; QoS 2 lost = 0 and duplicated = 0; memory bounded."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import chaos  # noqa: E402


def test_chaos_no_loss_no_duplicate(rt, tmp_path):
    r = chaos.Chaos(rt.name, seconds=14, rate=120, seed=7, workdir=str(tmp_path)).run()
    print(chaos.summary(r))
    assert all(n >= 1 for n in r["faults"].values()), r["faults"]
    assert r["accepted_qos1"] > 500 and r["accepted_qos2"] > 500
    assert r["lost_qos1"] == 0, r
    assert r["lost_qos2"] == 0, r
    assert r["duplicated_qos2"] == 0, r
    assert r["crashes"] == [], r
    # the unix port runs in a fixed 128K heap (a MemoryError would have killed it);
    # CPython's resident size stays flat
    limit = 60000 if rt.name == "cpython" else 16000
    assert r["publisher_max_rss_kb"] < limit and r["subscriber_max_rss_kb"] < limit, r
