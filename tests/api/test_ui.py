"""The treasurer's dashboard over HTTP: sign-in and its cookie, CSRF, who sees which community,
and pages whose figures are the API's own."""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.ui.router import STATEMENT_LINES
from protocoop.ui.service import BUCKETS, bucket
from tests.support.api import Api, create_community, create_member, every_item, make_key
from tests.support.ledger import BATCH, C, exchange, posted

OVERVIEW = "/ui/communities/riverside"


def browser(app: Any) -> TestClient:
    """A client with a cookie jar of its own (the shared test client's must stay empty)."""
    return TestClient(app, follow_redirects=False)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def sign_in(client: TestClient, token: str, next_page: str = "/ui") -> Any:
    form = client.get("/ui/sign-in", params={"next": next_page})
    assert form.status_code == 200
    return client.post(
        "/ui/sign-in",
        data={"token": token, "csrf": csrf_of(form.text), "next": next_page},
    )


def signed_in(app: Any, token: str) -> TestClient:
    client = browser(app)
    response = sign_in(client, token)
    assert response.status_code == 303, response.text
    return client


def text_of(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert found, f"no #{element_id}"
    return html.unescape(found.group(1)).strip()


@pytest.fixture
def trading(api: Api, community: dict[str, Any]) -> None:
    posted(api, "alice", "bob", 30)
    posted(api, "bob", "carol", 10)
    posted(api, "carol", "alice", 5)


def test_a_page_without_a_session_redirects_to_sign_in_and_back(
    app: Any, keys: dict[str, str]
) -> None:
    client = browser(app)

    response = client.get(f"{OVERVIEW}/members", params={"q": "al"})

    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/sign-in?next=")
    target = "/ui/communities/riverside/members?q=al"
    assert sign_in(client, keys["treasurer"], target).headers["location"] == target


def test_signing_in_sets_a_signed_httponly_strict_cookie_and_opens_the_own_community(
    app: Any, keys: dict[str, str]
) -> None:
    client = browser(app)

    response = sign_in(client, keys["treasurer"])
    assert response.status_code == 303
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("pcp_session=")
    )
    assert keys["treasurer"] not in cookie  # the key's id and a number, never its token
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui"} <= flags
    assert any(flag.startswith("max-age=") for flag in flags)

    home = client.get("/ui")
    assert (home.status_code, home.headers["location"]) == (303, OVERVIEW)
    assert "Mutuality holds" in client.get(OVERVIEW).text


@pytest.mark.parametrize("csrf", [None, "forged", "other-form"])
def test_a_sign_in_without_its_forms_csrf_token_is_refused(
    app: Any, keys: dict[str, str], csrf: str | None
) -> None:
    client = browser(app)
    form = client.get("/ui/sign-in")
    data = {"token": keys["treasurer"]}
    if csrf == "forged":
        data["csrf"] = csrf_of(form.text)[:-4] + "AAAA"
    elif csrf == "other-form":
        data["csrf"] = csrf_of(browser(app).get("/ui/sign-in").text)  # another browser's

    response = client.post("/ui/sign-in", data=data)

    assert response.status_code == 400
    assert "pcp_session" not in response.headers.get("set-cookie", "")
    assert client.get(OVERVIEW).status_code == 303


def test_an_app_key_cannot_sign_in(app: Any, keys: dict[str, str]) -> None:
    response = sign_in(browser(app), keys["app"])

    assert response.status_code == 400
    assert "may not use the dashboard" in response.text


def test_an_unknown_key_cannot_sign_in(app: Any, keys: dict[str, str]) -> None:
    response = sign_in(browser(app), "pcp_" + "x" * 40)
    assert response.status_code == 400
    assert "Unknown or revoked API key." in response.text


