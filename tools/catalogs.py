"""Extract, update, compile and check the gettext catalogs of provision (``make catalogs``).

English is the source language: the message ids are the English texts, and the template
``provision/locale/provision.pot`` lists them. Each other language has
``provision/locale/<lang>/LC_MESSAGES/provision.po`` (edited by people) and the ``.mo`` compiled from
it beside it (committed, so the wheel, the sdist and the one-file build carry it with no build step;
``check`` and tests/unit/test_i18n.py fail when it lags behind its ``.po``).

    python tools/catalogs.py            # extract → update → compile
    python tools/catalogs.py check      # exit 1 with the reasons when anything is stale or missing
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "provision"
LOCALE = PACKAGE / "locale"
TEMPLATE = LOCALE / "provision.pot"
LANGUAGES = ("zh_Hant",)
# _ translate now, N_ mark a table entry, ngettext plural forms, msg a recorded sentence (i18n.py).
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2), "msg": None}
METHOD_MAP = [("**.py", "python")]


def po_path(language: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / "provision.po"


def extract() -> Catalog:
    catalog = Catalog(project="provision", domain="provision", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
        str(PACKAGE), METHOD_MAP, keywords=KEYWORDS, comment_tags=("TRANSLATORS:",), strip_comment_tags=True
    ):
        catalog.add(message, None, [(f"provision/{filename}", lineno)], auto_comments=comments, context=context)
    return catalog


def _po_bytes(catalog: Catalog) -> bytes:
    buffer = io.BytesIO()
    # No line numbers: a template that changes with every edit above a text is noise in review.
    write_po(buffer, catalog, width=110, include_lineno=False, omit_header=False, sort_output=True)
    return buffer.getvalue()


def read(path: Path, language: str | None = None) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale=language)


def ids(catalog: Catalog) -> set[object]:
    return {m.id for m in catalog if m.id}


def update() -> None:
    template = extract()
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_bytes(_po_bytes(template))
    for language in LANGUAGES:
        path = po_path(language)
        if path.exists():
            catalog = read(path, language)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=language, domain="provision", project="provision")
        catalog.update(template, update_header_comment=False, no_fuzzy_matching=True)
        catalog.fuzzy = False  # the header (Plural-Forms) must reach the .mo
        catalog.obsolete.clear()  # a text gone from the source is gone from the catalog
        path.write_bytes(_po_bytes(catalog))


def compile_all() -> None:
    for language in LANGUAGES:
        catalog = read(po_path(language), language)
        buffer = io.BytesIO()
        write_mo(buffer, catalog, use_fuzzy=False)
        po_path(language).with_suffix(".mo").write_bytes(buffer.getvalue())


def problems() -> list[str]:
    """Everything that makes the catalogs disagree with the source or with each other."""
    import gettext

    found: list[str] = []
    source = ids(extract())
    template = ids(read(TEMPLATE))
    for text in sorted(map(str, source - template)):
        found.append(f"provision.pot lacks {text!r} (run make catalogs)")
    for text in sorted(map(str, template - source)):
        found.append(f"provision.pot still has {text!r}, gone from the source (run make catalogs)")
    for language in LANGUAGES:
        catalog = read(po_path(language), language)
        for text in sorted(map(str, source - ids(catalog))):
            found.append(f"{language}: no entry for {text!r}")
        for message in catalog:
            if not message.id:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            if message.fuzzy or not all(strings):
                found.append(f"{language}: {message.id!r} is {'fuzzy' if message.fuzzy else 'untranslated'}")
            elif message.python_format or "{" in str(message.id):
                # A translation may leave out a field that only inflects English ("tr{ies}"), never
                # bring one the program does not give.
                wanted = set(_fields(message.id)) | (set(_fields(message.id[1])) if isinstance(message.id, tuple | list) else set())
                for string in strings:
                    if not set(_fields(string)) <= wanted:
                        found.append(f"{language}: {message.id!r}: the translation has fields {_fields(string)}, not {sorted(wanted)}")
        mo = po_path(language).with_suffix(".mo")
        if not mo.exists():
            found.append(f"{language}: {mo.name} is missing (run make catalogs)")
            continue
        with mo.open("rb") as handle:
            compiled = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
        wanted_mo: dict[object, str] = {}
        for message in catalog:
            if not message.id or message.fuzzy:
                continue
            if isinstance(message.id, tuple | list):
                for index, string in enumerate(message.string):
                    wanted_mo[(message.id[0], index)] = string
            else:
                wanted_mo[message.id] = message.string
        have = {k: v for k, v in compiled.items() if k != ""}
        if have != wanted_mo:
            found.append(f"{language}: {mo.name} does not match {po_path(language).name} (run make catalogs)")
    return found


def _fields(text: object) -> list[str]:
    import re

    names = re.findall(r"\{(\w*)[^{}]*\}", str(text))
    return sorted(names)


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        found = problems()
        for line in found:
            print(line)
        return 1 if found else 0
    update()
    compile_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
