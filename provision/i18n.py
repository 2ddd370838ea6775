"""The languages a person sees: English (the source) and Traditional Chinese as used in Hong Kong.

Texts are gettext messages; their catalogs live in ``provision/locale/<lang>/LC_MESSAGES/`` (the
``.po`` files are edited, the ``.mo`` files beside them are compiled from them by ``make catalogs``
and a test keeps the two in step). They are read with the standard library's ``gettext`` through
``importlib.resources``, so a wheel, a zip and the one-file build all work and ``provision --help``
pays for nothing: Babel is needed only to extract and compile (development) and, imported lazily,
to write dates in a report in the language's usual form.

Four ways to mark a text, each found by the extractor (babel.cfg):

``_(text)``
    translated now, in the chosen language: labels, headings, prompts.
``N_(text)``
    only marked: module-level tables (status words), translated where they are shown, ``_(TABLE[k])``.
``ngettext(singular, plural, n)``
    translated now, with the language's plural rule.
``msg(text, **params)``
    a sentence that is *recorded* as well as shown: error messages. It is the English sentence (a
    ``str``, so the journal, the audit log and ``--json`` stay language-neutral) that remembers its
    message id and parameters; ``localize`` shows it in the chosen language. A sentence that has
    already lost them (read back from a journal or a run document) is matched against the catalog's
    message ids, so a report in Chinese still shows a recorded English error in Chinese.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # `provision --help` imports this module (errors.py does): it imports nothing more;
    # re, gettext and Babel load when a text is translated or a date written.
    import gettext as _gettext_module
    import re
    from collections.abc import Mapping
    from datetime import datetime

DOMAIN = "provision"
ENGLISH = "en"
CHINESE = "zh_Hant"
LANGUAGES = (ENGLISH, CHINESE)
# The names a person or a locale may use for each language; anything else is refused (--lang,
# $PROVISION_LANG) or falls back to English (the locale).
_ALIASES = {
    "en": ENGLISH,
    "english": ENGLISH,
    "c": ENGLISH,
    "posix": ENGLISH,
    "zh_hant": CHINESE,
    "zh_hk": CHINESE,
    "zh_tw": CHINESE,
    "zh_mo": CHINESE,
    "zh_hant_hk": CHINESE,
    "zh_hant_tw": CHINESE,
    "zh_hant_mo": CHINESE,
    "zh": CHINESE,  # a Chinese locale with no region, on a counter in Hong Kong
}
# Babel's locale for dates in each language.
_BABEL_LOCALE = {ENGLISH: "en_GB", CHINESE: "zh_Hant_HK"}


def normalize(name: str | None) -> str | None:
    """``zh-HK``, ``zh_HK.UTF-8``, ``zh_Hant`` → ``zh_Hant``; ``en_US`` → ``en``; unknown → None."""
    if not name:
        return None
    base = name.split(".", 1)[0].split("@", 1)[0].replace("-", "_").strip().lower()
    if base in _ALIASES:
        return _ALIASES[base]
    if base.startswith("en_"):
        return ENGLISH
    if base.startswith("zh_hant"):
        return CHINESE
    return None


def choose(option: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The language of this command: ``--lang``, then ``$PROVISION_LANG``, then the locale
    (``LC_ALL``, ``LC_MESSAGES``, ``LANG``, the first one set), then English.

    An explicit choice that names no language we have is a usage error (exit 2): a clerk who asked
    for Chinese must not silently get English. A locale we lack falls back to English."""
    env = os.environ if environ is None else environ
    for given, where in ((option, "--lang"), (env.get("PROVISION_LANG"), "PROVISION_LANG")):
        if given:
            language = normalize(given)
            if language is None:  # the CLI turns it into a usage error (exit 2); errors.py imports this module
                raise ValueError(msg("{where} names no language provision has ({given!r}); use one of: {choices}",
                                     where=where, given=given, choices=", ".join(LANGUAGES)))  # fmt: skip
            return language
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(variable)
        if value:
            return normalize(value) or ENGLISH
    return ENGLISH


# ----------------------------------------------------------------------------------------------
# the chosen language

_language = ENGLISH
_translations: _gettext_module.NullTranslations | None = None


_CATALOGS: dict[str, _gettext_module.NullTranslations] = {}


def _catalog(language: str) -> _gettext_module.NullTranslations:
    if language not in _CATALOGS:
        _CATALOGS[language] = _read_catalog(language)
    return _CATALOGS[language]


