"""LevelsService and the XP -> Levels call, against real servers and DynamoDB Local."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc

from common.dynamodb.tables import LEVEL_TABLE_VERSION_COPIES
from rewards.v1 import levels_pb2, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, fill_progress_to_the_byte, rpc_error, unique

Factory = Callable[..., Cluster]


def grant(cluster: Cluster, user_id: str, amount: int, request_id: str = "") -> xp_pb2.AwardXpResponse:
    return cluster.xp.GrantXp(
        xp_pb2.GrantXpRequest(user_id=user_id, amount=amount, reason="test", request_id=request_id)
    )


def progress(cluster: Cluster, user_id: str) -> xp_pb2.UserProgress:
    return cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))


def rewards(items: object) -> list[tuple[str, int]]:
    return [(r.reward_id, r.quantity) for r in items]  # type: ignore[attr-defined]


def test_list_levels_in_level_order_and_delete(new_cluster: Factory) -> None:
    c = new_cluster()
    c.put_levels(list(reversed(STANDARD_LEVELS)))
    assert [l.level for l in c.levels.ListLevels(levels_pb2.ListLevelsRequest()).levels] == [1, 2, 3, 4, 5]
    assert c.levels.ListLevels(levels_pb2.ListLevelsRequest()).levels[3] == STANDARD_LEVELS[3]
    c.levels.DeleteLevel(levels_pb2.DeleteLevelRequest(level=4))
    assert [l.level for l in c.levels.ListLevels(levels_pb2.ListLevelsRequest()).levels] == [1, 2, 3, 5]
    error = rpc_error(lambda: c.levels.DeleteLevel(levels_pb2.DeleteLevelRequest(level=4)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "level 4" in error.details()


def test_award_reports_level_up_with_the_rewards_of_the_levels_passed(cluster: Cluster, user_id: str) -> None:
    small = grant(cluster, user_id, 50)
    assert (small.level, small.level_up.leveled_up, small.level_up.next_level_xp) == (1, False, 100)
    jump = grant(cluster, user_id, 600)  # 650 XP: from level 1 past 2 and 3 to 4
    assert jump.level == 4 and not jump.level_check_deferred
    assert (jump.level_up.leveled_up, jump.level_up.previous_level, jump.level_up.current_level) == (True, 1, 4)
    assert rewards(jump.level_up.rewards) == [("coins", 600), ("chest", 1)]  # totals per reward id
    assert (jump.level_up.total_xp, jump.level_up.next_level_xp) == (650, 1000)
    after = progress(cluster, user_id)
    assert (after.level, after.total_xp) == (4, 650)
    assert rewards(after.rewards) == [("coins", 100), ("coins", 200), ("chest", 1), ("coins", 300)]


def test_check_level_up_for_unknown_user_is_start_level(cluster: Cluster, user_id: str) -> None:
    result = cluster.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id))
    assert (result.leveled_up, result.previous_level, result.current_level, result.total_xp, result.next_level_xp) == (
        False,
        1,
        1,
        0,
        100,
    )


def test_levels_service_down_defers_the_check_and_the_next_check_catches_up(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    c.stop("levels")
    deferred = grant(c, user_id, 350, "while-down")
    assert deferred.level_check_deferred
    assert not deferred.HasField("level_up")
    assert (deferred.xp_awarded, deferred.total_xp, deferred.level) == (350, 350, 1)
    assert progress(c, user_id).total_xp == 350  # the XP stays recorded

    c.start("levels")
    # A game server retries until the check is no longer deferred; the retry is a
    # duplicate (nothing counted again) and its check catches up.
    deadline = time.monotonic() + 15
    retry = grant(c, user_id, 350, "while-down")
    while retry.level_check_deferred and time.monotonic() < deadline:
        time.sleep(0.1)
        retry = grant(c, user_id, 350, "while-down")
    assert (retry.duplicate, retry.level_check_deferred, retry.total_xp) == (True, False, 350)
    assert (retry.level_up.leveled_up, retry.level_up.previous_level, retry.level_up.current_level) == (True, 1, 3)
    assert rewards(retry.level_up.rewards) == [("coins", 300)]  # levels 2 and 3, one line per reward id
    after = progress(c, user_id)
    assert (after.level, after.total_xp) == (3, 350)
    assert rewards(after.rewards) == [("coins", 100), ("coins", 200)]


def test_a_hung_levels_service_hits_the_deadline(new_cluster: Factory, user_id: str) -> None:
    # A socket that accepts connections and never answers: the XP service must give up at its deadline.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        c = new_cluster(level_check_timeout_s=0.5)
        c.put_levels(STANDARD_LEVELS)
        c.ports["levels"] = hung.getsockname()[1]
        c.stop("xp")
        c.start("xp")
        stub = c.xp.__class__(c.channel("xp"))
        response = stub.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=120, reason="t", request_id="slow"))
    assert response.level_check_deferred
    assert (response.total_xp, response.level) == (120, 1)


def test_ten_racing_checks_after_a_multi_level_jump_grant_rewards_once(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    c.stop("levels")
    assert grant(c, user_id, 1200, "jump").level_check_deferred  # level 1 -> 5 is now due
    c.start("levels")
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(lambda _: c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id)), range(10))
        )
    winners = [r for r in results if r.leveled_up]
    assert len(winners) == 1
    assert (winners[0].previous_level, winners[0].current_level) == (1, 5)
    assert rewards(winners[0].rewards) == [("coins", 600), ("chest", 1), ("title-veteran", 1)]
    assert all(r.current_level == 5 and list(r.rewards) == [] for r in results if not r.leveled_up)
    after = progress(c, user_id)
    assert after.level == 5
    assert rewards(after.rewards) == [
        ("coins", 100),
        ("coins", 200),
        ("chest", 1),
        ("coins", 300),
        ("title-veteran", 1),
    ]


def test_concurrent_awards_crossing_levels_grant_each_reward_once(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda i: grant(c, user_id, 60, f"g-{i}"), range(20)))  # 1200 XP in all
    reported: Counter[str] = Counter()
    for resp in responses:
        for r in resp.level_up.rewards:
            reported[r.reward_id] += r.quantity
    assert reported == Counter({"coins": 600, "chest": 1, "title-veteran": 1})  # each level's, once
    expected = [("coins", 100), ("coins", 200), ("chest", 1), ("coins", 300), ("title-veteran", 1)]
    after = progress(c, user_id)
    assert (after.total_xp, after.level) == (1200, 5)
    assert sorted(rewards(after.rewards)) == sorted(expected)


def test_levels_never_go_down_when_thresholds_rise(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    assert grant(c, user_id, 300).level == 3
    c.put_levels([levels_pb2.Level(level=2, xp_required=5000), levels_pb2.Level(level=3, xp_required=6000)])
    result = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id))
    assert (result.leveled_up, result.current_level) == (False, 3)
    assert progress(c, user_id).level == 3


def test_with_no_levels_defined_everyone_is_level_zero(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    response = grant(c, user_id, 500)
    assert (response.level, response.level_up.leveled_up, response.level_up.next_level_xp) == (0, False, 0)
    c.put_levels(
        [levels_pb2.Level(level=1, xp_required=100, rewards=[levels_pb2.Reward(reward_id=unique("r"), quantity=1)])]
    )
    result = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id))
    assert (result.leveled_up, result.previous_level, result.current_level, len(result.rewards)) == (True, 0, 1, 1)


def test_a_check_that_answered_too_late_is_reported_to_the_retry(new_cluster: Factory, user_id: str) -> None:
    # XP gives up on CheckLevelUp at once, while Levels may still raise the level:
    # the retry of the award must report that level-up, and keep reporting it.
    c = new_cluster(level_check_timeout_s=0.0001)
    c.put_levels(STANDARD_LEVELS)
    first = grant(c, user_id, 400, "late-check")
    assert first.level_check_deferred
    time.sleep(0.5)  # let a late check land, if it is going to
    c.settings = replace(c.settings, level_check_timeout_s=5.0)
    c.stop("xp")
    c.start("xp")
    xp = c.xp.__class__(c.channel("xp"))
    for _ in range(2):
        retry = xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=400, reason="test", request_id="late-check"))
        assert (retry.duplicate, retry.level_check_deferred, retry.level) == (True, False, 3)
        assert (retry.level_up.leveled_up, retry.level_up.previous_level, retry.level_up.current_level) == (True, 1, 3)
        assert rewards(retry.level_up.rewards) == [("coins", 300)]
    other = xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=1, reason="test", request_id="next"))
    assert (other.level_up.leveled_up, list(other.level_up.rewards)) == (False, [])
    assert rewards(progress(c, user_id).rewards) == [("coins", 100), ("coins", 200)]


def test_the_start_level_is_kept_when_the_first_levels_move(new_cluster: Factory, user_id: str) -> None:
    # XP's copy of the level table follows a change within the cache time: 0 here, for an exact newcomer's level.
    c = new_cluster(level_table_cache_s=0.0)
    c.put_levels(STANDARD_LEVELS)
    assert grant(c, user_id, 50).level == 1
    c.put_levels([levels_pb2.Level(level=1, xp_required=60)])
    assert progress(c, user_id).level == 1
    assert c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id)).current_level == 1
    newcomer = user_id + "-new"
    assert progress(c, newcomer).level == 0


def test_a_jump_across_many_levels_with_many_rewards_grants_each_once(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster(level_check_timeout_s=60.0)  # the emulator takes a second or two for this
    ids = [f"{k:02d}-" + "x" * 125 for k in range(50)]
    levels = [
        levels_pb2.Level(
            level=n, xp_required=(n - 1) * 10, rewards=[levels_pb2.Reward(reward_id=i, quantity=n) for i in ids]
        )
        for n in range(1, 151)
    ]
    c.put_levels(levels)
    jump = grant(c, user_id, 10_000, "jump")
    assert (jump.level, jump.level_up.previous_level, jump.level_up.current_level) == (150, 1, 150)
    # 149 levels x 50 rewards, granted in two writes, reported one line per reward id.
    assert rewards(jump.level_up.rewards) == [(i, sum(range(2, 151))) for i in ids]
    expected = [(r.reward_id, r.quantity) for level in levels[1:] for r in level.rewards]
    shown = progress(c, user_id)  # the latest 10 levels' rewards; the rest page
    assert (rewards(shown.rewards), shown.more_rewards) == (expected[-500:], True)
    assert reached_rewards(c, user_id, page_size=7) == expected
    again = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id))
    assert (again.leveled_up, again.current_level) == (False, 150)


def test_a_level_up_belongs_to_the_request_that_made_it(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    c.stop("levels")
    assert grant(c, user_id, 150, "A").level_check_deferred  # level 2 due
    c.start("levels")
    # A's check lands late, after XP gave up on it (XP names the check after A's ledger entry).
    late = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="req#A"))
    assert rewards(late.rewards) == [("coins", 100)]
    c.stop("levels")
    assert grant(c, user_id, 200, "B").level_check_deferred  # level 3 due
    c.start("levels")

    def retry(request_id: str, amount: int) -> xp_pb2.AwardXpResponse:
        deadline = time.monotonic() + 15
        response = grant(c, user_id, amount, request_id)
        while response.level_check_deferred and time.monotonic() < deadline:
            time.sleep(0.1)
            response = grant(c, user_id, amount, request_id)
        return response

    for _ in range(2):  # every answer for one request is the same
        a = retry("A", 150)
        assert (a.duplicate, a.level_up.leveled_up, a.level_up.previous_level) == (True, True, 1)
        assert rewards(a.level_up.rewards) == [("coins", 100)]
        b = retry("B", 200)
        assert (b.duplicate, b.level_up.leveled_up, b.level_up.previous_level, b.level_up.current_level) == (
            True,
            True,
            2,
            3,
        )
        assert rewards(b.level_up.rewards) == [("coins", 200)]
    assert rewards(progress(c, user_id).rewards) == [("coins", 100), ("coins", 200)]


def test_concurrent_copies_of_a_request_all_report_its_level_up(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: grant(c, user_id, 350, "one-request"), range(16)))
    assert sum(not r.duplicate for r in responses) == 1
    for r in responses:  # copies of one request get one answer
        assert (r.level_up.leveled_up, r.level_up.previous_level, r.level_up.current_level) == (True, 1, 3)
        assert rewards(r.level_up.rewards) == [("coins", 300)]  # one line per reward id
    assert rewards(progress(c, user_id).rewards) == [("coins", 100), ("coins", 200)]


def test_a_thousand_level_jump_gives_one_answer_whatever_deadlines_cut_it(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    # 1,000 levels written straight into the table (set-up, not the subject).
    write_level_table(c, {n: [(f"gem-{n}", 1)] for n in range(1, 1001)})
    c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=1, reason="start", request_id="start"), timeout=30)
    c.dynamodb.update_item(  # the XP of the jump, without a check: the check below is the subject
        TableName=c.table("user_progress"),
        Key={"user_id": {"S": user_id}},
        UpdateExpression="ADD total_xp :xp",
        ExpressionAttributeValues={":xp": {"N": "20000"}},
    )
    check = levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="the-jump")
    # The first call's deadline falls while the level-up is in its steps (11 transactions).
    cut = rpc_error(lambda: c.levels.CheckLevelUp(check, timeout=0.15))
    assert cut.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answers = [c.levels.CheckLevelUp(check, timeout=60) for _ in range(2)]
    assert answers[0] == answers[1]
    assert (answers[0].leveled_up, answers[0].previous_level, answers[0].current_level) == (True, 1, 1000)
    assert rewards(answers[0].rewards) == [(f"gem-{n}", 1) for n in range(2, 1001)]
    # Another request finds nothing more due, and each level was granted once, all to the jump.
    later = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="later"), timeout=60)
    assert (later.leveled_up, later.current_level) == (False, 1000)
    items = c.dynamodb.query(
        TableName=c.table("level_rewards"),
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": {"S": user_id}},
        ConsistentRead=True,
    )["Items"]
    assert sorted(int(i["level"]["N"]) for i in items) == list(range(2, 1001))
    assert {i["check_id"]["S"] for i in items} == {"the-jump"}


def reached_rewards(c: Cluster, user_id: str, page_size: int) -> list[tuple[str, int]]:
    """Every reward of every level the user passed, through ListLevelsReached's pages."""
    found: list[tuple[str, int]] = []
    token = ""
    levels: list[int] = []
    while True:
        page = c.levels.ListLevelsReached(
            levels_pb2.ListLevelsReachedRequest(user_id=user_id, page_size=page_size, page_token=token)
        )
        assert len(page.levels) <= page_size
        levels += [l.level for l in page.levels]
        found += [(r.reward_id, r.quantity) for l in page.levels for r in l.rewards]
        token = page.next_page_token
        if not token:
            assert levels == sorted(levels) and len(set(levels)) == len(levels)
            return found


