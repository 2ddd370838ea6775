"""English and Traditional Chinese (provision/i18n.py, provision/locale/, tools/catalogs.py).

The catalogs are checked against the source (a text added without ``make catalogs``, a Chinese entry
missing, empty or fuzzy, a .mo older than its .po), user-facing sentences are checked to go through
the catalog (an AST walk of the whole product that demands none is left unwrapped), and the output is checked: a Chinese report keeps no English label, and
machine output stays the same in every language.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision import i18n
from provision.report import CSV_COLUMNS, render_csv, render_html
from tests.unit.test_report import run_document

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "provision"


def _catalogs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("catalogs", ROOT / "tools" / "catalogs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def chinese() -> Iterator[None]:
    i18n.set_language(i18n.CHINESE)
    try:
        yield
    finally:
        i18n.set_language(i18n.ENGLISH)


# ----------------------------------------------------------------------------------------------
# the catalogs


def test_catalogs_are_complete_and_in_step_with_the_source() -> None:
    """Re-extracts the texts and compares: .pot stale, zh_Hant entry missing/empty/fuzzy, a field
    the program does not give, or a .mo that lags behind its .po all fail here."""
    assert _catalogs().problems() == []


def test_the_check_fails_on_an_untranslated_or_fuzzy_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalogs = _catalogs()
    po = catalogs.po_path("zh_Hant").read_text(encoding="utf-8")
    broken = tmp_path / "zh_Hant" / "LC_MESSAGES" / "provision.po"
    broken.parent.mkdir(parents=True)
    # One entry emptied, one made fuzzy, one given a field the program never passes.
    po = po.replace('msgstr "已載入"', 'msgstr ""', 1)
    po = po.replace('msgid "Failed"', '#, fuzzy\nmsgid "Failed"', 1)
    po = po.replace('msgstr "合共：{n}"', 'msgstr "合共：{count}"', 1)
    broken.write_text(po, encoding="utf-8")
    (broken.with_suffix(".mo")).write_bytes(catalogs.po_path("zh_Hant").with_suffix(".mo").read_bytes())
    monkeypatch.setattr(catalogs, "po_path", lambda language: broken)
    found = "\n".join(catalogs.problems())
    assert "'Loaded' is untranslated" in found
    assert "'Failed' is fuzzy" in found
    assert "'Total: {n}'" in found and "['count']" in found
    assert "does not match" in found  # the copied .mo no longer matches the changed .po


def test_the_check_fails_on_a_text_missing_from_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    catalogs = _catalogs()
    real_extract = catalogs.extract

    def extract_with_a_new_text():  # type: ignore[no-untyped-def]
        catalog = real_extract()
        catalog.add("a sentence added to the source without make catalogs", locations=[("provision/x.py", 1)])
        return catalog

    monkeypatch.setattr(catalogs, "extract", extract_with_a_new_text)
    found = catalogs.problems()
    assert any("provision.pot lacks 'a sentence added" in line for line in found)
    assert any("zh_Hant: no entry for 'a sentence added" in line for line in found)


# ----------------------------------------------------------------------------------------------
# user-facing strings go through the catalog


def _error_classes() -> set[str]:
    tree = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    names = {"ProvisionError"}
    grew = True
    while grew:
        grew = False
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name not in names:
                if any(isinstance(b, ast.Name) and b.id in names for b in node.bases):
                    names.add(node.name)
                    grew = True
    return names


_WRAPPERS = {"msg", "_", "ngettext", "N_", "gettext"}
# UI calls whose first argument a person reads: the runner's UI, the CLI's and the counter's printers.
_SAY = {"say", "_say", "_warn", "to_stderr", "_notice", "_line"}


def _has_words(text: str) -> bool:
    return bool(re.search(r"[A-Za-z]{3}", re.sub(r"\bprovision\b:?", "", text)))  # "provision: …" names the program


def _unwrapped_text(node: ast.expr) -> bool:
    """A literal sentence (a string constant with words, or an f-string) not passed through a wrapper."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _has_words(node.value)
    if isinstance(node, ast.JoinedStr):
        return _has_words("".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)))
    if isinstance(node, ast.BinOp):
        return _unwrapped_text(node.left) or _unwrapped_text(node.right)
    if isinstance(node, ast.IfExp):
        return _unwrapped_text(node.body) or _unwrapped_text(node.orelse)
    return False


