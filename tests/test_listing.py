"""core.listing: the filter allow-list, sort parsing, wildcard search, pagination."""
from __future__ import annotations

import fnmatch
import random
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from core import journal, listing, logs, queue, registry, stats
from core.db import Database
from core.errors import BadArgument, DatabaseUnavailable
from core.listing import (JOB_FIELDS, MAX_PER_PAGE, MAX_WILDCARDS, OPERATORS, QUERY_TIMEOUT_MS,
                          check_filter, check_sort, check_text, combine, paginate, search_filter,
                          time_range)
from core.states import FINAL, LIVE

BASE = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
QUAL_NAMES = ["jobs.example.DummyJob", "jobs.example.SleepJob", "jobs.report.Monthly",
              "tests.jobs.a.b", "tests.jobs.axb"]
STATES = ["pending", "running", "failed"]
FORBIDDEN = ["$where", "$function", "$expr", "$regex", "$text", "$accumulator", "$lookup"]


def make_docs() -> list[dict[str, Any]]:
    """30 job-like documents; ``n`` is their insertion order (not a filterable field)."""
    docs = []
    for n in range(30):
        state = STATES[n % 3]
        doc: dict[str, Any] = {
            "_id": ObjectId(), "n": n, "qual_name": QUAL_NAMES[n % 5], "args": {"sleep": n % 4},
            "state": state, "priority": n % 5, "attempts": 3, "version": 1,
            "enqueued": {"at": BASE + timedelta(minutes=n), "username": "alice" if n % 2 else "bob"},
            "tags": ["even"] if n % 2 == 0 else [],
        }
        if state == "running":
            doc["locked"] = {"worker": f"w{n % 2}", "at": BASE + timedelta(minutes=n)}
        if state == "failed":
            doc["last_error"] = {"exception": "ValueError", "message": "boom"}
        docs.append(doc)
    return docs


@pytest.fixture
async def docs(db) -> list[dict[str, Any]]:
    documents = make_docs()
    await db.queue.insert_many([dict(doc) for doc in documents])
    return documents


async def matching(db, query: Any) -> list[int]:
    """The ``n`` of every queue document matching the checked ``query``, in order."""
    found = await db.queue.find(check_filter(query), {"n": 1}).to_list()
    return sorted(doc["n"] for doc in found)


def expected(docs: list[dict[str, Any]], predicate) -> list[int]:
    return [doc["n"] for doc in docs if predicate(doc)]


# ---------------------------------------------------------------- the allow-list

@pytest.mark.parametrize("operator", FORBIDDEN)
def test_forbidden_operator_at_top_level_is_rejected_by_name(operator):
    with pytest.raises(BadArgument, match=f"operator '\\{operator}' is not allowed"):
        check_filter({operator: "function() { return true }"})


@pytest.mark.parametrize("operator", FORBIDDEN)
def test_forbidden_operator_inside_a_field_is_rejected_by_name(operator):
    with pytest.raises(BadArgument, match=f"'\\{operator}'"):
        check_filter({"qual_name": {operator: "x"}})


@pytest.mark.parametrize("operator", FORBIDDEN)
def test_forbidden_operator_mixed_with_allowed_ones_is_rejected(operator):
    with pytest.raises(BadArgument, match=f"'\\{operator}'"):
        check_filter({"priority": {"$gt": 1, operator: "x"}})


def test_error_lists_the_allowed_operators():
    with pytest.raises(BadArgument) as info:
        check_filter({"$where": "1"})
    assert "allowed: " + ", ".join(sorted(OPERATORS)) in str(info.value)


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(BadArgument, match="unknown field 'foo'; allowed: see the job document"):
        check_filter({"foo": 1})


def test_unknown_field_message_lists_a_short_allow_list():
    with pytest.raises(BadArgument, match="unknown field 'x'; allowed: name, tags$"):
        check_filter({"x": 1}, fields={"name", "tags"})


@pytest.mark.parametrize("name", ["last_error.traceback", "result", "locked.worker.x", "n",
                                  "enqueued", "argsx", "args_x", "tags.0"])
def test_fields_outside_the_job_document_list_are_unknown(name):
    with pytest.raises(BadArgument, match="unknown field"):
        check_filter({name: 1})


@pytest.mark.parametrize("name", ["args.sleep", "args.a.b.c", "enqueued.at", "prog.value",
                                  "last_error.exception", "locked.heartbeat", "version"])
def test_known_fields_and_any_args_path_are_allowed(name):
    assert check_filter({name: 1}) == {name: 1}


@pytest.mark.parametrize("name", ["args.$where", "state$", ".state", "state.", "args..x", "",
                                  "args.a\x00b"])
def test_malformed_field_names_are_rejected(name):
    with pytest.raises(BadArgument):
        check_filter({name: 1})


