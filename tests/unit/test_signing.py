"""Signatures of job requests, cancels and control commands (service.signing)."""

from __future__ import annotations

import pytest

from service.events.control import ControlCommand
from service.models import now_ms
from service.settings import Settings
from service.signing import MAX_AGE_S, Signer


def test_without_keys_nothing_is_signed_and_everything_is_accepted() -> None:
    signer = Signer([])
    assert not signer.enabled
    assert signer.sign("job", "j", "{}") == ""
    assert signer.verify("", "job", "j", "{}")


def test_a_signature_verifies_only_its_own_message() -> None:
    signer = Signer(["k1"])
    sig = signer.sign("job", "j1", '{"a": 1}')
    assert sig.startswith("v1:")
    assert signer.verify(sig, "job", "j1", '{"a": 1}')
    assert signer.verify(sig.encode(), "job", "j1", b'{"a": 1}')
    assert not signer.verify(sig, "job", "j2", '{"a": 1}')  # copied to another job id
    assert not signer.verify(sig, "job", "j1", '{"a": 2}')  # tampered with
    assert not signer.verify(sig, "cancel", "j1", '{"a": 1}')  # another kind
    assert not signer.verify(sig, "job", "j1", '{"a": ', "1}")  # the parts are length-prefixed
    assert not signer.verify("", "job", "j1", '{"a": 1}')
    assert not signer.verify("v0:" + sig[3:], "job", "j1", '{"a": 1}')
    assert not Signer(["other"]).verify(sig, "job", "j1", '{"a": 1}')


def test_rotation_new_key_first_old_one_still_accepted() -> None:
    old = Signer(["old"]).sign("job", "j", "{}")
    rotating = Signer(["new", "old"])
    assert rotating.verify(old, "job", "j", "{}")
    assert rotating.sign("job", "j", "{}") == Signer(["new"]).sign("job", "j", "{}")
    assert not Signer(["new"]).verify(old, "job", "j", "{}")  # the old key dropped


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Signer([""])


def test_settings_keep_the_keys_secret() -> None:
    settings = Settings(signing_keys=["hush-hush"])
    assert "hush-hush" not in repr(settings)
    assert settings.signer().enabled


def test_control_commands_signed_tampered_unsigned_and_replayed() -> None:
    signer = Signer(["k"])
    cmd = ControlCommand(command="pause").signed(signer)
    assert cmd.verified(signer) == ""
    assert ControlCommand(command="pause").verified(signer) != ""  # unsigned
    assert "not signed" in cmd.model_copy(update={"command": "stop"}).verified(signer)  # tampered
    old = ControlCommand(command="pause", sent_at_ms=now_ms() - int(MAX_AGE_S * 1000) - 1000).signed(signer)
    assert "ago" in old.verified(signer)
    assert cmd.verified(Signer([])) == ""  # a worker without keys checks nothing