# Calls whose argument at this index is a sentence (or a fragment of one) a person reads: the audit
# verifier's failures, the PKCS#11 and PC/SC wrappers' "what we were doing" and the CLI's printers.
_SENTENCE_ARGUMENT = {"_Failure": 3, "p11_errors": 0, "error_for": 1, "_check": 1, "out": 0, "warn": 0}


def _sentence_arguments(node: ast.Call, errors: set[str]) -> list[ast.expr]:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    found: list[ast.expr] = [k.value for k in node.keywords if k.arg == "message"]
    if name in errors:
        argument = node.args[1] if name == "BundleError" and len(node.args) > 1 else (node.args[0] if node.args else None)
    elif name in ("Problem", "_problem") and len(node.args) >= 4:
        argument = node.args[3]
    elif name == "_YamlProblem" and len(node.args) >= 3:
        argument = node.args[2]
    elif name == "problem" and len(node.args) >= 2:  # a job file's checker: problem(where, message)
        argument = node.args[-1]
    elif name in _SAY and node.args:
        argument = node.args[0]
    elif name in _SENTENCE_ARGUMENT and len(node.args) > _SENTENCE_ARGUMENT[name]:
        argument = node.args[_SENTENCE_ARGUMENT[name]]
    else:
        argument = None
    return found + ([argument] if argument is not None else [])


def unwrapped_sites(path: Path) -> list[str]:
    """Every literal sentence given to a ProvisionError (or a job file's Problem), to a say/warn/out
    function, an audit failure or a ``message=`` without msg()/_(): the text a person would see in
    English whatever the language."""
    errors = _error_classes()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if any(_unwrapped_text(argument) for argument in _sentence_arguments(node, errors)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_user_facing_sentences_go_through_the_catalog() -> None:
    """No baseline: every module of the product, the simulator included, shows its sentences through
    the catalog. A literal sentence given to an error, a problem, a printer or an audit failure fails here."""
    sites = [site for path in sorted(PACKAGE.rglob("*.py")) for site in unwrapped_sites(path)]
    assert sites == [], f"sentences without msg()/_(): {sites}"


def test_no_translation_call_hides_inside_an_f_string() -> None:
    """Babel's extractor does not look inside f-strings: a _() there never reaches the catalog, and the
    text stays English in every language while every catalog check passes."""
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FormattedValue):
                for inner in ast.walk(node.value):
                    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id in _WRAPPERS:
                        hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert hidden == []


def test_the_walk_finds_an_unwrapped_sentence(tmp_path: Path) -> None:
    sample = ROOT / "provision" / "_i18n_probe_tmp.py"  # inside the package, so relative paths work
    sample.write_text('from provision.errors import CardError, UsageError\nfrom provision.i18n import msg\n'
                      'def f(x):\n    raise CardError(f"the card {x} said no")\n'
                      'def g():\n    raise UsageError(msg("wrapped"))\n'
                      'def h(say):\n    say("Insert the next card")\n'
                      'def k(_Failure, Result, p, ok):\n    raise _Failure("deleted", p, 1, f"{p}: a record was deleted")\n'
                      '    return Result(message="intact" if ok else "the log was cut")\n', encoding="utf-8")  # fmt: skip
    try:
        assert [site.rsplit(":", 1)[1] for site in unwrapped_sites(sample)] == ["4", "8", "10", "11"]
    finally:
        sample.unlink()


# ----------------------------------------------------------------------------------------------
# choosing the language


@pytest.mark.parametrize(
    ("option", "environ", "expected"),
    [
        (None, {}, "en"),
        ("zh_Hant", {}, "zh_Hant"),
        ("zh-HK", {"PROVISION_LANG": "en"}, "zh_Hant"),
        (None, {"PROVISION_LANG": "zh_TW", "LANG": "en_GB.UTF-8"}, "zh_Hant"),
        ("en", {"PROVISION_LANG": "zh_Hant"}, "en"),
        (None, {"LC_ALL": "zh_HK.UTF-8", "LANG": "en_US.UTF-8"}, "zh_Hant"),
        (None, {"LC_MESSAGES": "zh_Hant_HK", "LANG": "en_US.UTF-8"}, "zh_Hant"),
        (None, {"LANG": "zh_HK.UTF-8"}, "zh_Hant"),
        (None, {"LANG": "C.UTF-8"}, "en"),
        (None, {"LANG": "fr_FR.UTF-8"}, "en"),  # a locale we lack falls back to English
    ],
)
def test_language_choice_order(option: str | None, environ: dict[str, str], expected: str) -> None:
    assert i18n.choose(option, environ) == expected


