"""errors.py: every message is one printable line whatever its fields hold, names the program the user ran, and is the
one the docs quote."""

import re
import string
from pathlib import Path

import pytest

from jaxbigram import errors
from jaxbigram.errors import MESSAGES, message, printable_path, shell_word
from jaxbigram.runs import resumable_keys_text

from conftest import REPO_ROOT

HOSTILE = "run\nnext\tline\x1b[31mred" + "\udcff"  # a newline, a tab, an escape sequence, a byte that is not UTF-8


def _fields(template: str) -> set[str]:
    """The fields a caller fills in (``{program}`` is filled by ``message`` itself)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field and field != "program"}


def test_printable_path_escapes_what_would_break_a_line():
    assert printable_path("/tmp/plain ✓.txt") == "/tmp/plain ✓.txt"
    assert printable_path(HOSTILE) == "run\\nnext\\tline\\x1b[31mred\\xff"
    assert printable_path(Path("a\nb")) == printable_path(b"a\nb") == "a\\nb"


@pytest.mark.parametrize("value, word", [("runs/default", "runs/default"), ("my run", "'my run'"),
                                         ("it's", "'it'\"'\"'s'"), ("a\nb", "$'a\\nb'"), ("a\\b\t'", "$'a\\\\b\\t\\''"),
                                         (b"r\xffn", "$'r\\xffn'")])
def test_shell_word_is_one_line_a_shell_reads_back(value, word):
    assert shell_word(value) == word


@pytest.mark.parametrize("code", sorted(MESSAGES))
def test_every_message_is_one_printable_line_whatever_its_fields(code):
    text = message(code, **{field: HOSTILE for field in _fields(MESSAGES[code])})
    assert text.isprintable(), text
    text.encode("utf-8")


def test_messages_name_the_program_the_user_ran():
    try:
        for program in ("python run.py", "jaxbigram", "python -m jaxbigram"):
            errors.set_program(program)
            assert f"run `{program} train --workdir 'my run'` first" in message("no_checkpoint", workdir="my run")
            assert f"(see `{program} info`)" in message("prompt_unknown", chars="'é'")
    finally:
        errors.set_program("python run.py")
    assert not [code for code, text in MESSAGES.items() if "run.py" in text]  # only ever through {program}


# ----------------------------------------------------------------------------- the docs quote the code

def _normalized(text: str) -> str:
    return " ".join(text.replace("`", "").split())


@pytest.mark.parametrize("doc", ["docs/cli.md", "docs/config.md", "docs/robustness.md"])
def test_the_docs_list_the_keys_a_resume_may_change_as_the_code_does(doc):
    assert resumable_keys_text() in _normalized((REPO_ROOT / doc).read_text(encoding="utf-8"))


def test_train_help_and_the_refusal_list_the_keys_a_resume_may_change(capsys):
    from jaxbigram.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert resumable_keys_text() in _normalized(capsys.readouterr().out)
    assert f"only {resumable_keys_text()} may change" in message("config_changed", workdir="w", keys="k",
                                                                 resumable=resumable_keys_text())


_DOC_PLACEHOLDER = re.compile(r"…|\b[A-Z][A-Z_0-9]*\b")  # "…" and WORKDIR, N, PATH, …: anything


def _pattern(pieces) -> tuple:
    """A message as characters and ``None`` (a placeholder that matches any text)."""
    return tuple(c for piece in pieces for c in ([None] if piece is None else piece))


def _template_pattern(template: str) -> tuple:
    filled = template.replace("{program}", "python run.py").replace("{resumable}", resumable_keys_text())
    return _pattern(p for literal, field, _, _ in string.Formatter().parse(filled)
                    for p in ([literal] + ([None] if field is not None else [])))


def _doc_pattern(quote: str) -> tuple:
    quote = quote.replace("\\`", "`")
    pieces, at = [], 0
    for match in _DOC_PLACEHOLDER.finditer(quote):
        pieces += [quote[at:match.start()], None]
        at = match.end()
    return _pattern(pieces + [quote[at:]])


def _literal_ends_agree(a: tuple, b: tuple) -> bool:
    """The characters before the first placeholder of each, and after the last, agree (a quick reject)."""
    for x, y in ((a, b), (a[::-1], b[::-1])):
        x, y = x[:x.index(None)] if None in x else x, y[:y.index(None)] if None in y else y
        if x[:len(y)] != y[:len(x)]:
            return False
    return True


def _compatible(a: tuple, b: tuple) -> bool:
    """Whether some text matches both patterns (placeholders on either side match any text)."""
    if not _literal_ends_agree(a, b):
        return False
    n, m = len(a), len(b)
    ok = [[False] * (m + 2) for _ in range(n + 2)]  # ok[i][j]: a[i:] and b[j:] match some same text
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                ok[i][j] = True
            elif i < n and a[i] is None:
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            elif j < m and b[j] is None:
                ok[i][j] = ok[i][j + 1] or (i < n and ok[i + 1][j])
            else:
                ok[i][j] = i < n and j < m and a[i] == b[j] and ok[i + 1][j + 1]
    return ok[0][0]


def test_every_error_robustness_md_quotes_is_one_the_code_prints():
    doc = (REPO_ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    quotes = re.findall(r"`error: ((?:[^`\\]|\\.)*)`", doc)
    assert len(quotes) > 30
    templates = [_template_pattern(t) for t in MESSAGES.values()]
    unknown = [q for q in quotes if not any(_compatible(t, _doc_pattern(q)) for t in templates)]
    assert not unknown, unknown
    for code in ("temperature", "config_changed", "no_checkpoint", "path_too_long", "xla_flag_value"):
        assert any(_compatible(_template_pattern(MESSAGES[code]), _doc_pattern(q)) for q in quotes), code