def test_an_auditor_of_another_community_sees_404_for_this_one(
    app: Any, api: Api, db: Database, keys: dict[str, str]
) -> None:
    create_community(api, "hillside")
    client = signed_in(app, make_key(db, Role.AUDITOR, "hillside"))

    for path in (
        OVERVIEW,
        f"{OVERVIEW}/members",
        f"{OVERVIEW}/members/alice",
        f"{OVERVIEW}/exchanges",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "riverside" in response.text  # what was asked for, nothing of what it holds
    assert client.get("/ui/communities/hillside").status_code == 200


def test_an_admin_chooses_among_every_community(app: Any, api: Api, keys: dict[str, str]) -> None:
    create_community(api, "hillside")
    client = signed_in(app, keys["admin"])

    home = client.get("/ui")

    assert home.status_code == 200
    assert 'href="/ui/communities/hillside"' in home.text
    assert 'href="/ui/communities/riverside"' in home.text
    assert client.get("/ui/communities/nowhere").status_code == 404


def test_revoking_the_key_ends_its_dashboard_session(
    app: Any, api: Api, db: Database, keys: dict[str, str]
) -> None:
    client = signed_in(app, keys["treasurer"])
    key_id = next(
        k["id"] for k in api.get("/v1/api-keys").json()["items"] if k["role"] == "treasurer"
    )

    assert api.delete(f"/v1/api-keys/{key_id}").status_code == 204

    assert client.get(OVERVIEW).status_code == 303


def test_a_tampered_session_cookie_is_no_session(app: Any, keys: dict[str, str]) -> None:
    client = signed_in(app, keys["treasurer"])
    value = client.cookies["pcp_session"]
    client.cookies.clear()
    client.cookies.set("pcp_session", value[:-3] + ("AAA" if value[-3:] != "AAA" else "BBB"))

    assert client.get(OVERVIEW).status_code == 303


def test_signing_out_needs_the_pages_token_and_ends_the_session(
    app: Any, keys: dict[str, str]
) -> None:
    client = signed_in(app, keys["treasurer"])
    page = client.get(OVERVIEW).text

    assert client.post("/ui/sign-out", data={"csrf": "forged"}).status_code == 400
    assert client.get(OVERVIEW).status_code == 200

    response = client.post("/ui/sign-out", data={"csrf": csrf_of(page)})
    assert (response.status_code, response.headers["location"]) == (303, "/ui/sign-in")
    assert client.get(OVERVIEW).status_code == 303


def test_the_overview_shows_the_apis_verdict_and_indicators(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    client = signed_in(app, keys["auditor"])
    report = api.get(f"{C}/mutuality").json()

    page = client.get(OVERVIEW).text

    assert report["holds"]
    assert "Mutuality holds" in page
    indicators = report["indicators"]
    assert text_of(page, "indicator-volume") == f"{indicators['volume']} HOUR"
    assert text_of(page, "indicator-exchanges") == str(indicators["exchanges"])
    assert text_of(page, "indicator-active") == (
        f"{indicators['active_members']} of {indicators['members']}"
    )
    assert text_of(page, "indicator-index") == f"{indicators['mutuality_index']:.2f}"
    assert page.count("<svg") == 3  # volume and index by month, the balance histogram


def test_a_window_narrows_the_indicators(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    client = signed_in(app, keys["treasurer"])

    page = client.get(OVERVIEW, params={"since": "2000-01-01", "until": "2000-02-01"}).text

    assert text_of(page, "indicator-exchanges") == "0"


def test_members_are_searched_sorted_and_downloaded_as_shown(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    create_member(api, "riverside", "alfred")
    client = signed_in(app, keys["treasurer"])
    members_page = f"{OVERVIEW}/members"

    found = client.get(members_page, params={"q": "AL"}).text
    assert text_of(found, "member-count") == "2"  # alice and alfred, any case

    by_balance = client.get(members_page, params={"sort": "balance", "order": "desc"}).text
    shown = re.findall(r'members/([a-z]+)">\1</a>', by_balance)
    balances = {b["account"]: b["balance"] for b in api.get(f"{C}/balances").json()["items"]}
    assert shown == sorted(shown, key=lambda m: (-balances[m], m))
    assert 'aria-sort="descending"' in by_balance

    download = client.get(members_page, params={"q": "al", "sort": "member", "format": "csv"})
    assert download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["member"] for r in rows] == ["alfred", "alice"]
    assert int(rows[1]["balance"]) == balances["alice"]


def test_members_come_in_pages_of_fifty(app: Any, api: Api, keys: dict[str, str]) -> None:
    for n in range(55):
        create_member(api, "riverside", f"m{n:02d}")
    client = signed_in(app, keys["treasurer"])

    first = client.get(f"{OVERVIEW}/members").text
    second = client.get(f"{OVERVIEW}/members", params={"page": 2}).text

    row = '<th scope="row"><a href="/ui/communities/riverside/members/'
    assert "Page 1 of 2" in first
    assert 'rel="next"' in first
    assert (first.count(row), second.count(row)) == (50, 8)  # alice, bob, carol and 55 more


def test_a_members_statement_closes_at_the_apis_balance(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    client = signed_in(app, keys["treasurer"])

    page = client.get(f"{OVERVIEW}/members/bob").text

    balance = api.get(f"{C}/members/bob/balance").json()["balance"]
    assert text_of(page, "closing-balance") == f"{balance} HOUR"
    assert text_of(page, "member-balance") == f"{balance} HOUR"
    assert 'href="/ui/communities/riverside/members/alice"' in page  # a partner
    assert client.get(f"{OVERVIEW}/members/nobody").status_code == 404


def test_the_histogram_counts_each_members_balance_in_the_bucket_of_its_limits(
    app: Any, api: Api, keys: dict[str, str]
) -> None:
    create_member(api, "riverside", "dana", upper_limit=100)
    create_member(api, "riverside", "erin", upper_limit=100)
    create_member(api, "riverside", "frank", lower_limit=-40)
    create_member(api, "riverside", "gus")  # never trades: zero
    posted(api, "dana", "alice", 100)  # at both limits
    posted(api, "erin", "bob", 25)  # a quarter of each
    posted(api, "frank", "carol", 10)
    posted(api, "carol", "frank", 40)
    client = signed_in(app, keys["treasurer"])

    page = client.get(OVERVIEW).text

    shown = re.findall(
        r'<tr><td>\d+</td><th scope="row">([^<]+)</th><td class="num">(\d+)</td></tr>', page
    )
    members = [b for b in api.get(f"{C}/balances").json()["items"] if b["kind"] == "member"]
    expected = dict.fromkeys(BUCKETS, 0)
    for m in members:
        expected[bucket(m["balance"], m["lower_limit"], m["upper_limit"])] += 1
    assert [(html.unescape(name), int(count)) for name, count in shown] == list(expected.items())
    assert expected["75 to 100 % of the ceiling"] == 1  # dana, 100 of 100
    assert expected["75 to 100 % of the floor"] == 2  # alice at -100 of -100, frank -30 of -40
    assert expected["25 to 50 % of the floor"] == expected["25 to 50 % of the ceiling"] == 1
    assert expected["zero"] == 1  # gus (the fund, @commons, is not a member)
    assert sum(expected.values()) == len(members) == 7


def test_a_long_statement_shows_its_newest_lines_and_closes_at_the_apis_balance(
    app: Any, api: Api, keys: dict[str, str]
) -> None:
    items = []
    for n in range(STATEMENT_LINES + 5):
        amount = 1 + n // 2 % 4  # bob: 1, 0, 2, 0, 3, ...
        items.append(
            exchange("alice", "bob", amount) if n % 2 else exchange("bob", "alice", amount)
        )
        if n % 20 == 0:
            items.append(exchange("carol", "alice", 1))  # not bob's: his lines skip its seq
    response = api.as_(keys["app"]).post(BATCH, json={"exchanges": items})
    assert response.status_code == 201, response.text
    client = signed_in(app, keys["treasurer"])

    page = client.get(f"{OVERVIEW}/members/bob").text

    statement = every_item(api.get, f"{C}/members/bob/statement")
    newest = statement[::-1][:STATEMENT_LINES]
    rows = re.findall(
        r'/exchanges/[0-9a-f-]{36}">(\d+)</a></td>.*?<td class="num">(-?\d+) HOUR</td>\s*</tr>',
        page,
        re.S,
    )
    assert [(int(seq), int(after)) for seq, after in rows] == [
        (line["seq"], line["balance_after"]) for line in newest
    ]
    balance = api.get(f"{C}/members/bob/balance").json()["balance"]
    assert text_of(page, "closing-balance") == f"{balance} HOUR"
    assert newest[0]["balance_after"] == balance
    opening = newest[-1]["balance_after"] - newest[-1]["amount"]
    assert f"opening balance {opening} HOUR before #{newest[-1]['seq']}." in page
    assert f"the last {STATEMENT_LINES} entries" in page


def test_exchanges_are_filtered_and_each_shows_its_entries_and_hash(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    client = signed_in(app, keys["auditor"])

    listed = client.get(f"{OVERVIEW}/exchanges", params={"member": "carol"}).text
    ids = re.findall(r"/exchanges/([0-9a-f-]{36})", listed)
    assert len(ids) == 2  # bob -> carol and carol -> alice, newest first

    exchange = api.get(f"{C}/exchanges/{ids[0]}").json()
    detail = client.get(f"{OVERVIEW}/exchanges/{ids[0]}").text
    assert exchange["hash"] in detail
    assert exchange["provider"] == "carol"
    assert client.get(f"{OVERVIEW}/exchanges/not-a-uuid").status_code == 404


def test_pages_run_no_script_and_are_never_stored(app: Any, keys: dict[str, str]) -> None:
    client = signed_in(app, keys["treasurer"])

    response = client.get(OVERVIEW)

    policy = response.headers["content-security-policy"]
    assert "script-src" not in policy
    assert "default-src 'none'" in policy
    assert response.headers["cache-control"] == "no-store"
    assert "<script" not in response.text


def test_nothing_on_the_dashboard_changes_the_ledger(
    app: Any, api: Api, keys: dict[str, str], trading: None
) -> None:
    client = signed_in(app, keys["treasurer"])
    before = api.get(f"{C}/balances").json()

    for path in (OVERVIEW, f"{OVERVIEW}/members", f"{OVERVIEW}/exchanges"):
        assert client.post(path, data={"x": "1"}).status_code == 405

    assert api.get(f"{C}/balances").json() == before
