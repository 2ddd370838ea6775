"""Each card backend's checklist, declared once.

``provision plan`` prints these steps (with the job's specifics); the loaders journal exactly these
actions (``load.journal_step`` refuses an action its backend did not declare), so a plan can never
describe a different load. Each step says when it applies, so that a plan that has read the card can
say which steps that card still needs: a fresh card, a card whose slot is replaced, a card that
already carries the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from provision.i18n import N_
from provision.secrets import SecretSource

if TYPE_CHECKING:
    from provision.jobfile import Job

# When a step applies, judged against what the card holds (``CardState``):
# always; replacing (the slot holds another certificate); writing (anything to write);
# key_missing, cert_missing, name_missing, key_history (a retired slot not yet counted);
# adopting (the certificate and key are on the token under another label); pem, nssdb (exports);
# rotating (the job has management_key_rotate); so_writes (a token job with so_pin that writes).
When = Literal["always", "replacing", "writing", "key_missing", "cert_missing", "name_missing", "key_history",
               "adopting", "pem", "nssdb", "rotating", "so_writes", "runner"]  # fmt: skip


@dataclass(frozen=True)
class StepSpec:
    action: str  # the journal's action; "{replace}" stands for the job's replace mode
    words: str  # what an operator reads; formatted with ``step_words``
    when: When = "always"
    aliases: tuple[str, ...] = ()  # other journal actions of the same step (an archive proven again)

    @property
    def journaled(self) -> bool:
        """False for the runner's steps before the loader (waiting for and identifying the card)."""
        return self.when != "runner"

    def action_for(self, job: Job) -> str:
        return self.action.format(replace=job.replace)


_REPLACE_WORDS = {
    "archive": N_("if {where} holds another certificate, save it to the store (On Disk) and fsync before any write"),
    "refuse": N_("if {where} holds another certificate, stop: the job says replace: refuse"),
    "overwrite": N_("if {where} holds another certificate, record its fingerprint in the audit log"),
}

PIV_STEPS: tuple[StepSpec, ...] = (
    StepSpec("wait_for_card", N_("wait for {card} of {holder}"), "runner"),
    StepSpec("identify_card", N_("read the card's serial and CHUID; refuse any card that is not this job's"), "runner"),
    StepSpec("preflight", N_("check the card supports {algorithm}, PIN tries ≥ {min_pin_retries}, read {where}")),
    StepSpec("{replace}_replaced_certificate", "{replace_words}", "replacing", aliases=("prove_archived_certificate",)),
    StepSpec("verify_pin", N_("show the PIN tries left, then verify the card PIN (never retried automatically)")),
    StepSpec("authenticate_management_key", N_("mutual authentication with {management_key}"), "writing"),
    StepSpec("import_key", N_("import the {algorithm} key into {where} (PIN policy {pin_policy}, touch policy "
             "{touch_policy})"), "key_missing"),  # fmt: skip
    StepSpec("write_certificate", N_("write the certificate into {where}"), "cert_missing"),
    StepSpec("write_key_history", N_("count the slot in the Key History object, so middleware finds it"), "key_history"),
    StepSpec("write_slot_name", N_("name the slot {slot_name!r}"), "name_missing"),
    StepSpec("verify_load", N_("read the certificate back, compare the slot's public key, make and check a test signature")),
    StepSpec("rotate_management_key", N_("change the card's management key to {rotate_to}; try that key first, "
             "then the job's (an interrupted change is finished, never left unknown); prove it by a fresh mutual "
             "authentication"), "rotating"),  # fmt: skip
    StepSpec("commit", N_("record the load as done in the journal and the audit log"), "writing"),
    StepSpec("export_pem", N_("write the certificate as PEM to {pem}"), "pem"),
    StepSpec("export_nssdb", N_("add the certificate to the NSS database {nssdb}"), "nssdb"),
)

PKCS11_STEPS: tuple[StepSpec, ...] = (
    StepSpec("wait_for_card", N_("wait for {card} of {holder}"), "runner"),
    StepSpec("identify_card", N_("read the token's label and serial through its module; refuse any other token"),
             "runner"),  # fmt: skip
    StepSpec("preflight", N_("list the public objects labelled {slot_name!r}; refuse a write-protected token")),
    StepSpec("{replace}_replaced_certificate", "{replace_words}", "replacing"),
    StepSpec("verify_pin", N_("read the token's PIN flags (locked, final try) against min_pin_retries "
             "{min_pin_retries}, then log in once (never retried)")),  # fmt: skip
    StepSpec("inventory", N_("list the private keys labelled {slot_name!r}")),
    StepSpec("relabel_existing_objects", N_("if the certificate and its key are on the token under another label, "
             "label them {slot_name!r} instead of importing a second copy"), "adopting"),  # fmt: skip
    StepSpec("so_login", N_("log in as the token's Security Officer with the job's so_pin (one C_Login, never "
             "retried): the module creates objects only for the SO"), "so_writes"),  # fmt: skip
    StepSpec("import_key", N_("import the {algorithm} private key labelled {slot_name!r}"), "key_missing"),
    StepSpec("write_public_key", N_("create its public key object"), "key_missing"),
    StepSpec("write_certificate", N_("create the certificate object labelled {slot_name!r}"), "cert_missing"),
    StepSpec("delete_replaced_certificate", N_("delete the replaced certificate labelled {slot_name!r}"), "replacing"),
    StepSpec("delete_replaced_public_key", N_("delete the replaced public key"), "replacing"),
    StepSpec("delete_replaced_private_key", N_("delete the replaced private key"), "replacing"),
    # Always, as for PIV: a job is skipped only after the test signature checked out in that run.
    StepSpec("verify_load", N_("read the objects back, make a test signature with a mechanism the token offers "
             "and check it with the certificate")),  # fmt: skip
    StepSpec("commit", N_("record the load as done in the journal and the audit log"), "writing"),
    StepSpec("export_pem", N_("write the certificate as PEM to {pem}"), "pem"),
    StepSpec("export_nssdb", N_("add the certificate to the NSS database {nssdb}"), "nssdb"),
)