def test_an_explicit_language_we_lack_is_refused() -> None:
    with pytest.raises(ValueError, match="--lang names no language"):
        i18n.choose("fr", {})
    with pytest.raises(ValueError, match="PROVISION_LANG names no language"):
        i18n.choose(None, {"PROVISION_LANG": "klingon"})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_ALL", "LC_MESSAGES", "PROVISION_LANG")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "provision", *args], capture_output=True, text=True, env=environ,
                          cwd=ROOT, timeout=60, check=False)  # fmt: skip


def test_cli_errors_in_chinese_and_json_unchanged(tmp_path: Path) -> None:
    english = _cli("validate", "--json", "/nonexistent.yaml")
    chinese = _cli("validate", "--json", "/nonexistent.yaml", env={"PROVISION_LANG": "zh_Hant"})
    assert english.returncode == chinese.returncode == 2
    assert english.stdout == chinese.stdout  # machine output is language-neutral
    refused = _cli("--lang", "fr", "report", "--last", "--logs", str(tmp_path))
    assert refused.returncode == 2 and "--lang names no language" in refused.stderr
    shown = _cli("report", "--last", "--logs", str(tmp_path), env={"LANG": "zh_HK.UTF-8"})
    assert shown.returncode == 2 and "尚未有任何執行的報告" in shown.stderr, shown.stderr
    assert "Traceback" not in shown.stderr


