"""English and Traditional Chinese (provision/i18n.py, provision/locale/, tools/catalogs.py).

The catalogs are checked against the source (a text added without ``make catalogs``, a Chinese entry
missing, empty or fuzzy, a .mo older than its .po), user-facing sentences are checked to go through
the catalog (an AST walk of the product, with an honest per-module baseline of what is not converted
yet that may only shrink), and the output is checked: a Chinese report keeps no English label, and
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
    return bool(re.search(r"[A-Za-z]{3}", text.replace("provision:", "")))  # "provision: …" names the program


def _unwrapped_text(node: ast.expr) -> bool:
    """A literal sentence (a string constant with words, or an f-string) not passed through a wrapper."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _has_words(node.value)
    if isinstance(node, ast.JoinedStr):
        return _has_words("".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)))
    if isinstance(node, ast.BinOp):
        return _unwrapped_text(node.left) or _unwrapped_text(node.right)
    return False


def unwrapped_sites(path: Path) -> list[str]:
    """Every literal sentence given to a ProvisionError (or a job file's Problem) or to a say/warn function
    without msg()/_(): the text a person would see in English whatever the language."""
    errors = _error_classes()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
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
        else:
            continue
        if argument is not None and _unwrapped_text(argument):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


# Not converted yet, per module (honest: these sentences still show in English in every language).
# The count may only go down: a new unwrapped sentence fails the test, and so does a module that got
# better without lowering its number here (so the baseline never hides a new one).
BASELINE = json.loads((Path(__file__).parent / "i18n_baseline.json").read_text(encoding="utf-8"))
# Converted modules: every sentence a person sees from them is in the catalog. No baseline allowed.
TRANSLATED = ("errors.py", "report.py", "i18n.py", "steps.py", "ui.py", "counter.py", "runner.py", "plan.py", "cli.py",
              "pinservice.py", "jobfile.py", "csvjobs.py", "bundle.py", "piv/session.py")


def test_user_facing_sentences_go_through_the_catalog() -> None:
    counts: dict[str, int] = {}
    sites: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = unwrapped_sites(path)
        if found:
            key = str(path.relative_to(PACKAGE))
            counts[key] = len(found)
            sites[key] = found
    for module in TRANSLATED:
        assert module not in counts, f"{module} shows sentences that are not in the catalog: {sites[module]}"
    worse = {m: (n, BASELINE.get(m, 0)) for m, n in counts.items() if n > BASELINE.get(m, 0)}
    assert not worse, f"new sentences without msg()/_(): {worse}; sites: {[sites[m] for m in worse]}"
    better = {m: (counts.get(m, 0), n) for m, n in BASELINE.items() if counts.get(m, 0) < n}
    assert not better, f"fewer unwrapped sentences than tests/unit/i18n_baseline.json says; lower it: {better}"


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
                      'def h(say):\n    say("Insert the next card")\n', encoding="utf-8")  # fmt: skip
    try:
        assert [site.rsplit(":", 1)[1] for site in unwrapped_sites(sample)] == ["4", "8"]
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