@pytest.mark.parametrize("query", [
    {"$and": [{"state": "pending"}, {"$where": "sleep(100)"}]},
    {"$or": [{"state": "pending"}, {"$and": [{"$where": "sleep(100)"}]}]},
    {"$or": [{"priority": {"$where": "x"}}]},
    {"args": {"$where": "sleep(100)"}},
    {"args": {"sleep": 3, "$where": "x"}},
    {"args": {"sleep": {"$where": "x"}}},
    {"args": {"$eq": {"nested": {"$where": "x"}}}},
    {"args": {"$in": [{"$where": "x"}]}},
    {"args": [{"$where": "x"}]},
])
def test_nested_where_is_rejected_wherever_it_hides(query):
    with pytest.raises(BadArgument, match=r"'\$where'"):
        check_filter(query)


def test_plain_document_value_without_dollar_keys_is_an_exact_match():
    assert check_filter({"args": {"sleep": 3, "opts": {"a": [1, 2]}}}) == \
        {"args": {"sleep": 3, "opts": {"a": [1, 2]}}}


@pytest.mark.parametrize("query", [
    {"$and": []}, {"$or": {}}, {"$and": {"state": "pending"}}, {"$or": ["state"]},
    {"$and": [{"state": "pending"}, 3]},
])
def test_and_or_must_be_non_empty_lists_of_objects(query):
    operator = next(iter(query))
    with pytest.raises(BadArgument, match=f"'\\{operator}' must be a non-empty list of objects"):
        check_filter(query)


@pytest.mark.parametrize("operator", ["$in", "$nin"])
def test_in_and_nin_must_be_lists(operator):
    with pytest.raises(BadArgument, match=f"'\\{operator}' for 'state' must be a list"):
        check_filter({"state": {operator: "pending"}})


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_exists_must_be_a_bool(value):
    with pytest.raises(BadArgument, match="'\\$exists' for 'locked.worker'"):
        check_filter({"locked.worker": {"$exists": value}})


@pytest.mark.parametrize("query", [[{"state": "pending"}], "state", None, 3])
def test_top_level_filter_must_be_an_object(query):
    with pytest.raises(BadArgument, match="expected a JSON object"):
        check_filter(query)


def test_comparison_operator_at_top_level_is_rejected():
    with pytest.raises(BadArgument, match="'\\$eq' must be applied to a field"):
        check_filter({"$eq": 1})


def test_logical_operator_inside_a_field_is_rejected():
    with pytest.raises(BadArgument, match="'\\$or' is not allowed inside field 'state'"):
        check_filter({"state": {"$or": [{"$eq": "pending"}]}})


def test_nesting_deeper_than_eight_levels_is_rejected():
    def nested(levels: int) -> dict[str, Any]:
        query: dict[str, Any] = {"state": "pending"}
        for _ in range(levels):
            query = {"$or": [query]}
        return query

    check_filter(nested(6))
    with pytest.raises(BadArgument, match="nested deeper than 8"):
        check_filter(nested(8))
    with pytest.raises(BadArgument, match="nested deeper than 8"):
        check_filter({"args": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}})
    with pytest.raises(BadArgument, match="nested deeper than 8"):
        check_filter({"args": [[[[[[[[[1]]]]]]]]]})


def test_integers_beyond_64_bits_are_rejected_not_a_crash():
    with pytest.raises(BadArgument, match="out of range"):
        check_filter({"priority": {"$gt": 10 ** 30}})


def test_values_of_unsupported_types_are_rejected():
    import re
    with pytest.raises(BadArgument, match="unsupported value"):
        check_filter({"qual_name": re.compile(".*")})


def test_check_filter_returns_a_copy():
    query = {"state": {"$in": ["pending"]}, "args": {"a": [1]}}
    checked = check_filter(query)
    checked["state"]["$in"].append("running")
    checked["args"]["a"].append(2)
    assert query == {"state": {"$in": ["pending"]}, "args": {"a": [1]}}


def test_hex_ids_become_object_ids_for_id_fields():
    oid = ObjectId()
    checked = check_filter({"_id": str(oid), "enqueued.parent_id": {"$in": [str(oid)]},
                            "enqueued.child_id": {"$ne": str(oid)}})
    assert checked == {"_id": oid, "enqueued.parent_id": {"$in": [oid]},
                       "enqueued.child_id": {"$ne": oid}}


def test_hex_strings_on_other_fields_stay_strings():
    text = str(ObjectId())
    assert check_filter({"qual_name": text}) == {"qual_name": text}


def test_a_string_that_is_no_id_on_an_id_field_is_rejected():
    with pytest.raises(BadArgument, match="'_id' expects a 24-character hex id"):
        check_filter({"_id": "nope"})


def test_iso_strings_become_aware_datetimes_for_date_fields():
    checked = check_filter({"enqueued.at": {"$gte": "2026-11-24T10:00:00Z",
                                            "$lt": "2026-11-24T11:00:00+01:00"},
                            "started_at": {"$in": ["2026-11-24T10:00:00"]}})
    assert checked["enqueued.at"]["$gte"] == BASE
    assert checked["enqueued.at"]["$lt"] == BASE
    assert checked["started_at"]["$in"] == [BASE]
    assert checked["started_at"]["$in"][0].tzinfo is not None


