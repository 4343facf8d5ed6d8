from tests.support.api import Api


def test_ready_on_a_migrated_database(api: Api) -> None:
    assert api.get("/readyz").status_code == 200


def test_created_member_is_listed_with_zero_balance(api: Api, community: dict) -> None:
    members = api.get("/v1/communities/riverside/members").json()["items"]
    assert [m["id"] for m in members] == ["alice", "bob", "carol"]
    assert {m["balance"] for m in members} == {0}
