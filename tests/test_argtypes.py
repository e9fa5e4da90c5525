"""The argparse types every command shares (vaedeploy/argtypes.py): one comma-list rule for every list option, and
each refusal one line naming what was expected and what came."""
import argparse

import pytest

from vaedeploy.argtypes import POSITIVE_INT, comma_list, cuda_device, tcp_port

SIZES = comma_list(POSITIVE_INT, "batch sizes ≥ 1 separated by commas")


def refusal(parse, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)
    return str(refused.value)


def test_a_comma_list_strips_its_parts_and_skips_blank_ones():
    assert SIZES(" 1, 2,,8,") == [1, 2, 8]
    assert comma_list(str, "names")("a, b ,a") == ["a", "b", "a"]


def test_unique_drops_repeats_and_keeps_the_first_order():
    assert comma_list(POSITIVE_INT, "sizes", unique=True)("8,1,8,2,1") == [8, 1, 2]


def test_a_bad_or_missing_value_is_refused_in_the_lists_own_words():
    for text in ("1,x", "0,2", "", " , "):
        assert refusal(SIZES, text) == f"expected batch sizes ≥ 1 separated by commas, got {text!r}"


def test_without_expected_words_an_empty_list_is_fine_and_a_bad_value_speaks_for_itself():
    sizes = comma_list(POSITIVE_INT)
    assert sizes("") == [] and sizes("4,") == [4]
    assert refusal(sizes, "4,0") == "expected an integer ≥ 1, got '0'"


def test_ports_and_cuda_devices():
    assert tcp_port("0") == 0 and tcp_port("65535") == 65535
    for text in ("-1", "65536", "http"):
        assert refusal(tcp_port, text) == f"expected a TCP port from 0 to 65535 (0: any free port), got {text!r}"
    assert cuda_device("cuda") == "cuda" and cuda_device("cuda:1") == "cuda:1"
    for text in ("cpu", "cuda:", "cuda:x"):
        assert refusal(cuda_device, text).startswith("expected cuda or cuda:N")