def test_a_bad_time_on_a_date_field_is_rejected():
    with pytest.raises(BadArgument, match="'finished_at' expects an ISO-8601 time"):
        check_filter({"finished_at": {"$gt": "yesterday"}})


def test_null_on_date_and_id_fields_is_kept():
    assert check_filter({"killed_at": None, "enqueued.parent_id": {"$eq": None}}) == \
        {"killed_at": None, "enqueued.parent_id": {"$eq": None}}


def test_times_in_filters_come_back_in_utc():
    five_hours_behind = timezone(timedelta(hours=-5))
    checked = check_filter({"finished_at": "2026-11-24T11:00:00+01:00",
                            "started_at": {"$lt": datetime(2026, 11, 24, 5, tzinfo=five_hours_behind)}})
    for moment in (checked["finished_at"], checked["started_at"]["$lt"]):
        assert (moment, moment.utcoffset()) == (BASE, timedelta(0))


@pytest.mark.parametrize("query", [
    {"finished_at": {"$gte": "0001-01-01T00:00:00+01:00"}},
    {"finished_at": "9999-12-31T23:30:00-01:00"},
    {"finished_at": {"$in": ["2026-11-24T10:00:00Z", "0001-01-01T00:00:00+01:00"]}},
    {"finished_at": {"$lt": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}},
    {"args": {"at": datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1)))}},
])
def test_a_time_that_leaves_the_range_once_in_utc_is_rejected(query):
    # The BSON encoder converts to UTC and would raise OverflowError: a 500.
    with pytest.raises(BadArgument, match=r"filter: the time for '(finished_at|args)': .* is out of "
                                          r"range once converted to UTC"):
        check_filter(query)


@pytest.mark.parametrize("query, message", [
    ({"qual_name": "jobs.\ud800"}, r"the value of 'qual_name': 'jobs.\\ud800' is not valid Unicode"),
    ({"tags": {"$in": ["ok", "\udfff"]}}, "the value of 'tags'"),
    ({"args.\ud800": 1}, "bad field name"),
    ({"args": {"\ud800": 1}}, "bad key"),
])
async def test_text_that_is_not_valid_unicode_is_rejected(db, query, message):
    # JSON may spell a lone surrogate; the BSON encoder cannot: a 500.
    with pytest.raises(UnicodeEncodeError):
        await db.queue.find_one(query)
    with pytest.raises(BadArgument, match=message):
        check_filter(query)


@pytest.mark.parametrize("value", [None, 3, ["a"], {"$where": "1"}])
def test_check_text_wants_a_string(value):
    with pytest.raises(BadArgument, match="qual_name: expected a string"):
        check_text(value, "qual_name")


# ---------------------------------------------------------------- filters against the database

async def test_equality_filter_finds_matching_jobs(db, docs):
    assert await matching(db, {"state": "running"}) == expected(docs, lambda d: d["state"] == "running")


async def test_in_and_nin_filters(db, docs):
    assert await matching(db, {"state": {"$in": ["pending", "failed"]}}) == \
        expected(docs, lambda d: d["state"] in ("pending", "failed"))
    assert await matching(db, {"priority": {"$nin": [0, 1]}}) == \
        expected(docs, lambda d: d["priority"] not in (0, 1))


async def test_or_and_and_filters(db, docs):
    query = {"$or": [{"priority": {"$gte": 4}},
                     {"$and": [{"state": "running"}, {"enqueued.username": "alice"}]}]}
    assert await matching(db, query) == expected(
        docs, lambda d: d["priority"] >= 4 or (d["state"] == "running"
                                               and d["enqueued"]["username"] == "alice"))


async def test_exists_filter(db, docs):
    assert await matching(db, {"locked.worker": {"$exists": True}}) == \
        expected(docs, lambda d: "locked" in d)
    assert await matching(db, {"last_error.exception": {"$exists": False}}) == \
        expected(docs, lambda d: "last_error" not in d)


async def test_dates_given_as_iso_strings_filter_by_time(db, docs):
    query = {"enqueued.at": {"$gte": "2026-11-24T10:05:00Z", "$lt": "2026-11-24T11:10:00+01:00"}}
    assert await matching(db, query) == list(range(5, 10))


async def test_id_given_as_hex_string_finds_the_job(db, docs):
    assert await matching(db, {"_id": str(docs[7]["_id"])}) == [7]
    assert await matching(db, {"_id": {"$in": [str(docs[3]["_id"]), str(docs[4]["_id"])]}}) == [3, 4]


async def test_args_filters_by_path_and_by_whole_document(db, docs):
    assert await matching(db, {"args.sleep": 3}) == expected(docs, lambda d: d["args"]["sleep"] == 3)
    assert await matching(db, {"args": {"sleep": 2}}) == expected(docs, lambda d: d["args"]["sleep"] == 2)