def backend_of(job: Job) -> str:
    return "pkcs11" if job.card.pkcs11 is not None else "piv"


def checklist(job: Job) -> tuple[StepSpec, ...]:
    """The steps of ``job``'s backend."""
    return PKCS11_STEPS if job.card.pkcs11 is not None else PIV_STEPS


def in_plan(spec: StepSpec, job: Job) -> bool:
    """Whether ``plan`` lists the step for ``job`` at all (exports it has, Key History for a retired slot)."""
    if spec.when in ("pem", "nssdb"):
        return getattr(job.export, spec.when) is not None
    if spec.when == "key_history":
        return job.slot.is_retired
    if spec.when == "rotating":
        return job.management_key_rotate is not None
    if spec.when == "so_writes":
        return _so_pin_given(job)
    return True


def _so_pin_given(job: Job) -> bool:
    return job.card.pkcs11 is not None and job.card.pkcs11.so_pin is not None


def declared_actions(job: Job) -> frozenset[str]:
    """Every journal action the loader of ``job`` may record."""
    out: set[str] = set()
    for spec in checklist(job):
        if spec.journaled:
            out.add(spec.action_for(job))
            out.update(spec.aliases)
    return frozenset(out)


def _management_key_words(job: Job) -> str:
    key = job.management_key
    if key is None:
        return N_("the factory default management key")
    return N_("the job's management key") if isinstance(key, SecretSource) else key.describe()


def step_words(job: Job, slot_name: str, algorithm: str | None, exports: dict[str, str]) -> dict[str, str]:
    where = f"slot {job.slot.hex} ({job.slot.title})" if job.card.pkcs11 is None else f"label {slot_name!r}"
    words = {
        "card": job.card.describe(),
        "holder": job.holder,
        "where": where,
        "slot_name": slot_name,
        "algorithm": algorithm or N_("the key's algorithm"),
        "min_pin_retries": str(job.min_pin_retries),
        "replace": job.replace,
        "pin_policy": job.pin_policy,
        "touch_policy": job.touch_policy,
        "management_key": _management_key_words(job),
        "rotate_to": job.management_key_rotate.describe() if job.management_key_rotate is not None else "",
        "pem": exports.get("pem", ""),
        "nssdb": exports.get("nssdb", ""),
    }
    words["replace_words"] = _REPLACE_WORDS[job.replace].format(where=where)
    return words


@dataclass(frozen=True)
class CardState:
    """What a card holds for one job, as far as the steps care (read by ``plan`` or a test)."""

    replaced: bool  # the slot (label) holds another certificate
    cert_on_card: bool  # the job's certificate is there
    key_on_card: bool  # the job's key is there
    name_on_card: bool = True  # the slot name is there (PIV; a PKCS#11 label comes with the objects)
    key_history_counted: bool = True  # a retired slot is already counted in Key History (PIV)
    adopting: bool = False  # PKCS#11: certificate and key under another label

    @property
    def writing(self) -> bool:
        return self.replaced or not (self.cert_on_card and self.key_on_card and self.name_on_card
                                     and self.key_history_counted) or self.adopting  # fmt: skip


def applies(spec: StepSpec, job: Job, state: CardState) -> bool:
    """Whether a load of ``job`` on a card in ``state`` takes this step (journaled steps only)."""
    match spec.when:
        case "always":
            return True
        case "replacing":
            return state.replaced
        case "writing":
            return state.writing
        case "key_missing":
            return not state.key_on_card and not state.adopting
        case "cert_missing":
            return not state.cert_on_card and not state.adopting
        case "name_missing":
            return not state.name_on_card
        case "key_history":
            return job.slot.is_retired and not state.key_history_counted
        case "adopting":
            return state.adopting
        case "pem":
            return job.export.pem is not None
        case "nssdb":
            return job.export.nssdb is not None
        case "rotating":
            return job.management_key_rotate is not None
        case "so_writes":
            return _so_pin_given(job) and state.writing and not state.adopting
    return False  # "runner": not the loader's


def applicable_actions(job: Job, state: CardState) -> list[str]:
    """The journal actions, in order, that a load of ``job`` takes on a card in ``state``."""
    return [s.action_for(job) for s in checklist(job) if s.journaled and applies(s, job, state)]
