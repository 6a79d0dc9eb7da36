"""containerd's filter language: what parses, what matches, what is refused."""

from __future__ import annotations

import pytest

from cowstore.errors import InvalidArgument
from cowstore.snapshotter import filters
from cowstore.snapshotter.filters import Selector

INFO = {"kind": "active", "name": "a-wl", "parent": "p-wl"}
LABELS = {"l": "2", "containerd.io/gc.root": "check-walk", "a.b": "dotted"}


def adaptor(path: list[str]) -> tuple[str, bool]:
    if path[0] == "labels":
        key = ".".join(path[1:])
        return LABELS.get(key, ""), key in LABELS
    return INFO.get(path[0], ""), path[0] in INFO


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind==active", [Selector(("kind",), "==", "active")]),
        (
            'labels."containerd.io/gc.root"==check-walk',
            [Selector(("labels", "containerd.io/gc.root"), "==", "check-walk")],
        ),
        ('parent!=""', [Selector(("parent",), "!=", "")]),
        ("name==a-wl,labels.l", [Selector(("name",), "==", "a-wl"), Selector(("labels", "l"), None)]),
        ("name~=/^a-.*$/", [Selector(("name",), "~=", "^a-.*$")]),
        ("name~=|a\\|b|", [Selector(("name",), "~=", "a|b")]),
        ('  kind == "act\\u0069ve" ', [Selector(("kind",), "==", "active")]),
    ],
)
def test_parses_like_containerd(text: str, expected: list[Selector]) -> None:
    assert filters.parse([text]) == [expected]


@pytest.mark.parametrize("text", ["kind=active", "kind==", ".kind", "a b", "name==/x/", "kind==a,", 'kind=="open'])
def test_refuses_what_containerd_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        filters.parse([text])


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ([], True),
        ([""], True),
        (["kind==view"], False),
        (["kind==view", "name==a-wl"], True),
        (["kind==active,labels.l==2"], True),
        (["kind==active,labels.l==3"], False),
        (["labels.missing"], False),
        (["labels.missing!=x"], True),
        (['labels."a.b"==dotted'], True),
        (["labels.a.b==dotted"], True),
        (["parent~=^p-"], True),
        (["name~=("], False),
    ],
)
def test_matches_any_filter_and_all_selectors(given: list[str], match: bool) -> None:
    assert filters.matches(filters.parse(given), adaptor) is match