async def test_range_filter_on_numbers(db, docs):
    assert await matching(db, {"priority": {"$gt": 1, "$lte": 3}, "state": {"$ne": "failed"}}) == \
        expected(docs, lambda d: 1 < d["priority"] <= 3 and d["state"] != "failed")


# ---------------------------------------------------------------- sorting

@pytest.mark.parametrize("sort, keys", [
    (None, [("_id", -1)]),
    ("", [("_id", -1)]),
    ([], [("_id", -1)]),
    ("priority", [("priority", 1), ("_id", 1)]),
    ("+priority", [("priority", 1), ("_id", 1)]),
    ("-priority", [("priority", -1), ("_id", -1)]),
    ("-priority, enqueued.at", [("priority", -1), ("enqueued.at", 1), ("_id", 1)]),
    ("-priority,_id", [("priority", -1), ("_id", 1)]),
    (["-priority", "state"], [("priority", -1), ("state", 1), ("_id", 1)]),
    ([["priority", -1], ("state", 1)], [("priority", -1), ("state", 1), ("_id", 1)]),
    ({"state": 1, "priority": -1}, [("state", 1), ("priority", -1), ("_id", -1)]),
    ({"_id": 1}, [("_id", 1)]),
    ("args.sleep", [("args.sleep", 1), ("_id", 1)]),
])
def test_sort_variants(sort, keys):
    assert check_sort(sort) == keys


def test_sort_uses_the_given_default():
    assert check_sort(None, default=[("finished_at", -1)]) == [("finished_at", -1), ("_id", -1)]


@pytest.mark.parametrize("sort, message", [
    ("foo", "unknown field 'foo'"),
    ("-priority,$where", "bad field name '\\$where'"),
    ({"priority": 2}, "direction for 'priority' must be 1 or -1, got 2"),
    ({"priority": "desc"}, "direction for 'priority' must be 1 or -1"),
    ({"priority": True}, "direction for 'priority' must be 1 or -1"),
    ([["priority"]], "expected 'field'"),
    ([3], "expected 'field'"),
    (3, "expected a string, a list or an object"),
    ("priority,-priority", "'priority' is given twice"),
    ("-", "field names must be non-empty"),
    ("args.\ud800", "bad field name"),
    ({"priority": [1]}, "direction for 'priority' must be 1 or -1"),
    ([["priority", {}]], "direction for 'priority' must be 1 or -1"),
    ([[["priority"], 1]], "field names must be non-empty strings"),
    ({"priority": 10 ** 30}, "direction for 'priority' must be 1 or -1"),
])
def test_sort_errors_name_the_problem(sort, message):
    with pytest.raises(BadArgument, match=message):
        check_sort(sort)


# ---------------------------------------------------------------- search

async def search(db, text: str) -> list[str]:
    found = await db.queue.find(search_filter(text)).to_list()
    return sorted({doc["qual_name"] for doc in found})


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_search_is_no_filter(text):
    assert search_filter(text) == {}


def test_search_longer_than_200_characters_is_rejected():
    search_filter("a" * 200)
    with pytest.raises(BadArgument, match="at most 200"):
        search_filter("a" * 201)


def test_search_targets_the_given_field():
    assert set(search_filter("x", field="name")) == {"name"}


async def test_search_without_wildcards_is_a_case_insensitive_substring(db, docs):
    assert await search(db, "dummy") == ["jobs.example.DummyJob"]
    assert await search(db, "EXAMPLE") == ["jobs.example.DummyJob", "jobs.example.SleepJob"]


async def test_search_with_star_is_anchored_at_both_ends(db, docs):
    assert await search(db, "jobs.example.*") == ["jobs.example.DummyJob", "jobs.example.SleepJob"]
    assert await search(db, "example.*") == []
    assert await search(db, "*Job") == ["jobs.example.DummyJob", "jobs.example.SleepJob"]


async def test_search_question_mark_matches_one_character(db, docs):
    assert await search(db, "tests.jobs.a?b") == ["tests.jobs.a.b", "tests.jobs.axb"]
    assert await search(db, "tests.jobs.?b") == []


async def test_search_regex_metacharacters_are_literal(db, docs):
    assert await search(db, "a.b") == ["tests.jobs.a.b"]
    assert await search(db, "tests.jobs.a.b*") == ["tests.jobs.a.b"]
    assert await search(db, ".+") == []
    assert await search(db, "(") == []
    assert await search(db, "[a-z]") == []


def test_search_must_be_valid_text():
    with pytest.raises(BadArgument, match="search: expected a string, got list"):
        search_filter(["dummy"])
    with pytest.raises(BadArgument, match="search: .* is not valid Unicode"):
        search_filter("dummy\ud800")