def _read_catalog(language: str) -> _gettext_module.NullTranslations:
    import gettext

    if language == ENGLISH:
        return gettext.NullTranslations()
    # Through the package's loader (a directory, a zip, the one-file build alike): pkgutil.get_data
    # costs a dozen small imports where importlib.resources costs ~40 (tempfile, zipfile, ...), paid
    # at every start of `provision --help` in Chinese.
    import io
    import pkgutil

    data = pkgutil.get_data("provision", f"locale/{language}/LC_MESSAGES/{DOMAIN}.mo")
    if data is None:  # a loader that cannot read data files: none of those provision is shipped with
        raise FileNotFoundError(f"the {language} catalog is not readable from this package")
    return gettext.GNUTranslations(io.BytesIO(data))


def set_language(language: str) -> None:
    """Every text from now on is in ``language`` (one of ``LANGUAGES``)."""
    global _language, _translations
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}")
    _language = language
    _translations = None if language == ENGLISH else _catalog(language)


def current_language() -> str:
    return _language


def gettext(text: str) -> str:
    """``text`` in the chosen language. Modules import it as ``_`` (``from provision.i18n import
    gettext as _``), the name the extractor and every translator know."""
    return text if _translations is None else _translations.gettext(text)


_ = gettext


def N_(text: str) -> str:  # noqa: N802 - the conventional name of a gettext no-op marker
    return text


def ngettext(singular: str, plural: str, n: int) -> str:
    if _translations is None:
        return singular if n == 1 else plural
    return _translations.ngettext(singular, plural, n)


class Msg(str):
    """An English sentence that remembers its message id and parameters (see the module's doc)."""

    __slots__ = ("msgid", "params")
    msgid: str
    params: dict[str, object]

    def __new__(cls, msgid: str, params: dict[str, object]) -> Msg:
        self = super().__new__(cls, msgid.format(**params))  # always: "{{" in an id is a literal brace
        self.msgid = msgid
        self.params = params
        return self


def msg(text: str, **params: object) -> Msg:
    return Msg(text, params)


def localize(sentence: str) -> str:
    """``sentence`` in the chosen language: a ``Msg`` through its own id; a plain English sentence
    through the catalog (exactly, or as an instance of a message id with parameters); else as it is."""
    if _translations is None or not sentence:
        return sentence
    if isinstance(sentence, Msg):
        # A parameter that is itself a recorded sentence (an error inside "{reader}: {error}") too.
        params = {k: localize(v) if isinstance(v, Msg) else v for k, v in sentence.params.items()}
        return _(sentence.msgid).format(**params)
    return _recognise(sentence, depth=2)


def _recognise(sentence: str, depth: int) -> str:
    """A recorded English sentence through the catalog; its parts too ("wait for {card} of {holder}"
    with "card serial 123" inside), ``depth`` levels down."""
    translated = _(sentence)
    if translated != sentence or depth == 0:
        return translated
    for pattern, msgid in _patterns(_language):
        match = pattern.fullmatch(sentence)
        if match:  # the groups are already text as recorded: a field's !r is not applied again
            values = {name: _recognise(value, depth - 1) for name, value in match.groupdict().items()}
            return _field().sub(lambda f: "{" + f.group(1) + "}", _(msgid)).format(**values)
    return sentence


def _field() -> re.Pattern[str]:
    import re  # re caches compiled patterns itself

    return re.compile(r"\{(\w+)(![rs])?\}")


_PATTERNS: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {}


def _patterns(language: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    if language not in _PATTERNS:
        _PATTERNS[language] = _make_patterns(language)
    return _PATTERNS[language]


def _make_patterns(language: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """A regular expression per message id with ``{name}`` fields, to recognise recorded sentences.
    Only ids whose fields are plain names (``{x}``, ``{x!r}``) qualify; longer ids are tried first."""
    import re

    catalog = _catalog(language)
    ids = [m for m in getattr(catalog, "_catalog", {}) if isinstance(m, str) and "{" in m]
    result = []
    for msgid in sorted(ids, key=len, reverse=True):
        pieces, end, seen = [], 0, set()
        for field in _field().finditer(msgid):
            pieces.append(re.escape(msgid[end : field.start()]))
            name = field.group(1)
            pieces.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
            end = field.end()
        pieces.append(re.escape(msgid[end:]))
        if len(_field().sub("", msgid)) < 12:
            continue  # "{n} s" would claim any sentence ending in " s"
        if "{" in "".join(pieces).replace("\\{", ""):
            continue
        try:
            result.append((re.compile("".join(pieces), re.DOTALL), msgid))
        except re.error:
            continue
    return tuple(result)


def format_datetime(moment: datetime, zone: str | None = None) -> str:
    """A date and time as a person in the chosen language writes it, in ``zone`` (the job's time
    zone; else the moment's own). Babel is imported here only: reports need it, ``--help`` does not."""
    from babel.dates import format_datetime as babel_format

    tzinfo = None
    if zone:
        from zoneinfo import ZoneInfo

        tzinfo = ZoneInfo(zone)
    return str(babel_format(moment, format="medium", tzinfo=tzinfo or moment.tzinfo, locale=_BABEL_LOCALE[_language]))
