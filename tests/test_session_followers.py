"""SessionFollowers without a server: who is told of which session's change."""

from __future__ import annotations

from rtbus.session import Session
from rtbus.session_followers import SessionFollowers


def make(sid, dbname="db"):
    return Session(sid=sid, dbname=dbname, uid=1, partner_id=1, group_ids=())


def test_a_notify_reaches_the_followers_of_its_prefix_only():
    followers = SessionFollowers()
    told = []
    followers.follow(make("a" * 68), lambda: told.append("a"))
    followers.follow(make("b" * 68), lambda: told.append("b"))
    followers.follow(make("a" * 68, dbname="other"), lambda: told.append("other"))
    assert followers.changed("db", "a" * 16) == 1
    assert told == ["a"]


def test_star_reaches_every_follower_of_the_database():
    followers = SessionFollowers()
    told = []
    for sid in ("a" * 68, "b" * 68):
        followers.follow(make(sid), lambda sid=sid: told.append(sid[0]))
    assert followers.changed("db", "*") == 2
    assert sorted(told) == ["a", "b"]


def test_unfollowed_and_public_sessions_are_not_told():
    followers = SessionFollowers()
    handle = followers.follow(make("a" * 68), lambda: 1 / 0)
    assert followers.follow(make(None), lambda: 1 / 0) is None
    followers.unfollow(handle)
    followers.unfollow(None)
    assert len(followers) == 0
    assert followers.changed("db", "*") == 0


def test_a_failing_follower_does_not_stop_the_others():
    followers = SessionFollowers()
    told = []
    followers.follow(make("a" * 68), lambda: 1 / 0)
    followers.follow(make("a" * 68), lambda: told.append(1))
    assert followers.changed("db", "a" * 16) == 2
    assert told == [1]