async def test_search_for_a_nul_byte_spells_it_as_an_escape(db):
    # MongoDB refuses a $regex holding a NUL byte (secantusd does not).
    await db.queue.insert_many([{"qual_name": "a\x00b"}, {"qual_name": "ab"}])
    for text in ("a\x00b", "a\x00*"):
        assert "\x00" not in search_filter(text)["qual_name"]["$regex"]
        assert await search(db, text) == ["a\x00b"]


def test_runs_of_stars_count_as_one():
    assert search_filter("jobs.***.Dummy**") == search_filter("jobs.*.Dummy*")
    assert search_filter("*" * 30 + "x") == search_filter("*x")


@pytest.mark.parametrize("text", ["*a" * 8, "?" * 8, "*?" * 4, "a**?***b" * 2 + "??", "x" + "*" * 30 + "y"])
def test_search_with_8_wildcards_is_allowed(text):
    assert search_filter(text)


@pytest.mark.parametrize("text, count", [("*a" * 9, 9), ("?" * 9, 9), ("*?" * 5, 10), ("a**?***b" * 3, 9)])
def test_search_with_more_than_8_wildcards_is_rejected(text, count):
    with pytest.raises(BadArgument, match=f"search: at most 8 wildcards .*, got {count}$"):
        search_filter(text)


@pytest.mark.parametrize("text, pattern", [
    ("dummy", r"^(?>.*?dummy)"),
    ("jobs.*", r"^jobs\."),
    ("*Job", r"^.*Job\z"),
    ("a?b", r"^a.b\z"),
    ("*a*b?*c", r"^(?>.*?a)(?>.*?b.).*c\z"),
    ("*", r"^"),
])
def test_search_pattern_commits_to_each_segment(text, pattern):
    # One unbounded repeat per '*', each but the last inside an atomic group:
    # nothing for the regex engine to backtrack into.
    assert search_filter(text) == {"qual_name": {"$regex": pattern, "$options": "is"}}


GLOB_CHARS = "aAb.[]\\ \n*?"


def fnmatch_search(text: str, value: str) -> bool:
    """What ``text`` should find by glob rules: fnmatch, case-insensitive, '[' literal."""
    glob = text.strip()
    if "*" not in glob and "?" not in glob:
        glob = f"*{glob}*"
    return fnmatch.fnmatchcase(value.lower(), glob.lower().replace("[", "[[]"))


async def test_search_matches_exactly_what_fnmatch_matches(db):
    rng = random.Random(20261124)
    values = ["", "a", "A", "ab", "a\nb", "*", "?", "a.b", "[ab]"] + [
        "".join(rng.choice(GLOB_CHARS) for _ in range(rng.randint(0, 12))) for _ in range(200)]
    await db.queue.insert_many([{"n": n, "qual_name": value} for n, value in enumerate(values)])
    texts = ["*", "?", "*?*", "a*", "*a", "a*a", "?*?", "a?*b", "*a*b*", "[", "\n"] + [
        "".join(rng.choice(GLOB_CHARS) for _ in range(rng.randint(1, 10))) for _ in range(400)]
    checked = 0
    for text in texts:
        if re.sub(r"\*+", "*", text.strip()).count("*") + text.count("?") > MAX_WILDCARDS:
            continue
        found = await db.queue.find(search_filter(text), {"n": 1}).to_list()
        assert sorted(doc["n"] for doc in found) == \
            [n for n, value in enumerate(values) if fnmatch_search(text, value)], text
        checked += 1
    assert checked > 300


SLOW_SEARCHES = ["*" * 13 + "x", "*" * 30 + "x", "*a" * 7 + "*b", "*a?" * 3 + "*b", "?*" * 3 + "a*b"]


@pytest.mark.parametrize("text", SLOW_SEARCHES)
async def test_searches_that_backtracked_for_minutes_return_at_once(db, text):
    # The old pattern, one '.*' per star: '*************x' took 11 s against
    # 'jobs.example.DummyJob', '*a*a*a*a*a*a*a*b' 30 s against 60 'a's (and
    # stalled the whole embedded server meanwhile); 13 stars against 190
    # 'a's, or 30 stars, would outlast any timeout.
    names = ["jobs.example.DummyJob", "a" * 190, "a" * 190 + "b", "a" * 95 + "x" + "a" * 94 + "b"]
    now = datetime.now(timezone.utc)
    await db.journal.insert_many([{"qual_name": name, "state": "complete", "finished_at": now}
                                  for name in names])
    started = time.perf_counter()
    page = await journal.list_journal(db, user=queue.operator("test"), search=text, per_page=100)
    assert time.perf_counter() - started < 5
    assert sorted(job["qual_name"] for job in page.items) == \
        sorted(name for name in names if fnmatch_search(text, name))


# ---------------------------------------------------------------- pagination

async def test_page_figures_for_a_full_listing(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort("_id"), page=0, per_page=7)
    assert page.envelope_fields() == {"total_count": 30, "count": 7, "page": 0, "page_count": 5,
                                      "per_page": 7}
    assert [doc["n"] for doc in page.items] == list(range(7))


