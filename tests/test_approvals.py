"""Approvals through the CLI: distinct people, voided by a change, blocked by a rejection,
a scheduled start waiting for them; each verdict in the audit trail."""

from __future__ import annotations

import pytest
from conftest import db_dump, query, write

CAMPAIGN = """\
    name: fw
    description: {description}
    devices: {{names: [sensor-0001, sensor-0002]}}
    configurations: {{mode: eco}}
    approval: {{required: 2}}
    """


def manifest(tmp_path, description="needs two", extra=""):
    return write(tmp_path, "fw.yaml", CAMPAIGN.format(description=description) + extra)


def events(db_url, action):
    return query(db_url, "SELECT actor, details FROM event WHERE action = :a ORDER BY id", {"a": action})


def test_two_distinct_people_then_launch_and_apply_voids(cli, fleet, tmp_path, db_url):
    cli("create", "-f", manifest(tmp_path))
    before = db_dump(db_url)
    refused = cli("launch", "fw", code=1)
    assert "Error: campaign 'fw' cannot start: needs 2 more approvals" in refused.stderr
    assert db_dump(db_url) == before

    out = cli("--as", "alice", "approve", "fw", "--comment", "checked the build").stdout
    assert out.strip() == "campaign fw: approved by alice; 1 of 2 approval(s), needs 1 more approval"
    # The same person again, now through the environment: still one approval.
    again = cli.json("approve", "fw", env={"CAMPAIGNCTL_USER": "alice"})
    assert (again["actor"], again["approved"], again["missing"]) == ("alice", 1, 1)
    before = db_dump(db_url)
    refused = cli("launch", "fw", code=1)
    assert "needs 1 more approval (approved by alice: 1 of 2)" in refused.stderr
    assert db_dump(db_url) == before

    cli("--as", "bob", "approve", "fw", env={"CAMPAIGNCTL_USER": "alice"})  # --as wins
    shown = cli.json("show", "fw")["approval"]
    assert (shown["required"], shown["approved"], shown["missing"]) == (2, 2, 0)
    assert [(v["actor"], v["verdict"], v["comment"]) for v in shown["verdicts"]] == [
        ("alice", "approve", None),  # her second approval replaced the first (and its comment)
        ("bob", "approve", None),
    ]
    status = cli.json("status", "fw")
    assert status["approval"]["approved"] == 2 and status["reason"] is None
    table = cli("status", "fw").stdout
    assert "approvals: 2 of 2 approval(s), approved" in table and "bob" in table

    # An apply that changes nothing keeps them; a change voids them all.
    assert cli("apply", "-f", manifest(tmp_path)).stdout.strip() == "campaign fw: unchanged"
    assert cli.json("show", "fw")["approval"]["approved"] == 2
    assert "updated (description)" in cli("apply", "-f", manifest(tmp_path, "changed")).stdout
    voided = cli.json("show", "fw")["approval"]
    assert (voided["approved"], voided["verdicts"]) == (0, [])
    assert "needs 2 more approvals" in cli.json("status", "fw")["reason"]
    assert [d for _a, d in events(db_url, "approvals.voided")] == ['{"count":2}']

    cli("--as", "carol", "approve", "fw")
    cli("--as", "dave", "approve", "fw")
    cli("launch", "fw")
    assert cli.json("status", "fw")["status"] in ("running", "completed")
    late = cli("--as", "erin", "approve", "fw", code=1)
    assert "verdicts are given before a campaign starts" in late.stderr
    assert [a for a, _d in events(db_url, "campaign.approved")] == ["alice", "alice", "bob", "carol", "dave"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_reject_blocks_and_its_author_cannot_approve_it(cli, fleet, tmp_path, db_url):
    cli("create", "-f", manifest(tmp_path))
    cli("--as", "alice", "approve", "fw")
    cli("--as", "bob", "reject", "fw", "--comment", "wrong build\nfor lyon")
    cli("--as", "carol", "approve", "fw")
    before = db_dump(db_url)
    refused = cli("launch", "fw", code=1)
    assert "rejected by bob (wrong build\\nfor lyon)" in refused.stderr
    own = cli("--as", "bob", "approve", "fw", code=1)
    assert "bob rejected campaign 'fw' at" in own.stderr and "voids every verdict" in own.stderr
    assert cli("--as", "bob", "reject", "fw", "--comment", "  ", code=1).stderr.strip() == (
        "Error: --comment: a rejection needs a reason"
    )
    assert "Missing option '--comment'" in cli("reject", "fw", code=2).stderr
    assert db_dump(db_url) == before
    status = cli.json("status", "fw")
    assert status["reason"] == "cannot start until approved: rejected by bob (wrong build\nfor lyon)"
    assert status["approval"]["rejected"] == ["bob"]
    assert "wrong build\\nfor lyon" in cli("show", "fw").stdout  # typed text shown escaped
    [(actor, details)] = events(db_url, "campaign.rejected")
    assert actor == "bob" and '"comment":"wrong build\\nfor lyon"' in details
    # A change voids the rejection too.
    cli("apply", "-f", manifest(tmp_path, "rebuilt"))
    cli("--as", "bob", "approve", "fw")
    cli("--as", "alice", "approve", "fw")
    cli("launch", "fw")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_due_start_waits_for_approvals_then_starts(cli, fleet, tmp_path, db_url):
    cli("create", "-f", manifest(tmp_path, extra="start_at: 2999-01-01T00:00:00Z\n"))
    err = cli("launch", "fw").stderr
    assert "scheduled for 2999-01-01" in err and "needs 2 more approvals" in err
    cli("--as", "alice", "approve", "fw")
    query(db_url, "UPDATE campaign SET start_at = '2000-01-01T00:00:00Z'")  # due now
    cli("tick")
    status = cli.json("status", "fw")
    assert status["status"] == "scheduled" and status["job"] is None
    assert status["reason"] == "cannot start until approved: needs 1 more approval (approved by alice: 1 of 2)"
    assert "needs 1 more approval" in cli("status", "fw").stdout
    cli("--as", "bob", "approve", "fw")
    cli("tick")
    status = cli.json("status", "fw")
    assert status["status"] in ("running", "completed") and status["job"] is not None and status["reason"] is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_approval_input_is_refused_and_changes_nothing(cli, fleet, tmp_path, db_url):
    cli("create", "-f", manifest(tmp_path))
    zero = write(tmp_path, "zero.yaml", CAMPAIGN.format(description="x").replace("required: 2", "required: 0"))
    before = db_dump(db_url)
    error = cli("apply", "-f", zero, code=1).stderr
    assert "zero.yaml:5: approval.required" in error and "greater than or equal to 1" in error
    assert "no campaign named 'fww'; did you mean 'fw'?" in cli("approve", "fww", code=1).stderr
    plain = write(tmp_path, "plain.yaml", "name: plain\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\n")
    cli("create", "-f", plain)
    before = db_dump(db_url)
    assert "asks for no approval" in cli("approve", "plain", code=1).stderr
    assert "identity" in cli("--as", " ", "approve", "fw", code=1).stderr
    assert "at most 1000 characters" in cli("approve", "fw", "--comment", "x" * 1001, code=1).stderr
    assert db_dump(db_url) == before