def test_answers_stay_under_4_mb_at_a_thousand_levels_of_fifty_rewards(new_cluster: Factory, user_id: str) -> None:
    # The scan of this 26 MB table can outlast a request's 2 s read timeout on a loaded DynamoDB Local (the
    # level check is then deferred): the subject is the answers' size, so the servers' client waits.
    c = new_cluster(level_check_timeout_s=60.0, dynamodb_read_timeout_s=30.0)
    # 1,000 levels x 50 rewards of 128-character ids, 1,000 ids in all (the table's limit), written
    # straight into the table (set-up, not the subject).
    ids = [f"{k:04d}-" + "\U0001f48e" * 123 for k in range(1000)]  # 4 bytes a character: about 500 bytes an id
    write_level_table(c, {n: [(ids[(n * 50 + k) % 1000], 1) for k in range(50)] for n in range(1, 1001)})
    limit = 4 * 1024 * 1024
    jump = grant(c, user_id, 20_000, "jump")
    assert (jump.level, jump.level_up.current_level) == (1000, 1000)
    assert len(jump.level_up.rewards) == 1000 and jump.ByteSize() < limit  # one line per reward id
    assert sum(r.quantity for r in jump.level_up.rewards) == 999 * 50
    assert c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="req#jump")) == (
        jump.level_up
    )
    shown = progress(c, user_id)
    assert (len(shown.rewards), shown.more_rewards) == (500, True) and shown.ByteSize() < limit
    page = c.levels.ListLevelsReached(levels_pb2.ListLevelsReachedRequest(user_id=user_id, page_size=100))
    # DynamoDB ends a Query page at 1 MB: 40-odd of these 26 KB levels, and a token for the rest.
    assert 0 < len(page.levels) <= 100 and page.ByteSize() < limit and page.next_page_token
    listed = c.levels.ListLevels(levels_pb2.ListLevelsRequest(page_size=100))
    assert len(listed.levels) == 100 and listed.ByteSize() < limit and listed.next_page_token