def test_plan_without_pc_sc_says_why_in_chinese_and_its_json_stays_english(tmp_path: Path) -> None:
    """`plan` on a machine with no PC/SC service: the reason no card was read is one Chinese line
    for a person and the English sentence in --json."""
    from provision import fixtures

    ca = fixtures.make_ca("Plan CA")
    (tmp_path / "a.p12").write_bytes(fixtures.holder_p12(ca, "CHAN Tai Man", "pw", key_type="p256"))
    (tmp_path / "pw").write_text("pw")
    (tmp_path / "pin").write_text("123456")
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nbatch: b\ndefaults: {slot: 9c, slot_name: e-Cert, pin: {file: pin}}\ncards:\n"
        "  - {id: A, holder: CHAN Tai Man, card: {serial: 1}, pkcs12: {path: a.p12, password: {file: pw}}}\n"
    )
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "pin").chmod(0o600)
    env = {"PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    shown = _cli("plan", str(job), env={**env, "PROVISION_LANG": "zh_Hant"})
    assert shown.returncode == 0, shown.stderr
    assert "沒有讀取任何卡：" in shown.stdout and "no card was read" not in shown.stdout, shown.stdout
    document = json.loads(_cli("plan", str(job), "--json", env={**env, "PROVISION_LANG": "zh_Hant"}).stdout)
    assert document["cards"]["unavailable"].startswith("no card was read: "), document["cards"]


# ----------------------------------------------------------------------------------------------
# recorded sentences and what a person sees


def test_a_recorded_sentence_stays_english_and_is_shown_in_chinese(chinese: None) -> None:
    from provision.errors import OperatorDeclined

    error = OperatorDeclined(i18n.msg("the operator did not confirm the certificate of {holder}; nothing was written",
                                      holder="陳大文"))  # fmt: skip
    assert error.message == "the operator did not confirm the certificate of 陳大文; nothing was written"
    assert json.loads(json.dumps({"error": error.message}))["error"] == error.message
    assert error.localized() == "操作員沒有確認 陳大文 的證書；沒有寫入任何資料"
    # The same sentence read back from a journal (a plain str) is recognised through the catalog.
    assert i18n.localize(str(error.message)) == error.localized()
    # A sentence the catalog does not know is shown as recorded, never garbled.
    assert i18n.localize("a card said 6A82") == "a card said 6A82"


def test_a_recorded_sentence_with_a_formatted_field_is_shown_in_chinese(chinese: None) -> None:
    """A field with a format spec ({sw:04X}) is recorded formatted; read back from a journal or a
    run document it is still recognised (found on PivApplet: the touch-policy refusal stayed
    English in the Chinese run summary and report)."""
    recorded = str(i18n.msg("this card does not take touch policy '{policy}' (IMPORT KEY answered {sw:04X}); the key "
                            "was not imported. Use touch_policy: never or default for it", policy="always", sw=0x6A81))  # fmt: skip
    assert recorded.startswith("this card does not take touch policy 'always' (IMPORT KEY answered 6A81)")
    assert i18n.localize(recorded) == ("此卡不接受觸碰政策 'always'（IMPORT KEY 回覆 6A81）；私人密碼匙沒有匯入。"
                                       "請為此卡使用 touch_policy: never 或 default")  # fmt: skip


# English words a Chinese page may keep: protocol names, units, the product's own commands.
_KEPT = {"SHA", "PIN", "PUK", "APDU", "APDUs", "PIV", "CSV", "HTML", "provision", "audit", "verify", "resume",
         "PKCS", "OperatorDeclined"}  # fmt: skip


def _visible_words(page: str, doc: dict) -> set[str]:  # type: ignore[type-arg]
    body = page.split("<body>", 1)[1]
    text = re.sub(r"<[^>]+>", " ", body)
    import html as html_module

    text = html_module.unescape(text)
    for value in sorted(set(_values(doc)), key=len, reverse=True):  # a path before the serial inside it
        text = text.replace(value, " ")
    return set(re.findall(r"[A-Za-z]{3,}", text)) - _KEPT


def _values(doc: object) -> Iterator[str]:
    """Every value of the run document (data is shown as recorded, in whatever script it has)."""
    if isinstance(doc, dict):
        for value in doc.values():
            yield from _values(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _values(value)
    elif doc is not None:
        yield str(doc)
        if isinstance(doc, str) and len(doc) > 20:
            yield doc[:16]


def test_the_chinese_report_keeps_no_english_label(chinese: None) -> None:
    doc = run_document()
    doc["timezone"] = "Asia/Hong_Kong"
    # Errors are recorded English sentences: a product sentence (here one the loader raises) is shown
    # in Chinese through the catalog; the fixture's made-up sentences would stay English.
    declined = "the operator did not confirm the certificate of 陳大文; nothing was written"
    for job in doc["jobs"]:
        if job.get("error"):
            job["error"] = {"class": "OperatorDeclined", "message": declined}
    page = render_html(doc)
    assert '<html lang="zh-Hant-HK">' in page
    assert "操作員沒有確認 陳大文 的證書；沒有寫入任何資料 (OperatorDeclined)" in page
    for words in ("智能卡證書載入報告", "持證人", "已載入", "審計封印", "PIN 碼尚餘嘗試次數", "時區"):
        assert words in page
    # 2025-11-25T02:00:00Z in Hong Kong is 10:00 the same morning, written the Hong Kong way.
    assert "2025年11月25日 上午10:00:00" in page, re.findall(r"<time[^>]*>[^<]*</time>", page)
    leftover = _visible_words(page, doc)
    assert not leftover, f"English left in the Chinese report: {sorted(leftover)}"


def test_report_dates_follow_the_jobs_time_zone_in_english() -> None:
    doc = run_document()
    doc["timezone"] = "Asia/Hong_Kong"
    page = render_html(doc)
    assert '<time datetime="2025-11-25T02:00:00Z">25 Nov 2025, 10:00:00</time>' in page


def test_csv_header_translated_and_cells_language_neutral(chinese: None) -> None:
    doc = run_document()
    rows = list(csv.reader(io.StringIO(render_csv(doc))))
    assert rows[0][:4] == ["工作", "持證人", "狀態", "卡序號"] and len(rows[0]) == len(CSV_COLUMNS)
    statuses = {row[CSV_COLUMNS.index("status")] for row in rows[1:]}
    assert statuses <= {"loaded", "skipped", "failed", "refused", "pending", "in-doubt"}
    i18n.set_language(i18n.ENGLISH)
    english = list(csv.reader(io.StringIO(render_csv(doc))))
    assert english[0] == list(CSV_COLUMNS) and english[1:] == rows[1:]


# ----------------------------------------------------------------------------------------------
# help, the audit commands, low-level and schema sentences in Chinese; machine output unchanged


def test_help_and_argparse_words_in_the_chosen_language() -> None:
    english = _cli("--help")
    assert english.returncode == 0 and english.stdout.startswith("usage: provision") and "commands:" in english.stdout
    chinese = _cli("--lang", "zh_Hant", "--help")
    assert chinese.returncode == 0 and chinese.stdout.startswith("用法：provision"), chinese.stdout[:200]
    assert "指令：" in chinese.stdout and "檢查工作檔；不寫入任何資料" in chinese.stdout
    sub = _cli("run", "--help", env={"PROVISION_LANG": "zh_Hant"})  # argparse's own help, built after the pre-scan
    assert sub.returncode == 0 and sub.stdout.startswith("用法：provision run"), sub.stdout[:200]
    for words in ("位置參數", "選項", "顯示此說明後結束", "只使用名稱包含 NAME 的讀卡器"):
        assert words in sub.stdout, words
    assert "positional arguments" not in sub.stdout and "show this help" not in sub.stdout
    assert "positional arguments" in _cli("run", "--help").stdout  # English stays English
    refused = _cli("run", "--lang=zh_Hant")  # an argparse usage error, in Chinese, still exit 2
    assert refused.returncode == 2 and "錯誤：必須提供以下參數：JOBFILE" in refused.stderr, refused.stderr


def _every_command() -> list[list[str]]:
    """Every command and subcommand, as argv words, from the parser itself."""
    import argparse

    from provision.cli import build_parser

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse lists subparsers nowhere else
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    found.append([*words, name])
                    walk(sub, [*words, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("columns", [60, 100])
def test_chinese_help_keeps_to_the_terminal_width_as_english_does(columns: int) -> None:
    """argparse wrapped by characters, so a Chinese help line took up to twice the terminal's
    width. Now every line of every command's Chinese help fits wherever the English one does (a
    usage group too long to break, like ``[--key-env NAME | --key-file PATH]``, overflows in both)."""
    from provision.display import cell_width

    commands = _every_command()
    assert len(commands) > 15 and ["audit", "verify"] in commands
    for words in commands:
        widths = {}
        for language in ("en", "zh_Hant"):
            done = _cli("--lang", language, *words, "--help", env={"COLUMNS": str(columns)})
            assert done.returncode == 0, (words, done.stderr)
            widths[language] = max(cell_width(line) for line in done.stdout.splitlines())
        assert widths["zh_Hant"] <= max(columns - 2, widths["en"]), (words, widths)


def test_wrap_cells_breaks_chinese_by_cells_and_keeps_marks_with_their_words() -> None:
    from provision.display import cell_width, wrap_cells

    text = "每張卡的工作完成後，報告（HTML、CSV 及 JSON）會寫入 logs/reports；「provision resume」會完成未完成的工作。"
    for width in range(16, 80):
        lines = wrap_cells(text, width)
        assert all(cell_width(line) <= width for line in lines), (width, lines)
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost, nothing added
        for line in lines[1:]:
            assert line[0] not in "，。、；）」", (width, lines)  # no line starts with a closing mark
        for line in lines[:-1]:
            assert line[-1] not in "（「", (width, lines)  # none ends with an opening one
    assert wrap_cells("provision resume finishes it", 12) == ["provision", "resume", "finishes it"]
    assert wrap_cells("一二三四五", 4) == ["一二", "三四", "五"]


def test_audit_verify_in_chinese_and_its_json_language_neutral(tmp_path: Path) -> None:
    from provision.cli_audit import cmd_audit_verify
    from tests.unit.test_audit import write_batch

    lines, seal = write_batch(tmp_path / "audit.jsonl")
    index = next(i for i, raw in enumerate(lines) if b"HK-0001" in raw)
    (tmp_path / "audit.jsonl").write_bytes(b"".join(lines[:index] + [lines[index].replace(b"HK-0001", b"HK-0009")]
                                                    + lines[index + 1 :]))  # fmt: skip
    documents = {}
    for language in i18n.LANGUAGES:
        i18n.set_language(language)
        try:
            text: list[str] = []
            machine: list[str] = []
            assert cmd_audit_verify(tmp_path, None, [seal], False, text.append) == 4
            assert cmd_audit_verify(tmp_path, None, [seal], True, machine.append) == 4
        finally:
            i18n.set_language(i18n.ENGLISH)
        documents[language] = (text, machine)
    assert documents["en"][1] == documents["zh_Hant"][1]  # --json: the same English document
    assert "FAILED verification" in documents["en"][1][0] or "modified" in documents["en"][1][0]
    shown = "\n".join(documents["zh_Hant"][0])
    assert shown.startswith("審計記錄核對失敗") and "記錄已被修改（雜湊值與內容不符）" in shown, shown
    # The problem's name (modified) is a status name, like "loaded": the same word in every language.
    assert "（modified）" in shown and not re.search(r"\b(record|verification|changed)\b", shown), shown


def test_low_level_card_and_token_sentences_are_shown_in_chinese(chinese: None) -> None:
    from provision.card.apdu import describe_sw
    from provision.card.transport import error_for
    from provision.errors import CardProtocolError
    from provision.piv import tlv

    with pytest.raises(CardProtocolError) as caught:
        tlv.parse_dict(b"\x53\x05\x01")
    assert caught.value.message.startswith("truncated TLV")  # recorded in English
    assert caught.value.localized().startswith("TLV 不完整"), caught.value.localized()
    error = error_for(0x80100069, i18n.msg("sending a command to the card"), "Virtual PCD 00 00")
    assert "removed or stopped answering" in error.message
    assert error.localized().startswith("向卡發送指令：卡（讀卡器 'Virtual PCD 00 00'）已被取出"), error.localized()
    assert i18n.localize(describe_sw(0x63C1)) == "核對失敗，尚餘嘗試次數：1"


def test_schema_problems_are_our_sentences_in_both_languages(tmp_path: Path) -> None:
    from provision.errors import JobFileError
    from provision.jobfile import parse_jobfile

    text = ("version: 1\nbatch: b\ntimezone: UTC\ncolour: red\ncards:\n  - id: x\n    holder: 陳大文\n"
            "    card: {serial: 1}\n    slot: 9c\n    pkcs12: {file: a.p12, password: {env: P}}\n    pin: 1234\n")  # fmt: skip
    with pytest.raises(JobFileError) as caught:
        parse_jobfile(text, tmp_path / "job.yaml", check_files=False)
    problems = caught.value.problems
    english = [p.localized() for p in problems]
    assert any("job.yaml:4" in line and "unknown field 'colour'" in line for line in english), english
    i18n.set_language(i18n.CHINESE)
    try:
        chinese = [p.localized() for p in problems]
    finally:
        i18n.set_language(i18n.ENGLISH)
    assert any("job.yaml:4" in line and "未知欄位 'colour'" in line for line in chinese), chinese
    assert any("job.yaml:11" in line and "不是機密來源" in line for line in chinese), chinese
    assert [p.to_json() for p in problems] == [p.to_json() for p in problems]  # recorded text stays English
    assert all("unknown field" in p.message or "secret source" in p.message or p.message for p in problems)


def test_queue_and_pkcs11_sentences_recorded_in_english_shown_in_chinese(tmp_path: Path) -> None:
    from provision.errors import QueueError
    from provision.p11 import pins
    from provision.queue import open_queue

    with pytest.raises(QueueError) as caught:
        open_queue("mysql://user:secret@db/x", logs=tmp_path)
    assert caught.value.message == "--queue mysql:…: give sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    refused, left = pins.refusal_after_login("PinInvalid", pins.PinFlags(count_low=False, final_try=False, locked=False), "/usr/lib/softhsm/libsofthsm2.so")
    assert refused.startswith("the token refused the PIN (CKR_PIN_INVALID)") and left is None
    i18n.set_language(i18n.CHINESE)
    try:
        assert caught.value.localized() == "--queue mysql:…：請提供 sqlite:///PATH 或 postgresql://USER@HOST:PORT/DB"
        assert i18n.localize(refused).startswith("權杖拒絕了 PIN 碼（CKR_PIN_INVALID）")
        # read back from a journal as a plain str, it is still recognised
        assert i18n.localize(str(refused)).startswith("權杖拒絕了 PIN 碼（CKR_PIN_INVALID）")
    finally:
        i18n.set_language(i18n.ENGLISH)
    assert "secret" not in caught.value.message and "secret" not in caught.value.localized()
