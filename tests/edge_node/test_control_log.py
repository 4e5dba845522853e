"""The control log the serving processes of one node share (edge_node.control), on real
files: numbering under contention, order, a half-written command, acknowledgements."""

from __future__ import annotations

import threading

from edge_node.control import Command, ControlLog


def test_concurrent_appends_get_distinct_numbers_in_one_order(tmp_path):
    logs = [ControlLog(tmp_path, i, 4) for i in range(4)]
    taken: list[int] = []
    lock = threading.Lock()

    def append_many(log: ControlLog) -> None:
        for k in range(25):
            seq = log.append("load", f"m{log.index}-{k}").seq
            with lock:
                taken.append(seq)

    threads = [threading.Thread(target=append_many, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(1, 101))
    commands = logs[0].after(0)
    assert [c.seq for c in commands] == list(range(1, 101))
    # each process's own commands keep the order it appended them in
    for i in range(4):
        mine = [c.model for c in commands if c.model.startswith(f"m{i}-")]
        assert mine == [f"m{i}-{k}" for k in range(25)]
    assert logs[3].after(98) == commands[98:]


def test_a_command_still_being_written_ends_the_list_until_it_is_whole(tmp_path):
    log = ControlLog(tmp_path, 0, 2)
    log.append("unload", "a")
    (tmp_path / "cmd-00000002.json").write_text("")  # created, not yet filled
    log_b = ControlLog(tmp_path, 1, 2)
    assert log_b.after(0) == [Command(1, "unload", "a")]
    assert log.append("load", "b", force=True).seq == 3  # numbers go on past it
    assert [c.seq for c in log_b.after(0)] == [1]
    (tmp_path / "cmd-00000002.json").write_text(
        '{"seq": 2, "op": "load", "model": "c", "force": false}')
    assert log_b.after(0) == [Command(1, "unload", "a"), Command(2, "load", "c"),
                              Command(3, "load", "b", True)]


def test_acknowledgements_report_progress_refusals_and_late_siblings(tmp_path):
    logs = [ControlLog(tmp_path, i, 3) for i in range(3)]
    seq = logs[0].append("load", "m").seq
    assert logs[0].acknowledgement(1) == (0, {})  # nothing yet
    logs[1].acknowledge(seq, {seq: ""})
    logs[2].acknowledge(seq, {seq: "m:2: not a loadable TFLite model"})
    refused, late = logs[0].wait_for_siblings(seq, timeout=5)
    assert refused == {2: "m:2: not a loadable TFLite model"} and late == []
    later = logs[0].append("unload", "m").seq
    logs[1].acknowledge(later, {seq: "", later: ""})
    refused, late = logs[0].wait_for_siblings(later, timeout=0.1)
    assert refused == {} and late == [2]