def write_level_table(c: Cluster, rewards_by_level: dict[int, list[tuple[str, int]]]) -> None:
    """Levels n (xp_required (n - 1) x 10) with their rewards, written straight into the table in
    batches, with the version moved as a level write moves it; then long enough for the services to
    read the new table."""
    table = c.table("levels")
    numbers = sorted(rewards_by_level)
    for start in range(0, len(numbers), 25):
        c.dynamodb.batch_write_item(
            RequestItems={
                table: [
                    {
                        "PutRequest": {
                            "Item": {
                                "level": {"N": str(n)},
                                "xp_required": {"N": str((n - 1) * 10)},
                                "rewards": {
                                    "L": [
                                        {"M": {"reward_id": {"S": reward_id}, "quantity": {"N": str(quantity)}}}
                                        for reward_id, quantity in rewards_by_level[n]
                                    ]
                                },
                            }
                        }
                    }
                    for n in numbers[start : start + 25]
                ]
            }
        )
    for copy in range(LEVEL_TABLE_VERSION_COPIES):
        c.dynamodb.update_item(
            TableName=table,
            Key={"level": {"N": str(-copy)}},
            UpdateExpression="ADD version :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    time.sleep(c.settings.level_table_cache_s + 0.1)


def test_a_level_up_of_a_progress_item_an_earlier_version_filled_to_the_byte_is_granted(
    new_cluster: Factory, user_id: str
) -> None:
    c = new_cluster()
    c.put_levels(STANDARD_LEVELS)
    fill_progress_to_the_byte(c, user_id, total_xp={"N": "350"})  # level 3 due, and no room to write it
    checked = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="full"))
    assert (checked.leveled_up, checked.current_level, rewards(checked.rewards)) == (True, 3, [("coins", 300)])
    item = c.dynamodb.get_item(
        TableName=c.table("user_progress"), Key={"user_id": {"S": user_id}}, ConsistentRead=True
    )["Item"]
    assert "unlocked_achievements" not in item and item["level"] == {"N": "3"}
