"""Plain text for the terminal: tables and an error's first line."""

from sfs.core.text import first_line, text_table


def test_a_table_aligns_its_columns_two_spaces_apart():
    assert text_table([("sweep", "models"), ("smoke", 8), ("a_long_name", 1234)]) == [
        "sweep        models",
        "smoke        8",
        "a_long_name  1234",
    ]


def test_the_first_line_of_an_error_is_cut_to_its_limit_and_empty_when_it_says_nothing():
    error = ValueError("cannot reach the server\nTraceback (most recent call last):\n  ...")
    assert first_line(error) == "cannot reach the server"
    assert first_line(error, 6) == "cannot"
    assert first_line(RuntimeError()) == ""  # an error without a message: no IndexError
    assert first_line(RuntimeError(), 10) == ""
    assert first_line(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
