"""The one rule for which card a job for any card takes (provision/cardpick.py): lowest serial
first, then GUID-only cards, then cards with neither, ties by reader name; jobs in file order. The
result must not depend on the order the cards were read in (the runner's workers race)."""

from __future__ import annotations

from itertools import permutations

from provision.cardpick import card_order, pick_cards

CARDS = [("reader A", 22222222, None), ("reader B", 11111111, "ab" * 16), ("reader C", None, "cd" * 16),
         ("reader D", None, None), ("reader E", 11111111, None)]  # fmt: skip


def test_jobs_in_file_order_take_the_lowest_serial_first_then_guid_then_neither() -> None:
    picks = pick_cards(["J1", "J2", "J3", "J4", "J5"], CARDS)
    # Two cards with serial 11111111: the reader name decides between them.
    assert picks == {"reader B": "J1", "reader E": "J2", "reader A": "J3", "reader C": "J4", "reader D": "J5"}


def test_whatever_order_the_cards_were_read_in_the_pairs_are_the_same() -> None:
    expected = pick_cards(["J1", "J2"], CARDS)
    assert expected == {"reader B": "J1", "reader E": "J2"}
    for order in permutations(CARDS):
        assert pick_cards(["J1", "J2"], list(order)) == expected


def test_more_jobs_than_cards_leaves_the_last_jobs_and_more_cards_leaves_the_highest_cards() -> None:
    assert pick_cards(["J1", "J2", "J3"], [("r0", 5, None)]) == {"r0": "J1"}
    assert pick_cards(["J1"], [("r0", 9, None), ("r1", 5, None)]) == {"r1": "J1"}
    assert pick_cards([], [("r0", 9, None)]) == {}


def test_a_serial_with_the_top_bit_set_is_ordered_as_unsigned() -> None:
    assert card_order(0x80000000, None, "r") > card_order(0x7FFFFFFF, None, "r")