async def test_page_counts_only_matching_documents(db, docs):
    page = await paginate(db.queue, check_filter({"state": "pending"}), sort=check_sort("_id"),
                          per_page=4, page=2)
    assert (page.total_count, page.page_count, page.count) == (10, 3, 2)
    assert [doc["n"] for doc in page.items] == [24, 27]


async def test_minus_one_is_the_last_page(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort("_id"), page=-1, per_page=7)
    assert (page.page, page.count) == (4, 2)
    assert [doc["n"] for doc in page.items] == [28, 29]
    first = await paginate(db.queue, {}, sort=check_sort("_id"), page=-5, per_page=7)
    assert first.page == 0 and first.count == 7


async def test_page_before_the_first_is_rejected(db, docs):
    with pytest.raises(BadArgument, match="page -6 is before the first page"):
        await paginate(db.queue, {}, sort=check_sort(None), page=-6, per_page=7)
    with pytest.raises(BadArgument, match=f"page {-10 ** 30} is before the first page"):
        await paginate(db.queue, {}, sort=check_sort(None), page=-10 ** 30, per_page=7)


async def test_page_beyond_the_end_is_empty(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort(None), page=5, per_page=7)
    assert page.items == [] and page.envelope_fields() == {
        "total_count": 30, "count": 0, "page": 5, "page_count": 5, "per_page": 7}
    huge = await paginate(db.queue, {}, sort=check_sort(None), page=10 ** 18, per_page=1000)
    assert huge.items == [] and huge.page == 10 ** 18


async def test_empty_listing_has_no_pages_and_minus_one_is_page_zero(db):
    page = await paginate(db.queue, {}, sort=check_sort(None), page=-1)
    assert page.envelope_fields() == {"total_count": 0, "count": 0, "page": 0, "page_count": 0,
                                      "per_page": 10}
    with pytest.raises(BadArgument, match="before the first page"):
        await paginate(db.queue, {}, sort=check_sort(None), page=-2)


@pytest.mark.parametrize("per_page", [0, -1, MAX_PER_PAGE + 1, 10 ** 30, -10 ** 30])
async def test_per_page_outside_1_to_1000_is_rejected(db, per_page):
    with pytest.raises(BadArgument, match=f"per_page must be between 1 and 1000, got {per_page}"):
        await paginate(db.queue, {}, sort=check_sort(None), per_page=per_page)


@pytest.mark.parametrize("argument", ["page", "per_page"])
@pytest.mark.parametrize("value", ["1", 1.0, True, None])
async def test_page_arguments_must_be_integers(db, argument, value):
    with pytest.raises(BadArgument, match=f"{argument} must be an integer"):
        await paginate(db.queue, {}, sort=check_sort(None), **{argument: value})


async def test_per_page_1000_is_allowed(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort(None), per_page=MAX_PER_PAGE)
    assert (page.count, page.page_count) == (30, 1)


@pytest.mark.parametrize("sort", ["-priority", "state,-priority", "args.sleep", "enqueued.username"])
async def test_walking_all_pages_sees_every_document_once(db, docs, sort):
    keys = check_sort(sort)
    seen: list[int] = []
    first = await paginate(db.queue, {}, sort=keys, per_page=4)
    for number in range(first.page_count):
        page = await paginate(db.queue, {}, sort=keys, page=number, per_page=4)
        seen.extend(doc["n"] for doc in page.items)
    assert sorted(seen) == list(range(30))
    whole = await paginate(db.queue, {}, sort=keys, per_page=30)
    assert seen == [doc["n"] for doc in whole.items]


async def test_sorted_pages_follow_the_sort_keys(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort("-priority,enqueued.at"), per_page=8)
    assert [(doc["priority"], doc["n"]) for doc in page.items] == \
        [(4, 4), (4, 9), (4, 14), (4, 19), (4, 24), (4, 29), (3, 3), (3, 8)]


async def test_projection_limits_the_fields(db, docs):
    page = await paginate(db.queue, {}, sort=check_sort(None), per_page=1,
                          projection={"qual_name": 1})
    assert set(page.items[0]) == {"_id", "qual_name"}


# ---------------------------------------------------------------- the time limit

READER = {"name": "reader", "roles": [], "perms": ["job:jobs.*:x"], "active": True}
JOB_ID = ObjectId()
LISTINGS = {
    "queue": lambda db: journal.list_queue(db, user=READER),
    "journal": lambda db: journal.list_journal(db, user=READER),
    "registry": lambda db: registry.list_page(db, user=READER),
    "log": lambda db: logs.page(db, JOB_ID),
    "stats": lambda db: stats.stats(db, user=READER, lease_seconds=5),
    "workers": lambda db: stats.workers(db, user=READER, lease_seconds=5),
}


@pytest.fixture
async def everything(db: Database) -> None:
    """Something for every listing to find: a running and a finished job, the registry, a log record, a worker."""
    now = datetime.now(timezone.utc)
    running = {"_id": JOB_ID, "qual_name": "jobs.example.DummyJob", "state": "running", "priority": 0,
               "enqueued": {"at": now}, "locked": {"worker": "w1"}}
    await db.queue.insert_one(running)
    await db.journal.insert_one({**running, "_id": ObjectId(), "state": "complete", "finished_at": now})
    await registry.sync(db, registry.discover())
    await db.log.insert_one({"job_id": JOB_ID, "seq": 1, "created": now, "level": "INFO", "message": "hi"})
    await db.worker.insert_one({"_id": "w1", "heartbeat": now, "running": [str(JOB_ID)],
                                "jobs": ["jobs.example.DummyJob"]})


class ReadCommands(monitoring.CommandListener):
    """The ``maxTimeMS`` of each read command a client sends, by command name."""

    def __init__(self) -> None:
        self.limits: list[tuple[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate", "count", "distinct"):
            self.limits.append((event.command_name, event.command.get("maxTimeMS")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize("listing_name", LISTINGS)
async def test_every_query_of_a_listing_has_a_time_limit(config, db, everything, listing_name):
    reads = ReadCommands()
    client: AsyncMongoClient = AsyncMongoClient(config.mongo_url, tz_aware=True, tzinfo=timezone.utc,
                                                event_listeners=[reads])
    try:
        await LISTINGS[listing_name](Database(client, config.database))
    finally:
        await client.close()
    assert "find" in {name for name, _ in reads.limits}
    assert reads.limits == [(name, QUERY_TIMEOUT_MS) for name, _ in reads.limits]


@pytest.fixture
async def max_time_always_times_out(db: Database) -> Any:
    """mongod's fail point: the next query that has a time limit is stopped, whatever the limit."""
    await db.client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode={"times": 1})
    yield
    await db.client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")


@pytest.mark.parametrize("listing_name, message", [
    ("queue", "the listing took longer than 5 s and was stopped; narrow it with state, a search or a filter"),
    ("journal", "the listing took longer than 5 s and was stopped; narrow it with state, qual_name, "
                "since/until or a search"),
    ("registry", "the listing took longer than 5 s and was stopped; narrow it with a search or a filter"),
    ("log", "the listing took longer than 5 s and was stopped; try again later"),
    ("stats", "counting the statistics took longer than 5 s and was stopped"),
    ("workers", "listing the workers took longer than 5 s and was stopped"),
])
async def test_a_listing_the_database_stops_is_unavailable(db, everything, max_time_always_times_out,
                                                          listing_name, message):
    with pytest.raises(DatabaseUnavailable, match=f"^{re.escape(message)}$"):
        await LISTINGS[listing_name](db)


async def test_the_database_stops_a_listing_past_its_time_limit(db, monkeypatch):
    # secantusd checks the deadline every 64 documents of a scan; a 1 ms
    # budget runs out long before 3000 documents are matched.
    await db.queue.insert_many([{"qual_name": f"jobs.n{n}", "state": "pending"} for n in range(3000)])
    monkeypatch.setattr(listing, "QUERY_TIMEOUT_MS", 1)
    with pytest.raises(DatabaseUnavailable, match="took longer than 0.001 s and was stopped"):
        await paginate(db.queue, search_filter("*x*"), sort=check_sort(None))


# ---------------------------------------------------------------- the listings' own arguments

@pytest.mark.parametrize("states", [None, "", [], ()])
def test_no_states_means_all_allowed_ones(states):
    assert journal.state_filter(states, LIVE) == {"state": {"$in": sorted(s.value for s in LIVE)}}


def test_states_as_text_or_a_list():
    assert journal.state_filter("pending, running", LIVE) == {"state": {"$in": ["pending", "running"]}}
    assert journal.state_filter(("complete",), FINAL) == {"state": {"$in": ["complete"]}}


@pytest.mark.parametrize("states, message", [
    ([{}], "state {} is not one of deferred, failed, pending, running"),
    (["pending", ["running"]], "state ['running'] is not one of"),
    ([None], "state None is not one of"),
    ("pending,", "state '' is not one of"),
    (["complete"], "state 'complete' is not one of"),
    ({"pending": 1}, "state: expected comma-separated names or a list of them, got dict"),
    (3, "state: expected comma-separated names or a list of them, got int"),
])
def test_a_bad_state_is_rejected_by_name(states, message):
    with pytest.raises(BadArgument, match=re.escape(message)):
        journal.state_filter(states, LIVE)


@pytest.mark.parametrize("qual_name, message", [
    ({"$where": "sleep(100)"}, "qual_name: expected a string, got dict"),
    (["jobs.example.DummyJob"], "qual_name: expected a string, got list"),
    ("jobs.\ud800", "qual_name: 'jobs.\\ud800' is not valid Unicode"),
])
async def test_journal_qual_name_must_be_text(db, qual_name, message):
    with pytest.raises(BadArgument, match=re.escape(message)):
        await journal.list_journal(db, user=queue.operator("test"), qual_name=qual_name)


# ---------------------------------------------------------------- time_range and combine

def test_time_range_with_both_bounds():
    later = BASE + timedelta(hours=1)
    assert time_range("finished_at", BASE, later) == {"finished_at": {"$gte": BASE, "$lt": later}}


def test_time_range_with_one_or_no_bound():
    assert time_range("finished_at", BASE, None) == {"finished_at": {"$gte": BASE}}
    assert time_range("finished_at", None, BASE) == {"finished_at": {"$lt": BASE}}
    assert time_range("finished_at", None, None) == {}


def test_time_range_takes_naive_times_as_utc():
    assert time_range("x", datetime(2026, 11, 24, 10), None) == {"x": {"$gte": BASE}}


def test_time_range_since_after_until_is_rejected():
    with pytest.raises(BadArgument, match="since .* is later than until"):
        time_range("finished_at", BASE + timedelta(seconds=1), BASE)


def test_time_range_rejects_a_non_time():
    with pytest.raises(BadArgument, match="since must be a time"):
        time_range("finished_at", "2026-11-24", None)


def test_time_range_gives_bounds_in_utc():
    one_hour_ahead = timezone(timedelta(hours=1))
    bounds = time_range("finished_at", datetime(2026, 11, 24, 11, tzinfo=one_hour_ahead), None)
    assert bounds == {"finished_at": {"$gte": BASE}}
    assert bounds["finished_at"]["$gte"].utcoffset() == timedelta(0)


@pytest.mark.parametrize("name, moment", [
    ("since", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
    ("until", datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1)))),
])
def test_time_range_rejects_a_time_that_leaves_the_range_in_utc(name, moment):
    with pytest.raises(BadArgument, match=f"^{name}: {re.escape(moment.isoformat())} is out of range "
                                          "once converted to UTC"):
        time_range("finished_at", **{"since": None, "until": None, name: moment})


async def test_time_range_selects_documents(db, docs):
    query = time_range("enqueued.at", BASE + timedelta(minutes=3), BASE + timedelta(minutes=6))
    assert sorted(doc["n"] for doc in await db.queue.find(query).to_list()) == [3, 4, 5]


def test_combine_of_nothing_or_empties_is_empty():
    assert combine() == {}
    assert combine({}, {}) == {}


def test_combine_of_one_query_is_that_query():
    assert combine({}, {"state": "pending"}, {}) == {"state": "pending"}


def test_combine_of_queries_on_different_fields_is_one_document():
    # One document, not a $and: the embedded server plans an index only for that.
    assert combine({"a": 1}, {}, {"b": 2, "c": 3}) == {"a": 1, "b": 2, "c": 3}


def test_combine_keeps_clauses_on_a_field_already_named_in_a_residual_and():
    assert combine({"qual_name": {"$regex": "^a"}}, {"state": "x"}, {"qual_name": {"$regex": "b$"}},
                   {"$or": [{"a": 1}]}, {"$or": [{"b": 2}]}) == \
        {"qual_name": {"$regex": "^a"}, "state": "x", "$or": [{"a": 1}],
         "$and": [{"qual_name": {"$regex": "b$"}}, {"$or": [{"b": 2}]}]}


def test_combine_flattens_lone_ands():
    assert combine({"$and": [{"a": 1}, {"b": 2}]}, {"c": 3}) == {"a": 1, "b": 2, "c": 3}
    assert combine({"$and": [{"a": 1}], "b": 2}, {"c": 3}) == {"b": 2, "a": 1, "c": 3}
    twice = combine(combine({"q": 1}, {"q": 2}), {"r": 3})  # a combined query combined again
    assert twice == {"q": 1, "r": 3, "$and": [{"q": 2}]}


async def test_combined_filter_search_and_permissions_select_documents(db, docs):
    from core.permissions import readable_filter
    user = {"name": "u", "active": True, "roles": [], "perms": ["job:jobs.example.*:r"]}
    query = combine(readable_filter(user), search_filter("*Job"),
                    check_filter({"state": {"$in": ["pending", "running"]}}))
    page = await paginate(db.queue, query, sort=check_sort("_id"), per_page=100)
    assert [doc["n"] for doc in page.items] == expected(
        docs, lambda d: d["qual_name"].startswith("jobs.example.") and d["state"] != "failed")


# ---------------------------------------------------------------- the module's surface

def test_job_fields_cover_the_job_document():
    assert {"_id", "qual_name", "args", "state", "priority", "enqueued.at", "locked.heartbeat",
            "last_error.at", "tags", "version"} <= JOB_FIELDS
    assert "last_error.traceback" not in JOB_FIELDS and "result" not in JOB_FIELDS


def test_operators_are_exactly_the_safe_subset():
    assert OPERATORS == {"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists",
                         "$and", "$or"}
    assert MAX_PER_PAGE == 1000
    assert all(hasattr(listing, name) for name in listing.__all__)
